"""Adversarial tests of the code merged on 2026-11-29 evening (the fast comparison kernel's bounds,
the OCDBT key table, the typed `_METADATA` decode): each pins a defect found by attacking it, every
expected number from numpy on the arrays zarr-python reads back."""

from __future__ import annotations

import numpy as np
import zarr

import streamdiff


def _write(path, w):
    z = zarr.open_group(str(path), mode="w").create_array("w", shape=w.shape, dtype=w.dtype, chunks=w.shape)
    z[...] = w


def test_relative_difference_that_overflows_to_inf_over_a_subnormal_b_is_reported_as_inf(tmp_path):
    """|a-b| / |b| = 1e10 / 5e-324 overflows to inf in float64: the largest relative difference is
    inf at that position, though |b| is not zero (the kernel's bound on |b| must not take the
    overflowed ratio for a division by zero and look only where b == 0)."""
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    _write(a, np.array([1e10, 1.0, 2.0, 4.0]))
    _write(b, np.array([5e-324, 1.0, 1.0, 1.0]))
    x = zarr.open_group(str(a), mode="r")["w"][...]
    y = zarr.open_group(str(b), mode="r")["w"][...]
    with np.errstate(all="ignore"):
        rel = np.abs(x - y) / np.abs(y)
    assert np.isinf(rel[0]) and y[0] != 0
    s = streamdiff.diff(str(a), str(b)).leaves[0].stats
    assert (s.max_rel_diff, s.max_rel_diff_index) == (np.inf, (0,))
    assert s.mismatches == int(np.count_nonzero(x != y))


#: Two chunk-like keys with the same CRC-32 (found by a birthday search over 'w/c/<n>').
SAME_CRC = ("w/c/29685295", "w/c/32060020")


def _ocdbt(path, items, **config):
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{path}", "config": config}).result()
    txn = ts.Transaction()
    for k, v in items.items():
        kv.with_transaction(txn)[k] = v
    txn.commit_async().result()
    return ts.KvStore.open(f"file://{path}/").result()


def test_ocdbt_key_table_tells_apart_keys_with_the_same_crc32(tmp_path):
    """The key table is sorted by CRC-32: two stored keys with one CRC each get their own size and
    inline value, and a key absent from the store is not found through a stored key of its CRC."""
    import zlib

    import tensorstore as ts

    from streamdiff.reader.formats import ocdbt

    a, b = SAME_CRC
    assert zlib.crc32(a.encode()) == zlib.crc32(b.encode()) and a != b
    both = {a: b"\x01" * 3, b: b"\x02" * 7, "w/zarr.json": b"{}"}
    base = _ocdbt(tmp_path / "both", both)
    ks = ocdbt.sizes(base, values=True)
    reader = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{tmp_path / 'both'}"}).result()
    for k in (a, b):
        assert ks.value(k) == (len(both[k]), reader.read(k).result().value)
    only_a = ocdbt.sizes(_ocdbt(tmp_path / "one", {a: b"\x01"}), values=True)
    assert only_a.get(b) is None and only_a.value(b) == (None, None) and only_a.get(a) == 1


def test_ocdbt_key_offsets_are_exact_around_each_block_of_16_keys(tmp_path):
    """Key starts are kept once per 16 keys plus the lengths between: with keys of varied lengths,
    every key of stores of 15, 16, 17, 32, 33 keys (one node each) and 4097 keys (many small nodes)
    reads back the size and inline value tensorstore stores for it."""
    from streamdiff.reader.formats import ocdbt

    for n in (15, 16, 17, 32, 33, 4097):
        items = {f"k/{'x' * (i % 37)}{i:05d}": bytes([i % 251]) * (i % 9) for i in range(n)}
        config = {"max_decoded_node_bytes": 4096} if n > 1000 else {}
        ks = ocdbt.sizes(_ocdbt(tmp_path / str(n), items, **config), values=True)
        assert len(ks) == n and list(ks) == sorted(items)
        for k, v in items.items():
            assert ks.value(k) == (len(v), v), (n, k)
