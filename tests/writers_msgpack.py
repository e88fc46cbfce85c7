"""Writers of the msgpack-family formats, for the never-false-identical property (and the format tests).

`WRITERS_MSGPACK` has the signature of the zarr helper's `tests/writers.py` registry: name -> function
that saves a flat dict of numpy arrays with the real writer into a directory and returns the path to
give streamdiff. Each uses the format's own library: tensorstore for T5X's spec format (the same calls
T5X makes: `ts.open(spec, create=True)` then the specs into the msgpack `checkpoint` file with flax's
msgpack serializer), flax.serialization for flax msgpack files, orbax for JsonSave items.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import tensorstore as ts


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """'a/b' -> {'a': {'b': ...}}."""
    out: dict[str, Any] = {}
    for name, v in flat.items():
        *head, last = name.split("/")
        node = out
        for k in head:
            node = node.setdefault(k, {})
        node[last] = v
    return out


def t5x_spec(name: str, arr: np.ndarray, kvstore: str = "gfile") -> dict[str, Any]:
    """The spec T5X's `_get_spec` writes for a parameter (path relative to the checkpoint dir)."""
    chunks = [max(1, s // 2) for s in arr.shape]
    return {
        "driver": "zarr",
        "dtype": np.dtype(arr.dtype).name,
        "kvstore": {"driver": kvstore, "path": name.replace("/", ".") + "/"},
        "metadata": {"compressor": {"id": "gzip"}, "shape": list(arr.shape), "chunks": chunks},
    }


def open_t5x_array(ckpt: Path, spec: dict[str, Any]) -> ts.TensorStore:
    """Open one T5X array as T5X restores it: the spec, with the path made absolute."""
    s = dict(spec, kvstore={"driver": "file", "path": os.path.join(ckpt, spec["kvstore"]["path"])})
    return ts.open(s, open=True, assume_metadata=True).result()


def t5x_specs(ckpt: Path) -> dict[str, Any]:
    """The decoded msgpack `checkpoint` file of a T5X checkpoint."""
    return msgpack.unpackb((Path(ckpt) / "checkpoint").read_bytes(), raw=False, strict_map_key=False)


def write_t5x(out: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A T5X checkpoint: per-array zarr v2 folders written through the spec, specs in `checkpoint`."""
    from flax import serialization

    ckpt = Path(out) / "checkpoint_1"
    ckpt.mkdir(parents=True)
    specs = {}
    for name, arr in arrays.items():
        spec = t5x_spec("target/" + name, arr)
        s = dict(spec, kvstore={"driver": "file", "path": str(ckpt / spec["kvstore"]["path"])})
        ts.open(s, create=True, open=True).result().write(arr).result()
        specs[name] = spec
    state = {"version": 3, "optimizer": {"target": _nest(specs), "state": {"step": np.int32(1)}}}
    (ckpt / "checkpoint").write_bytes(serialization.msgpack_serialize(state))
    return ckpt


def write_flax_msgpack(out: Path, arrays: dict[str, np.ndarray]) -> Path:
    """`flax.serialization.to_bytes` of the nested tree, as one file."""
    from flax import serialization

    path = Path(out) / "state.msgpack"
    Path(out).mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialization.to_bytes(_nest(arrays)))
    return path


def write_flax_training_checkpoints(out: Path, arrays: dict[str, np.ndarray], step: int = 5) -> Path:
    """`flax.training.checkpoints.save_checkpoint` without orbax: a folder of `checkpoint_<step>` files."""
    import flax
    from flax.training import checkpoints

    old = flax.config.flax_use_orbax_checkpointing
    flax.config.update("flax_use_orbax_checkpointing", False)
    try:
        checkpoints.save_checkpoint(str(out), _nest(arrays), step=step, keep=2)
    finally:
        flax.config.update("flax_use_orbax_checkpointing", old)
    return Path(out)


def write_orbax_jsonsave(out: Path, arrays: dict[str, np.ndarray]) -> Path:
    """orbax's documented pattern: a CheckpointManager step with a `state` PyTree item and JsonSave
    `metadata` / `config` items. The JSON items hold the arrays as lists, so every value is stored twice."""
    import orbax.checkpoint as ocp

    m = ocp.CheckpointManager(Path(out), options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
    listed = {name: arr.tolist() for name, arr in arrays.items()}
    m.save(
        1,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(_nest(arrays)),
            metadata=ocp.args.JsonSave({"dataset": "c4", "values": listed}),
            config=ocp.args.JsonSave({"lr": 0.1, "shapes": {n: list(a.shape) for n, a in arrays.items()}}),
        ),
    )
    m.close()
    return Path(out) / "1"


WRITERS_MSGPACK: dict[str, Callable[[Path, dict[str, np.ndarray]], Path]] = {
    "t5x": write_t5x,
    "flax_msgpack": write_flax_msgpack,
    "flax_training_checkpoints": write_flax_training_checkpoints,
    "orbax_jsonsave": write_orbax_jsonsave,
}
