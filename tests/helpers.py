"""Helpers shared by the tests (and bench/gcs through gcs_emulator): one way to save a tree with
real orbax, one way to find a free local port, one way to check the project's error contract."""

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


def one_error_line(r, *needles: str) -> str:
    """The bad-input contract: exit 2, exactly one stderr line starting `streamdiff: error: ` and
    holding every needle, no traceback. `r` is any run with `code`, `out` and `err`; returns the line."""
    assert r.code == 2, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamdiff: error: "), r.err
    assert "Traceback" not in r.err
    for n in needles:
        assert n in lines[0], (n, r.err)
    return lines[0]


def error_lines(r, *needles: str) -> list[str]:
    """Exit 2 and every stderr line a `streamdiff: error: ` line (one per unreadable leaf), no
    traceback, every needle somewhere on them."""
    assert r.code == 2, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert lines and all(line.startswith("streamdiff: error: ") for line in lines), r.err
    assert "Traceback" not in r.err
    for n in needles:
        assert n in r.err, (n, r.err)
    return lines
