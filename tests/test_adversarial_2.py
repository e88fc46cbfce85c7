"""Adversarial tests of the code merged on 2026-11-29 (OCDBT node decoder, --sample, crossed grids,
the engine's error policy, typed metadata, the collector pause): each pins a defect found by attacking it."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import save

import streamdiff


def test_diff_keeps_objects_the_caller_froze_frozen_and_freezes_none_of_its_own(tmp_path):
    """A server that calls gc.freeze() before forking must find its objects still frozen after a
    library diff, and the diff must not leave its own objects in the permanent generation."""
    a, b = tmp_path / "a", tmp_path / "b"
    save(a, {"w": np.arange(6, dtype=np.float32)}, use_ocdbt=True)
    save(b, {"w": np.arange(6, dtype=np.float32) + 1}, use_ocdbt=True)
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


def _assert_index_refuses_in_little_memory(path: Path) -> None:
    """Indexing the hostile OCDBT database at `path` raises ValueError with a traced peak under 32 MiB."""
    import tracemalloc

    import tensorstore as ts

    from streamdiff.reader.formats import ocdbt

    base = ts.KvStore.open(f"file://{path}/").result()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            ocdbt.index(base, frozenset({".zarray"}))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"decoding the hostile node peaked at {peak >> 20} MiB"


def test_a_zstd_bomb_b_tree_node_is_refused_before_it_inflates_past_the_manifests_node_limit(tmp_path):
    """The node decoder must stop at the database's max_decoded_node_bytes (8 MiB here, as tensorstore
    enforces it), not at 1 GiB: a ~90 KB node file may not cost hundreds of MB of memory."""
    _zstd_bomb_root(tmp_path, 256)
    _assert_index_refuses_in_little_memory(tmp_path)


def _indirect_values(ckpt: Path) -> dict[str, tuple[Path, int, int]]:
    """key -> (data file, offset, length) of every value stored outside the B-tree of an orbax OCDBT
    checkpoint, as tensorstore's own `ocdbt.dump` of its nodes lists them."""
    import tensorstore as ts

    base = ts.KvStore.open(f"file://{ckpt}/").result()
    level = [str(ts.ocdbt.dump(base).result()["versions"][-1]["root"]["location"])]
    out = {}
    while level:
        deeper = []
        for loc in level:
            for e in ts.ocdbt.dump(base, loc).result()["entries"]:
                if "node" in e:
                    deeper.append(str(e["node"]))
                elif "indirect_value" in e:
                    path, offset, length = str(e["indirect_value"]).removeprefix("value:").rsplit(":", 2)
                    out[e["key"].decode()] = (ckpt / path.replace(":", ""), int(offset), int(length))
        level = deeper
    return out


def test_a_shard_whose_index_checksum_is_corrupt_is_an_error_also_when_its_chunk_streams(tmp_path):
    """orbax zarr3 shards end in a crc32c-checked index. tensorstore refuses a shard whose checksum
    does not match; the streamed path (chunks bigger than a block) read the index without checking
    it and called the pair identical, exit 0."""
    w = np.random.default_rng(0).standard_normal((512, 256)).astype(np.float32)
    a, b = tmp_path / "a", tmp_path / "b"
    save(a, {"w": w}, use_zarr3=True, use_compression=False)
    shutil.copytree(a, b)
    path, offset, length = _indirect_values(b)["w/c/0/0"]
    assert length == w.nbytes + 16 + 4  # one inner chunk, its (offset, nbytes) index, the crc32c
    data = bytearray(path.read_bytes())
    data[offset + length - 1] ^= 1  # the index checksum's last byte
    path.write_bytes(bytes(data))

    whole = streamdiff.diff(str(a), str(b))
    streamed = streamdiff.diff(str(a), str(b), block_bytes=64 << 10)
    assert [x.status for x in whole.leaves] == ["error"]
    assert [x.status for x in streamed.leaves] == ["error"]
    assert streamed.exit_code == 2


