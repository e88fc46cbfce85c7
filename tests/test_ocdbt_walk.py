"""The B-tree walk (streamdiff.reader.formats.ocdbt) sees exactly what the ocdbt kvstore sees: every key,
every inline value asked for, every stored size, on trees of several levels written by tensorstore."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tensorstore as ts

from streamdiff.reader.formats import ocdbt


@pytest.mark.parametrize("node_bytes, inline_bytes", [(600, 50), (1 << 22, 1 << 10)])
def test_walk_yields_every_key_value_and_size_that_the_ocdbt_driver_reads(tmp_path, node_bytes, inline_bytes):
    config = {"max_decoded_node_bytes": node_bytes, "max_inline_value_bytes": inline_bytes}
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{tmp_path}/", "config": config}).result()
    with ts.Transaction() as txn:
        for i in range(300):
            kv.with_transaction(txn)[f"k{i:04d}/zarr.json"] = b'{"v":%d}' % i
            kv.with_transaction(txn)[f"k{i:04d}/c/0"] = bytes(range(i % 200))
    base = ts.KvStore.open(f"file://{tmp_path}/").result()
    height = ts.ocdbt.dump(base).result()["versions"][-1]["root_height"]
    entries = ocdbt.walk(base, frozenset({"zarr.json"}))

    truth = {k.decode(): bytes(kv.read(k).result().value) for k in kv.list().result()}
    assert [e.key for e in entries] == sorted(truth)
    assert {e.key: e.size for e in entries} == {k: len(v) for k, v in truth.items()}
    kept = {e.key: e.inline for e in entries if e.inline is not None}
    assert kept == {k: v for k, v in truth.items() if k.endswith("zarr.json")}
    if node_bytes == 600:
        assert height >= 2  # the small-node case really walks interior nodes


def _seven_prefixes_of_300_keys(path, node_bytes: int, value: Callable[[int], bytes]) -> tuple[ts.KvStore, ts.KvStore]:
    """An OCDBT database written by tensorstore (values over 50 bytes out of line) holding `value(i)` at
    'a{i % 7}/c/{i}' for i < 300: the ocdbt kvstore that wrote it, and the base kvstore it lies in."""
    config = {"max_decoded_node_bytes": node_bytes, "max_inline_value_bytes": 50}
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{path}/", "config": config}).result()
    with ts.Transaction() as txn:
        for i in range(300):
            kv.with_transaction(txn)[f"a{i % 7}/c/{i}"] = value(i)
    return kv, ts.KvStore.open(f"file://{path}/").result()


@pytest.mark.parametrize("node_bytes", [600, 1 << 22])
def test_key_sizes_give_every_stored_length_the_ocdbt_driver_reads_and_none_for_absent_keys(tmp_path, node_bytes):
    kv, base = _seven_prefixes_of_300_keys(tmp_path, node_bytes, lambda i: bytes(range(i % 200)))
    sizes = ocdbt.sizes(base)

    truth = {k.decode(): len(kv.read(k).result().value) for k in kv.list().result()}
    assert len(sizes) == len(truth) == 300
    assert {k: sizes.get(k) for k in truth} == truth
    assert list(sizes.items("a3/")) == sorted((k, n) for k, n in truth.items() if k.startswith("a3/"))
    assert sizes.get("a3/c/9999") is None and sizes.get("") is None and sizes.get("zz") is None


def test_walk_of_an_empty_database_is_empty(tmp_path):
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{tmp_path}/"}).result()
    kv["x"] = b"1"
    del kv["x"]
    base = ts.KvStore.open(f"file://{tmp_path}/").result()
    assert ocdbt.walk(base) == []


def test_walk_refuses_databases_over_the_key_limit(tmp_path, monkeypatch):
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{tmp_path}/"}).result()
    with ts.Transaction() as txn:
        for i in range(20):
            kv.with_transaction(txn)[f"k{i}"] = b"v"
    base = ts.KvStore.open(f"file://{tmp_path}/").result()
    monkeypatch.setattr(ocdbt, "MAX_WALK_KEYS", 19)
    with pytest.raises(ocdbt.TooManyKeys):
        ocdbt.walk(base)
    monkeypatch.setattr(ocdbt, "MAX_WALK_KEYS", 20)
    assert len(ocdbt.walk(base)) == 20


@pytest.mark.parametrize("node_bytes", [600, 1 << 22])
def test_kept_inline_values_are_the_bytes_the_ocdbt_driver_reads_and_indirect_values_are_not_kept(tmp_path, node_bytes):
    kv, base = _seven_prefixes_of_300_keys(tmp_path, node_bytes, lambda i: bytes((i + j) % 256 for j in range(i % 120)))
    sizes = ocdbt.sizes(base, values=True)

    truth = {k.decode(): bytes(kv.read(k).result().value) for k in kv.list().result()}
    got = {k: sizes.value(k) for k in truth}
    assert {k: n for k, (n, _) in got.items()} == {k: len(v) for k, v in truth.items()}
    assert {k: v for k, (_, v) in got.items() if v is not None} == {k: v for k, v in truth.items() if len(v) <= 50}
    assert sizes.value("a3/c/9999") == (None, None)
    assert all(v is None for _, v in (ocdbt.sizes(base).value(k) for k in truth))  # not asked: none kept


def test_kept_inline_values_stop_at_the_cap(tmp_path, monkeypatch):
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{tmp_path}/"}).result()
    with ts.Transaction() as txn:
        for i in range(50):
            kv.with_transaction(txn)[f"k{i:02d}"] = b"x" * 20
    base = ts.KvStore.open(f"file://{tmp_path}/").result()
    monkeypatch.setattr(ocdbt, "MAX_KEPT_VALUES", 999)
    sizes = ocdbt.sizes(base, values=True)
    assert [sizes.value(f"k{i:02d}") for i in (0, 49)] == [(20, None), (20, None)]  # one node of 1000 B: over
    monkeypatch.setattr(ocdbt, "MAX_KEPT_VALUES", 1 << 20)  # under the cap the same values are kept
    kept = ocdbt.sizes(base, values=True)
    assert [kept.value(f"k{i:02d}") for i in (0, 49)] == [(20, b"x" * 20), (20, b"x" * 20)]


def test_varint_columns_of_multi_byte_values_longer_than_one_search_piece_decode_exactly():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 1 << 40, 200_000, dtype=np.uint64)
    values[::3] = 5  # single-byte ones in between
    out = bytearray(b"\x07")
    for v in values.tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    got, end = ocdbt.varints(bytes(out), 1, len(values))
    assert end == len(out) and np.array_equal(got, values)
    with pytest.raises(ValueError):
        ocdbt.varints(bytes(out[:-1]), 1, len(values))


def _one_node_of_tiny_chunks(path, n: int) -> ts.KvStore:
    """An OCDBT database of `n` zarr chunks of one float32 each, all in one big leaf node with every
    value inline (as bench/huge_tree.py's checkpoint saved as a million chunks), written by tensorstore."""
    kv = {"driver": "ocdbt", "base": f"file://{path}/", "config": {"compression": {"id": "zstd"}}}
    metadata = {"shape": [n], "chunks": [1], "dtype": "<f4"}
    spec = {"driver": "zarr", "kvstore": {**kv, "path": "x/"}, "metadata": metadata}
    arr = ts.open(spec, create=True).result()
    with ts.Transaction() as txn:
        arr.with_transaction(txn)[...] = np.arange(n, dtype=np.float32)
    return ts.KvStore.open(f"file://{path}/").result()


def test_a_node_of_200k_inline_chunks_is_indexed_at_a_peak_under_80_bytes_a_key_with_every_value_exact(tmp_path):
    """The walk decodes a node as a stream (never its whole body, no Python object per key) and the
    index keeps keys, sizes and values compactly: a million chunk keys must not cost hundreds of MB.
    Python's traced peak was 177 bytes a key here before (the whole body, int64 columns, a copy of
    the key buffer, an argsort); it is about 62 now, of which a fixed ~4 MB of column pieces."""
    import tracemalloc

    n = 200_000
    base = _one_node_of_tiny_chunks(tmp_path, n)
    driver = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{tmp_path}/"}).result()
    tracemalloc.start()
    try:
        sizes = ocdbt.sizes(base, values=True)
        for i in (0, 7, n - 1):  # the first lookup builds the lookup table
            sizes.value(f"x/{i}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # tracemalloc also counts the zero-filled buffers the key and value stores are grown with
    # (calloc'd pages, never resident until written), so this bound is looser than resident memory.
    assert peak < 80 * n, peak / n
    assert len(sizes) == n + 1  # the chunks and .zarray
    rng = np.random.default_rng(0)
    for i in [0, 1, 10, n - 1, *rng.integers(0, n, 200).tolist()]:
        stored = bytes(driver.read(f"x/{i}").result().value)
        assert sizes.value(f"x/{i}") == (len(stored), stored)
    assert sizes.value("x/200000") == (None, None)
