"""Helpers shared by the tests (and bench/gcs through gcs_emulator): one way to save a tree with
real orbax, one way to find a free local port."""

from __future__ import annotations

import socket
import warnings


def save(path, tree, chunk_bytes: int | None = None, **handler_options) -> None:
    """Save `tree` with real orbax's PyTreeCheckpointHandler.

    `chunk_bytes` asks orbax for chunks of about that many bytes (every leaf); `handler_options`
    go to the handler (`use_ocdbt`, `use_zarr3`, `use_compression`, ...).
    """
    import jax
    import orbax.checkpoint as ocp

    args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=chunk_bytes), tree) if chunk_bytes else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # orbax warns about the tiny chunk sizes the tests ask for
        handler = ocp.PyTreeCheckpointHandler(**handler_options)
        ocp.Checkpointer(handler).save(path, args=ocp.args.PyTreeSave(tree, save_args=args))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