def _zarr_pair_with_junk_after_a_chunk(tmp_path: Path, zarr_format: int) -> tuple[Path, Path]:
    """A zarr-python array of one zstd chunk (512 KiB decoded) and a copy whose chunk file has one
    byte appended: zarr-python itself refuses the copy ("Zstd decompression error")."""
    import zarr
    from numcodecs import Zstd

    w = np.random.default_rng(0).standard_normal((512, 256)).astype(np.float32)
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    kw = {"compressors": Zstd(level=1)} if zarr_format == 2 else {}
    z = zarr.open_group(str(a), mode="w", zarr_format=zarr_format).create_array(
        "w", shape=w.shape, dtype=w.dtype, chunks=w.shape, fill_value=0, **kw
    )
    z[...] = w
    shutil.copytree(a, b)
    chunk = b / "w" / ("0.0" if zarr_format == 2 else "c/0/0")
    chunk.write_bytes(chunk.read_bytes() + b"\x01")
    with pytest.raises(RuntimeError, match="Zstd"):
        zarr.open_group(str(b), mode="r")["w"][...]
    return a, b


def test_a_zarr2_zstd_chunk_with_bytes_after_its_frame_is_an_error_also_when_it_streams(tmp_path):
    """tensorstore refuses the grown chunk when it decodes it whole; the streamed path stopped at the
    end of the zstd frame and called the pair identical, exit 0."""
    a, b = _zarr_pair_with_junk_after_a_chunk(tmp_path, 2)
    assert [x.status for x in streamdiff.diff(str(a), str(b)).leaves] == ["error"]
    streamed = streamdiff.diff(str(a), str(b), block_bytes=64 << 10)
    assert [x.status for x in streamed.leaves] == ["error"]


def test_a_zarr3_zstd_chunk_with_bytes_after_its_frame_is_an_error_when_it_streams(tmp_path):
    a, b = _zarr_pair_with_junk_after_a_chunk(tmp_path, 3)
    streamed = streamdiff.diff(str(a), str(b), block_bytes=64 << 10)
    assert [x.status for x in streamed.leaves] == ["error"]


@pytest.mark.xfail(
    strict=True,
    reason="tensorstore's zarr3 zstd codec ignores bytes after the frame when it decodes a chunk whole: "
    "the pair reads identical (exit 0) although zarr-python refuses B's chunk",
)
def test_a_zarr3_zstd_chunk_with_bytes_after_its_frame_is_an_error_when_decoded_whole(tmp_path):
    a, b = _zarr_pair_with_junk_after_a_chunk(tmp_path, 3)
    assert [x.status for x in streamdiff.diff(str(a), str(b)).leaves] == ["error"]


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _key_bomb_root(path: Path) -> int:
    """A real OCDBT database written by tensorstore (uncompressed nodes, one leaf root), whose root
    node is replaced, at its offset and length with a valid checksum, by a leaf of n keys where key i
    shares all i bytes of key i-1 and adds one: 'a', 'aa', 'aaa'... (n*n/2 key bytes). Returns n."""
    import struct

    import google_crc32c
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{path}/", "config": {"compression": None}}).result()
    with ts.Transaction() as txn:
        for i in range(4000):
            kv.with_transaction(txn)[f"k{i:05d}/.zarray"] = b'{"v":%d}' % i
    manifest = ts.ocdbt.dump(ts.KvStore.open(f"file://{path}/").result()).result()
    where, offset, length = str(manifest["versions"][-1]["root"]["location"]).removeprefix("btreenode::").rsplit(":", 2)
    offset, length = int(offset), int(length)
    room = length - 12 - 2 - 4
    n = room // 8  # each key: <= 3 bytes of shared length, suffix length, suffix, value length, kind
    body = b"\x00" + _varint(0) + _varint(n)  # height 0, no data files, n entries
    body += b"".join(_varint(i) for i in range(1, n)) + b"\x01" * n + b"a" * n + b"\x00" * n + b"\x00" * n
    assert len(body) <= room
    node = struct.pack(">I", 0x0CDB20DE) + struct.pack("<Q", length) + b"\x00\x00" + body + bytes(room - len(body))
    node += struct.pack("<I", google_crc32c.value(node))
    data = bytearray((path / where).read_bytes())
    data[offset : offset + length] = node
    (path / where).write_bytes(bytes(data))
    return n


