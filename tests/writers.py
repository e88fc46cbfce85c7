"""Real writers, one entry each: save a flat dict of arrays into a directory, return what to diff.

`WRITERS[name](directory, arrays) -> path`: `arrays` maps '/'-separated names ('model/layer_0/kernel')
to numpy arrays. Each writer is the library users save with (zarr-python, xarray, tensorstore, jax
array_serialization, orbax), called the way its documentation shows. Writers whose names cannot hold
'/' (xarray variables, array_serialization folders) spell it '.'. A plain dict, so other readers'
writers can be added by name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
from writers_msgpack import WRITERS_MSGPACK  # noqa: E402


def chunks_of(shape: tuple[int, ...]) -> tuple[int, ...]:
    """About two chunks per axis, so stores hold several chunks and edge chunks."""
    return tuple(max(1, (s + 1) // 2) for s in shape)


def _zarr(path: Path, arrays: dict, zarr_format: int, **kw) -> Path:
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    for name, a in arrays.items():
        z = root.create_array(name, shape=a.shape, dtype=a.dtype, chunks=chunks_of(a.shape), fill_value=0, **kw)
        z[...] = a
    return path


def zarr_v2(d: Path, arrays: dict) -> Path:
    from numcodecs import Blosc

    return _zarr(d / "v2.zarr", arrays, 2, compressors=Blosc(cname="lz4"))


def zarr_v3(d: Path, arrays: dict) -> Path:
    return _zarr(d / "v3.zarr", arrays, 3)


def zarr_v3_sharded(d: Path, arrays: dict) -> Path:
    import zarr

    root = zarr.open_group(str(d / "sharded.zarr"), mode="w", zarr_format=3)
    for name, a in arrays.items():
        inner = tuple(max(1, c // 2) for c in chunks_of(a.shape))
        shards = tuple(i * 2 for i in inner) if a.ndim else None  # zarr-python 3.1 fails on 0-d shards
        z = root.create_array(name, shape=a.shape, dtype=a.dtype, chunks=inner, shards=shards, fill_value=0)
        z[...] = a
    return d / "sharded.zarr"


def _xarray(path: Path, arrays: dict, zarr_format: int) -> Path:
    import xarray as xr

    data = {}
    for name, a in arrays.items():
        dims = [f"{name.replace('/', '.')}_{i}" for i in range(a.ndim)]
        data[name.replace("/", ".")] = xr.Variable(dims, a)
    ds = xr.Dataset(data)
    for dim, n in ds.sizes.items():  # every dimension gets a coordinate: arrays too
        ds = ds.assign_coords({dim: np.arange(n, dtype=np.int64)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(str(path), mode="w", zarr_format=zarr_format, consolidated=True)
    return path


def xarray_v2(d: Path, arrays: dict) -> Path:
    return _xarray(d / "xr2.zarr", arrays, 2)


def xarray_v3(d: Path, arrays: dict) -> Path:
    return _xarray(d / "xr3.zarr", arrays, 3)


def _tensorstore(path: Path, arrays: dict, driver: str) -> Path:
    import tensorstore as ts

    for name, a in arrays.items():
        kv = {"driver": "file", "path": str(path / name) + "/"}
        if driver == "n5":
            md = {"dimensions": list(a.shape), "blockSize": list(chunks_of(a.shape)), "compression": {"type": "gzip"}}
        else:
            md = {"shape": list(a.shape), "chunks": list(chunks_of(a.shape)), "compressor": {"id": "zstd", "level": 1}}
            md.update(dtype=a.dtype.str, fill_value=0)
        # tensorstore does not store chunks equal to the fill value (store_data_equal_to_fill_value=False).
        t = ts.open({"driver": driver, "kvstore": kv, "metadata": md}, dtype=a.dtype.name, create=True).result()
        t.write(a).result()
    return path


def tensorstore_zarr(d: Path, arrays: dict) -> Path:
    return _tensorstore(d / "ts_zarr", arrays, "zarr")


def tensorstore_n5(d: Path, arrays: dict) -> Path:
    return _tensorstore(d / "ts_n5", arrays, "n5")


def array_serialization(d: Path, arrays: dict) -> Path:
    """jax.experimental.array_serialization: one zarr folder per array, no tree metadata."""
    import jax.numpy as jnp
    from jax.experimental.array_serialization import serialization

    path = d / "jax_arrays"
    names = list(arrays)
    specs = [serialization.get_tensorstore_spec(str(path / n.replace("/", "."))) for n in names]
    serialization.run_serialization([jnp.asarray(arrays[n]) for n in names], specs)
    return path


def orbax(d: Path, arrays: dict) -> Path:
    import orbax.checkpoint as ocp

    tree: dict = {}
    for name, a in arrays.items():
        *groups, leaf = name.split("/")
        node = tree
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = a
    path = d / "orbax"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).save(path, args=ocp.args.PyTreeSave(tree))
    return path


WRITERS: dict[str, Callable[[Path, dict[str, np.ndarray]], Path]] = {
    "zarr_v2": zarr_v2,
    "zarr_v3": zarr_v3,
    "zarr_v3_sharded": zarr_v3_sharded,
    "xarray_v2": xarray_v2,
    "xarray_v3": xarray_v3,
    "tensorstore_zarr": tensorstore_zarr,
    "tensorstore_n5": tensorstore_n5,
    "array_serialization": array_serialization,
    "orbax": orbax,
    **WRITERS_MSGPACK,  # T5X, flax msgpack file and folder, orbax state + JsonSave items
}
