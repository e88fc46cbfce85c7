"""Adversarial tests of the code merged on 2026-11-29 (OCDBT node decoder, --sample, crossed grids,
the engine's error policy, typed metadata, the collector pause): each pins a defect found by attacking it."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import numpy as np

import streamdiff


def save_orbax(path: Path, tree: dict) -> Path:
    import orbax.checkpoint as ocp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=True)).save(path, args=ocp.args.PyTreeSave(tree))
    return path


def test_diff_keeps_objects_the_caller_froze_frozen_and_freezes_none_of_its_own(tmp_path):
    """A server that calls gc.freeze() before forking must find its objects still frozen after a
    library diff, and the diff must not leave its own objects in the permanent generation."""
    a = save_orbax(tmp_path / "a", {"w": np.arange(6, dtype=np.float32)})
    b = save_orbax(tmp_path / "b", {"w": np.arange(6, dtype=np.float32) + 1})
    held = [[object()] for _ in range(1000)]  # the caller's objects, frozen by the caller
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        assert before >= len(held)
        r = streamdiff.diff(str(a), str(b))
        assert [x.status for x in r.leaves] == ["different"]
        # Frozen objects freed by reference counting meanwhile leave the count: it may only shrink.
        assert 0 < gc.get_freeze_count() <= before
        tracked = {id(o) for o in gc.get_objects()}  # the permanent generation is not listed
        assert not any(id(x) in tracked for x in held)
        assert gc.isenabled()
    finally:
        gc.unfreeze()


def _zstd_bomb_root(path: Path, decoded_mib: int) -> None:
    """A real OCDBT database written by tensorstore (uncompressed nodes, one leaf root of 4000 keys),
    whose root node is then replaced, at the same offset and length and with a valid checksum, by a
    zstd node of zeros that decodes to `decoded_mib` MiB (a skippable frame pads it to length)."""
    import io
    import struct

    import google_crc32c
    import tensorstore as ts
    import zstandard

    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{path}/", "config": {"compression": None}}).result()
    with ts.Transaction() as txn:
        for i in range(4000):
            kv.with_transaction(txn)[f"k{i:05d}/.zarray"] = b'{"v":%d}' % i
    manifest = ts.ocdbt.dump(ts.KvStore.open(f"file://{path}/").result()).result()
    assert manifest["config"]["max_decoded_node_bytes"] == 8 << 20
    where, offset, length = str(manifest["versions"][-1]["root"]["location"]).removeprefix("btreenode::").rsplit(":", 2)
    offset, length = int(offset), int(length)
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as w:
        for _ in range(decoded_mib):
            w.write(bytes(1 << 20))
    frame = out.getvalue()
    pad = length - 12 - 2 - 4 - len(frame)  # magic + length, version + compression, checksum
    assert pad >= 8
    node = struct.pack(">I", 0x0CDB20DE) + struct.pack("<Q", length) + bytes([0, 1]) + frame
    node += struct.pack("<II", 0x184D2A50, pad - 8) + bytes(pad - 8)
    node += struct.pack("<I", google_crc32c.value(node))
    data = bytearray((path / where).read_bytes())
    data[offset : offset + length] = node
    (path / where).write_bytes(bytes(data))


def test_a_zstd_bomb_b_tree_node_is_refused_before_it_inflates_past_the_manifests_node_limit(tmp_path):
    """The node decoder must stop at the database's max_decoded_node_bytes (8 MiB here, as tensorstore
    enforces it), not at 1 GiB: a ~90 KB node file may not cost hundreds of MB of memory."""
    import tracemalloc

    import pytest
    import tensorstore as ts

    from streamdiff.formats import ocdbt

    _zstd_bomb_root(tmp_path, 256)
    base = ts.KvStore.open(f"file://{tmp_path}/").result()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            ocdbt.index(base, frozenset({".zarray"}))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"decoding the hostile node peaked at {peak >> 20} MiB"
