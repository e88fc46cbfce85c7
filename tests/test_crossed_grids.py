"""Crossed chunk grids on real storage: the same values saved with two chunk grids that do not nest
(tensorstore's zarr driver writes both), compared with the budget allowing the least-common-multiple
block, a cached traversal, or neither. The bytes tensorstore reads from disk (the report's
`bytes_read`, from tensorstore's own counters) are checked against the planner's read amplification
and the stored chunk files' sizes; the numbers against numpy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

import streamdiff
from streamdiff.plan import memory_plan, pair_grid, pair_rows

SHAPE, CHUNKS_A, CHUNKS_B = (64, 48), (16, 24), (8, 48)  # lcm block (16, 48): 2 chunks of each side


def write(path: Path, values: np.ndarray, chunks: tuple[int, ...]) -> Path:
    """Uncompressed, so every chunk file has the same size and decodes count as bytes read."""
    md = {"shape": list(values.shape), "chunks": list(chunks), "compressor": None, "dtype": "<f4"}
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": f"{path}/"}, "metadata": md}
    ts.open(spec, create=True, delete_existing=True).result().write(values).result()
    return path


def chunk_file_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if not f.name.startswith("."))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("crossed")
    rng = np.random.default_rng(7)
    a = rng.standard_normal(SHAPE).astype(np.float32)
    b = a.copy()
    b[5, 7] += 1.0
    b[40, 30] -= 2.0
    pa, pb = write(d / "a", a, CHUNKS_A), write(d / "b", b, CHUNKS_B)
    read = {p: ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": f"{p}/"}}).result() for p in (pa, pb)}
    assert read[pa].chunk_layout.read_chunk.shape == CHUNKS_A and read[pb].chunk_layout.read_chunk.shape == CHUNKS_B
    return pa, pb, read[pa].read().result(), read[pb].read().result()


def value_bytes_read(a: Path, b: Path, block_bytes: int | None) -> tuple[int, streamdiff.LeafResult]:
    """Bytes read for values alone: a diff's bytes minus those of a structure-only diff (metadata)."""
    meta = streamdiff.diff(str(a), str(b), structure_only=True).bytes_read
    r = streamdiff.diff(str(a), str(b), block_bytes=block_bytes, jobs=2)
    return r.bytes_read - meta, r.leaves[0]


@pytest.mark.parametrize(
    "block_bytes, plan",
    [
        (None, "lcm"),  # the default budget: one block of whole lcm blocks (the whole array)
        (1600, "cache"),  # 1600 bytes a block: blocks of A's chunk, B's chunks through a cache
    ],
)
def test_crossed_grids_read_every_stored_byte_once_when_the_budget_allows(pair, block_bytes, plan):
    a, b, va, vb = pair
    mem = memory_plan(2 << 30, 2, block_bytes)
    g = pair_grid(SHAPE, CHUNKS_A, CHUNKS_B, (4, 4), mem)
    if plan == "lcm":
        assert g.block_shape == SHAPE and g.cache_a == g.cache_b == 0
    else:
        assert g.block_shape == CHUNKS_A and g.cache_a == 0 and g.cache_b > 0
    assert (g.amplification_a, g.amplification_b) == (1.0, 1.0)
    nbytes, leaf = value_bytes_read(a, b, block_bytes)
    assert nbytes == chunk_file_bytes(a) + chunk_file_bytes(b)
    assert leaf.stats.read_amplification is None and leaf.stats.blocks == g.count
    diff = np.abs(va - vb)
    assert leaf.stats.mismatches == int(np.count_nonzero(diff)) == 2
    assert leaf.stats.max_abs_diff == pytest.approx(float(diff.max()))


def test_crossed_grids_without_room_for_a_cache_read_what_the_reported_amplification_says(pair):
    """700 bytes a block: both sides' chunks (1536 bytes) exceed it, so A's chunks stream in slabs and
    B is read slab by slab with no room for a cache; B's chunks are decoded once per slab touching
    them, and the bytes read are each side's stored bytes times its amplification."""
    a, b, va, vb = pair
    g = pair_rows(SHAPE, CHUNKS_A, CHUNKS_B, True, True, (4, 4), memory_plan(2 << 30, 2, 700)).grid
    assert g.cache_a == g.cache_b == 0 and g.amplification_a == 1.0 and g.amplification_b > 1.0
    nbytes, leaf = value_bytes_read(a, b, 700)
    assert nbytes == pytest.approx(g.amplification_a * chunk_file_bytes(a) + g.amplification_b * chunk_file_bytes(b))
    assert leaf.stats.read_amplification == max(g.amplification_a, g.amplification_b)
    assert leaf.stats.mismatches == int(np.count_nonzero(va != vb))


def test_stored_chunk_files_are_equal_sized_so_bytes_count_decodes(pair):
    a, b, _, _ = pair
    for p, chunks in ((a, CHUNKS_A), (b, CHUNKS_B)):
        sizes = {f.stat().st_size for f in p.iterdir() if not f.name.startswith(".")}
        assert sizes == {int(np.prod(chunks)) * 4} and len(os.listdir(p)) - 1 == (64 * 48) // int(np.prod(chunks))


def test_crossed_grids_streamed_side_against_a_cached_side_reads_every_stored_byte_once(tmp_path):
    """Chunks of 2 MiB over a 1.5 MiB block: A's chunks stream in slabs, and B's chunks, crossing
    them, are read through a cache holding the two B chunks each pair of A chunks shares."""
    shape, ca, cb = (4096, 1024), (1024, 512), (512, 1024)
    rng = np.random.default_rng(3)
    va = rng.standard_normal(shape).astype(np.float32)
    vb = va.copy()
    vb[1000:1003, 600] += 0.5
    a, b = write(tmp_path / "a", va, ca), write(tmp_path / "b", vb, cb)
    block = 3 << 19
    r = pair_rows(shape, ca, cb, True, True, (4, 4), memory_plan(2 << 30, 2, block))
    assert r.stream_a and not r.stream_b and r.grid.cache_b > 0
    assert (r.grid.amplification_a, r.grid.amplification_b) == (1.0, 1.0)
    nbytes, leaf = value_bytes_read(a, b, block)
    assert nbytes == chunk_file_bytes(a) + chunk_file_bytes(b)
    assert leaf.stats.streamed and leaf.stats.read_amplification is None
    assert leaf.stats.mismatches == int(np.count_nonzero(va != vb)) == 3
