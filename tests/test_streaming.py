"""Scale paths: chunks bigger than the block budget stream through a zstd decoder from byte-range
reads; equal stored bytes settle chunks without decoding; different chunk grids still line up.
Every number is checked against numpy on the in-memory arrays."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import tensorstore as ts
from helpers import save
from reference import assert_stats_match, expected_stats
from rich.console import Console

import streamdiff
from streamdiff.report import render

RNG = np.random.default_rng(7)
BIG = RNG.standard_normal((300, 70), dtype=np.float32)  # one 82 KB chunk when saved as numpy


def perturbed(x):
    y = x.copy()
    y[5, 3] += 0.5
    y[290, 69] = np.nan
    y[100:110] *= 1.001
    return y


LAYOUTS = {
    "zarr2_zstd": {},
    "zarr3_zstd": {"use_zarr3": True},
    "zarr2_raw": {"use_compression": False},
    "zarr3_raw": {"use_zarr3": True, "use_compression": False},
    "zarr2_zstd_files": {"use_ocdbt": False},
    "zarr3_zstd_files": {"use_ocdbt": False, "use_zarr3": True},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("block_bytes", [4096, 64 * 1024])
def test_big_single_chunk_streams_in_slabs(tmp_path, layout, block_bytes):
    b = perturbed(BIG)
    save(tmp_path / "a", {"w": BIG}, **LAYOUTS[layout])
    save(tmp_path / "b", {"w": b}, **LAYOUTS[layout])
    r = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), atol=1e-6, rtol=1e-5, block_bytes=block_bytes)
    leaf = r.leaves[0]
    assert leaf.stats.streamed, "the chunk should exceed the block budget and stream"
    assert_stats_match(leaf.stats, expected_stats(BIG, b, 1e-6, 1e-5))


def test_stream_one_side_against_a_different_grid(tmp_path):
    """A: one big chunk (streamed); B: small chunks (read box by box, slab by slab). The numbers are
    numpy's, and read_amplification is the count of B's chunks each 14-row slab overlaps (a row of
    both sides is 70 * 8 = 560 bytes; 8192 // 560 = 14), per stored chunk of B."""
    b = perturbed(BIG)
    save(tmp_path / "a", {"w": BIG})
    save(tmp_path / "b", {"w": b}, chunk_bytes=6000)
    rows, cols = zarray(tmp_path / "b", "w")["chunks"]
    assert (rows, cols) != list(BIG.shape)
    slab_rows = 8192 // (70 * 8)
    decodes = sum(
        len(range(r0 // rows, (min(r0 + slab_rows, 300) - 1) // rows + 1)) for r0 in range(0, 300, slab_rows)
    ) * -(-70 // cols)
    amplification = decodes / (-(-300 // rows) * -(-70 // cols))
    for x, y, arrs in (("a", "b", (BIG, b)), ("b", "a", (b, BIG))):
        r = streamdiff.diff(str(tmp_path / x), str(tmp_path / y), block_bytes=8192)
        leaf = r.leaves[0]
        assert leaf.stats.streamed
        assert leaf.stats.read_amplification == pytest.approx(amplification, rel=1e-12)
        assert_stats_match(leaf.stats, expected_stats(*arrs))


def test_truncated_big_chunk_is_an_error_naming_the_leaf(tmp_path):
    """The streamed chunk of `w` is cut short: `w` alone is an error, and the report line names it."""
    small = np.arange(10, dtype=np.float32)
    save(tmp_path / "a", {"w": BIG, "ok": small}, use_ocdbt=False)
    save(tmp_path / "b", {"w": BIG, "ok": small}, use_ocdbt=False)
    chunk = tmp_path / "b" / "w" / "0.0"
    chunk.write_bytes(chunk.read_bytes()[:5000])
    r = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), block_bytes=4096, shortcut=False)
    status = {x.path: x.status for x in r.leaves}
    assert r.exit_code == 2 and status == {("w",): "error", ("ok",): "equal"}
    message = next(x.message for x in r.leaves if x.status == "error")
    assert "truncated" in message or "ended early" in message, message
    out = io.StringIO()
    render(r, Console(file=out, width=200))
    assert f"error:     w: {message}" in out.getvalue(), out.getvalue()


def _kvstore(item):
    root = {"driver": "file", "path": f"{item}/"}
    if (item / "manifest.ocdbt").exists():
        root = {"driver": "ocdbt", "base": root}
    return ts.KvStore.open(root).result()


def zarray(item, leaf: str) -> dict:
    """A zarr v2 leaf's .zarray, read with tensorstore's kvstore (OCDBT or plain files)."""
    return json.loads(_kvstore(item).read(f"{leaf}/.zarray").result().value)


def stored_chunks(item, leaf: str) -> tuple[int, int, int]:
    """(chunks in the grid, chunk keys stored, their stored bytes) of one zarr v2 leaf, read with
    tensorstore's kvstore, not with streamdiff."""
    kv = _kvstore(item)
    meta = zarray(item, leaf)
    grid = math.prod(-(-n // c) for n, c in zip(meta["shape"], meta["chunks"]))
    keys = [k.decode() for k in kv.list().result() if k.decode().startswith(f"{leaf}/")]
    chunk_keys = [k for k in keys if not k.rsplit("/", 1)[1].startswith(".z")]
    return grid, len(chunk_keys), sum(len(kv.read(k).result().value) for k in chunk_keys)


@pytest.mark.parametrize("ocdbt", [True, False])
def test_equal_bytes_shortcut_settles_every_chunk_of_identical_saves(tmp_path, ocdbt):
    """Two saves of the same tree: every stored chunk settled by its bytes (counts and bytes equal
    the chunk grids and the stored chunk sizes), none decoded (NaN counts unknown)."""
    tree = {"w": BIG, "v": np.arange(1000, dtype=np.int32), "big": RNG.standard_normal(50_000).astype(np.float32)}
    save(tmp_path / "a", tree, chunk_bytes=20_000, use_ocdbt=ocdbt)
    save(tmp_path / "a2", tree, chunk_bytes=20_000, use_ocdbt=ocdbt)
    r = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "a2"))
    j = streamdiff.to_json(r)
    assert r.exit_code == 0 and j["identical"]
    leaves = {x["path"]: x for x in j["leaves"]}
    for name in tree:
        grid, stored, nbytes = stored_chunks(tmp_path / "a", name)
        assert stored == grid, name  # every chunk of the grid is stored (none is all fill value)
        assert (leaves[name]["shortcut_chunks"], leaves[name]["shortcut_bytes"]) == (grid, 2 * nbytes), name
    assert leaves["w"]["shortcut_chunks"] > 1 and leaves["big"]["shortcut_chunks"] > 1  # several chunks each
    assert j["summary"]["shortcut_chunks"] == sum(x["shortcut_chunks"] for x in leaves.values())
    assert j["summary"]["shortcut_bytes"] == sum(x["shortcut_bytes"] for x in leaves.values())
    assert leaves["w"]["nan_a"] is None and leaves["w"]["count"] == BIG.size  # NaN/Inf unknown: nothing decoded
    off = streamdiff.to_json(streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "a2"), shortcut=False))
    assert off["summary"]["shortcut_chunks"] == 0 and off["summary"]["shortcut_bytes"] == 0
    assert next(x for x in off["leaves"] if x["path"] == "w")["nan_a"] == 0


def test_shortcut_only_settles_chunks_that_are_equal(tmp_path):
    """Differences in one chunk of many: the block holding it is decoded, the others settled, and
    every number is numpy's."""
    x = RNG.standard_normal((64, 64)).astype(np.float32)
    y = x.copy()
    y[40, 7] = 3.0
    save(tmp_path / "a", {"x": x}, chunk_bytes=2048)
    save(tmp_path / "b", {"x": y}, chunk_bytes=2048)
    r = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"))
    s = r.leaves[0].stats
    grid, stored, _ = stored_chunks(tmp_path / "a", "x")
    # The shortcut settles whole blocks: the one block holding [40, 7] is decoded, every chunk of the
    # other (equal-sized, 64 divides evenly) blocks is settled.
    assert grid == stored and s.blocks > 1 and grid % s.blocks == 0
    assert s.shortcut_chunks == grid - grid // s.blocks
    assert s.mismatches == 1 and s.max_abs_diff_index == (40, 7)
    assert_stats_match(s, expected_stats(x, y))


def test_nan_unequal_disables_the_shortcut_for_floats(tmp_path):
    x = np.full((10, 10), np.nan, np.float32)
    save(tmp_path / "a", {"x": x})
    save(tmp_path / "b", {"x": x})
    r = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), nan_equal=False)
    assert r.exit_code == 1 and r.leaves[0].stats.mismatches == 100