def test_a_b_tree_node_whose_prefix_compressed_keys_expand_quadratically_is_refused_in_little_memory(tmp_path):
    """~11k one-byte suffixes in a 91 KB node spell 65 MB of keys (a 1 MB node: 15 GB); the decoder
    built them all (283 MB peak RSS). It must refuse the node (callers then read key by key through
    tensorstore, which decodes such a node itself) without materialising the keys."""
    n = _key_bomb_root(tmp_path)
    assert n * n // 2 > 50 << 20
    _assert_index_refuses_in_little_memory(tmp_path)


def _indirect_length_root(path: Path, length: int) -> None:
    """A real OCDBT database written by tensorstore (uncompressed nodes, values out of line), whose
    root leaf is replaced, at its offset and length with a valid checksum, by one of two keys: 'w/0.0'
    pointing at its real 1024 stored bytes but claiming `length`, and 'zz' whose inline value pads
    the node to its length (tensorstore refuses bytes after a node's entries)."""
    import struct

    import google_crc32c
    import tensorstore as ts

    config = {"compression": None, "max_inline_value_bytes": 0}
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{path}/", "config": config}).result()
    kv["w/0.0"] = bytes(range(256)) * 4
    for i in range(20):
        kv[f"z{i:02d}"] = b"x" * 10
    base = ts.KvStore.open(f"file://{path}/").result()
    root = str(ts.ocdbt.dump(base).result()["versions"][-1]["root"]["location"])
    where, offset, node_len = root.removeprefix("btreenode::").rsplit(":", 2)
    offset, node_len = int(offset), int(node_len)
    entry = next(e for e in ts.ocdbt.dump(base, root).result()["entries"] if e["key"] == b"w/0.0")
    data_file, value_offset, _ = str(entry["indirect_value"]).removeprefix("value::").rsplit(":", 2)
    room = node_len - 12 - 2 - 4
    head = b"\x00" + _varint(1) + _varint(len(data_file)) + _varint(0) + data_file.encode()  # one data file
    for pad in range(room, 0, -1):
        body = head + _varint(2) + _varint(0) + _varint(5) + _varint(2) + b"w/0.0zz"  # two keys
        body += _varint(length) + _varint(pad) + _varint(1) + _varint(0)  # lengths; kinds: indirect, inline
        body += _varint(0) + _varint(int(value_offset)) + b"v" * pad  # file id, offset; the inline value
        if len(body) == room:
            break
    node = struct.pack(">I", 0x0CDB20DE) + struct.pack("<Q", node_len) + b"\x00\x00" + body
    node += struct.pack("<I", google_crc32c.value(node))
    data = bytearray((path / where).read_bytes())
    data[offset : offset + node_len] = node
    (path / where).write_bytes(bytes(data))


def test_a_value_length_past_2_to_the_63_is_refused_not_wrapped_into_a_plausible_size(tmp_path):
    """tensorstore refuses the node ('Invalid offset/length pair'); the decoder wrapped the length
    2**63 + 1024 into 1024, the real stored size, a size the equal-bytes shortcut would trust."""
    import tensorstore as ts

    from streamdiff.reader.formats import ocdbt

    _indirect_length_root(tmp_path, (1 << 63) + 1024)
    base = ts.KvStore.open(f"file://{tmp_path}/").result()
    with pytest.raises(ValueError, match="offset/length"):
        ts.ocdbt.dump(base, str(ts.ocdbt.dump(base).result()["versions"][-1]["root"]["location"])).result()
    with pytest.raises(ValueError):
        ocdbt.sizes(base)


def test_a_value_length_past_its_data_file_is_the_size_tensorstore_reports(tmp_path):
    """Below 2**62 the decoder agrees with tensorstore's own listing of the node, however absurd."""
    import tensorstore as ts

    from streamdiff.reader.formats import ocdbt

    _indirect_length_root(tmp_path, (1 << 32) + 1024)
    base = ts.KvStore.open(f"file://{tmp_path}/").result()
    root = str(ts.ocdbt.dump(base).result()["versions"][-1]["root"]["location"])
    entry = next(e for e in ts.ocdbt.dump(base, root).result()["entries"] if e["key"] == b"w/0.0")
    assert str(entry["indirect_value"]).endswith(f":{(1 << 32) + 1024}")
    assert ocdbt.sizes(base).get("w/0.0") == (1 << 32) + 1024
