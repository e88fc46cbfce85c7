"""The planner (streamdiff/plan.py) against numbers worked out by hand and by brute force.

Read amplification is recounted here by enumerating, for every block (or slab) the engine reads,
which stored chunks it overlaps; the memory plans are the README's budget rule worked through by
hand for three budgets.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdiff.plan import (
    BASE_RSS,
    TILE_BYTES_PER_ELEMENT,
    MemoryPlan,
    block_grid,
    memory_plan,
    pair_grid,
    pair_rows,
    prefetch_depth,
    rows_hold,
    rows_plan,
    tasks_in_flight,
)

MiB = 1 << 20


def chunks_overlapping(start: int, stop: int, chunk: int) -> range:
    """Indices of the chunks of size `chunk` that the half-open interval [start, stop) overlaps."""
    return range(start // chunk, (stop - 1) // chunk + 1)


def brute_amplification(boxes, shape, chunks) -> float:
    """Chunk decodes per stored chunk: every box decodes each stored chunk it overlaps, once."""
    chunks = tuple(min(c, n) for c, n in zip(chunks, shape))
    decodes = 0
    for start, stop in boxes:
        touched = itertools.product(*(chunks_overlapping(s, e, c) for s, e, c in zip(start, stop, chunks)))
        decodes += sum(1 for _ in touched)
    stored = math.prod(len(range(0, n, c)) for n, c in zip(shape, chunks))
    return decodes / stored


def slabs(shape, walk, slab_rows):
    """The boxes the engine reads for a rows plan: each chunk of the walked grid, `slab_rows` rows
    at a time, the first slab of every chunk starting at the chunk's first row."""
    starts = itertools.product(*(range(0, n, w) for n, w in zip(shape, walk)))
    for start in starts:
        stop = [min(s + w, n) for s, w, n in zip(start, walk, shape)]
        for r0 in range(start[0], stop[0], slab_rows):
            yield (r0,) + tuple(start[1:]), (min(r0 + slab_rows, stop[0]),) + tuple(stop[1:])


# ------------------------------------------------------------------------------------- block_grid


def test_block_grid_splits_a_common_cell_too_big_for_the_budget_and_counts_repeat_decodes():
    """10 elements, chunks of 4 (A) and 3 (B), 2 elements per block: blocks [0,2) ... [8,10).
    A's chunks [0,4) [4,8) [8,10) are decoded 2 + 2 + 1 = 5 times: 5/3. B's [0,3) [3,6) [6,9) [9,10):
    block [2,4) and [8,10) each touch two of them, 7 decodes in all: 7/4."""
    g = block_grid((10,), (4,), (3,), bytes_per_element=1, max_block_bytes=2)
    assert g.block_shape == (2,) and g.count == 5
    assert list(g.boxes()) == [((0,), (2,)), ((2,), (4,)), ((4,), (6,)), ((6,), (8,)), ((8,), (10,))]
    assert g.amplification_a == pytest.approx(5 / 3) and g.amplification_b == pytest.approx(7 / 4)


def test_block_grid_nested_chunk_grids_fit_in_one_block_decoded_once():
    """(64, 48) float32 pairs, chunks (16, 48) and (32, 24): both fit a 1 MiB block whole."""
    g = block_grid((64, 48), (16, 48), (32, 24), bytes_per_element=8, max_block_bytes=MiB)
    assert g.block_shape == (64, 48) and g.count == 1
    assert (g.amplification_a, g.amplification_b) == (1.0, 1.0)


def test_block_grid_of_a_scalar_is_one_empty_box():
    g = block_grid((), None, None, bytes_per_element=8, max_block_bytes=MiB)
    assert g.count == 1 and list(g.boxes()) == [((), ())] and (g.amplification_a, g.amplification_b) == (1.0, 1.0)


@st.composite
def grid_cases(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 24)) for _ in range(ndim))
    chunks_a = tuple(draw(st.integers(1, n + 3)) for n in shape)
    chunks_b = tuple(draw(st.integers(1, n + 3)) for n in shape)
    bpe = draw(st.sampled_from([1, 2, 8]))
    max_block_bytes = draw(st.integers(1, 4096))
    return shape, chunks_a, chunks_b, bpe, max_block_bytes


@settings(max_examples=300, deadline=None)
@given(case=grid_cases())
def test_block_grid_partitions_the_array_and_its_amplification_is_the_brute_force_count(case):
    """Every element in exactly one block; no block over the budget (at least one element) unless it
    is one cell of the common chunk grid of up to twice the budget (plan.py: splitting that cell
    would decode its chunks twice); amplification_a/_b equal to the decodes counted by enumerating
    the chunks each block overlaps."""
    shape, chunks_a, chunks_b, bpe, max_block_bytes = case
    g = block_grid(shape, chunks_a, chunks_b, bpe, max_block_bytes)
    boxes = list(g.boxes())
    assert len(boxes) == g.count
    cover = np.zeros(shape, np.int32)
    for start, stop in boxes:
        cover[tuple(slice(s, e) for s, e in zip(start, stop))] += 1
    assert (cover == 1).all()
    common = math.prod(min(math.lcm(min(a, n), min(b, n)), n) for a, b, n in zip(chunks_a, chunks_b, shape))
    largest = max(math.prod(e - s for s, e in zip(start, stop)) for start, stop in boxes)
    limit = max(1, max_block_bytes // bpe)  # elements per block (at least one)
    assert largest <= limit or largest <= common <= 2 * limit
    assert g.amplification_a == pytest.approx(brute_amplification(boxes, shape, chunks_a), rel=1e-12)
    assert g.amplification_b == pytest.approx(brute_amplification(boxes, shape, chunks_b), rel=1e-12)


# -------------------------------------------------------------------------------------- rows_plan


def test_rows_plan_same_big_chunks_stream_both_sides_in_slabs_of_the_budget():
    """(300, 70) float32 pairs, one chunk each, 4096-byte blocks: a row of both sides is 70 * 8 =
    560 bytes, so 7 rows per slab; both sides stream, nothing is decoded twice."""
    p = rows_plan((300, 70), (300, 70), (300, 70), True, True, bytes_per_element=8, max_block_bytes=4096)
    assert (p.slab_rows, p.stream_a, p.stream_b) == (7, True, True)
    assert p.grid.block_shape == (300, 70) and (p.grid.amplification_a, p.grid.amplification_b) == (1.0, 1.0)


def test_rows_plan_small_chunked_side_is_read_per_slab_and_its_repeat_decodes_counted():
    """A: one big chunk, streamed. B: chunks (75, 35), read box by box per 7-row slab. The 43 slabs
    cross B's row boundaries 75, 150, 225 three times: 46 row-chunk overlaps, times 2 column
    chunks = 92 decodes of B's 8 chunks: 11.5."""
    p = rows_plan((300, 70), (300, 70), (75, 35), True, False, bytes_per_element=8, max_block_bytes=4096)
    assert (p.slab_rows, p.stream_a, p.stream_b) == (7, True, False)
    assert p.grid.amplification_a == 1.0 and p.grid.amplification_b == pytest.approx(92 / 8)
    assert p.grid.amplification_b == pytest.approx(
        brute_amplification(slabs((300, 70), (300, 70), 7), (300, 70), (75, 35))
    )


def test_rows_plan_box_read_side_without_chunk_shape_is_read_as_one_chunk():
    """B without a chunk shape (an in-memory value or a view of one): read box by box, each of the 43
    7-row slabs decoding B whole, as if one chunk of its shape."""
    p = rows_plan((300, 70), (300, 70), None, True, False, bytes_per_element=8, max_block_bytes=4096)
    assert (p.slab_rows, p.stream_a, p.stream_b) == (7, True, False)
    assert p.grid.amplification_b == pytest.approx(
        brute_amplification(slabs((300, 70), (300, 70), 7), (300, 70), (300, 70))
    )


def test_rows_plan_refuses_a_big_side_without_chunk_shape():
    with pytest.raises(ValueError, match="no chunk shape"):
        rows_plan((300, 70), None, (75, 35), True, False, bytes_per_element=8, max_block_bytes=4096)


def test_rows_plan_walks_the_big_side_when_only_b_is_big():
    p = rows_plan((40, 6), (8, 6), (40, 6), False, True, bytes_per_element=8, max_block_bytes=100)
    assert (p.stream_a, p.stream_b) == (False, True) and p.grid.block_shape == (40, 6) and p.slab_rows == 2
    assert p.grid.amplification_a == pytest.approx(brute_amplification(slabs((40, 6), (40, 6), 2), (40, 6), (8, 6)))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 12),
    chunk_b=st.tuples(st.integers(1, 45), st.integers(1, 15)),
    budget=st.integers(1, 2000),
)
def test_rows_plan_amplification_is_the_brute_force_count_over_one_walked_chunk(rows, cols, chunk_b, budget):
    """A is one chunk (a numpy-saved array), streamed; B is read slab by slab: its amplification is
    the count of B's chunks each slab overlaps."""
    shape = (rows, cols)
    p = rows_plan(shape, shape, chunk_b, True, False, bytes_per_element=8, max_block_bytes=budget)
    assert p.stream_a and not p.stream_b and 1 <= p.slab_rows <= rows
    assert p.slab_rows == 1 or p.slab_rows * cols * 8 <= budget
    expected = brute_amplification(slabs(shape, shape, p.slab_rows), shape, chunk_b)
    assert p.grid.amplification_b == pytest.approx(expected, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 60),
    cols=st.integers(1, 12),
    chunk_a=st.tuples(st.integers(1, 30), st.integers(1, 15)),
    chunk_b=st.tuples(st.integers(1, 45), st.integers(1, 15)),
    budget=st.integers(1, 2000),
)
def test_rows_plan_amplification_is_the_brute_force_count_over_several_walked_chunks(
    rows, cols, chunk_a, chunk_b, budget
):
    """A's chunks (several along both axes) are walked slab by slab, the slabs restarting at each
    of A's chunks; B's amplification is the count of B's chunks those slabs overlap."""
    shape = (rows, cols)
    walk = tuple(min(c, n) for c, n in zip(chunk_a, shape))
    p = rows_plan(shape, chunk_a, chunk_b, True, False, bytes_per_element=8, max_block_bytes=budget)
    if tuple(chunk_a) == tuple(chunk_b):
        return  # both stream in lockstep: no amplification
    expected = brute_amplification(slabs(shape, walk, p.slab_rows), shape, chunk_b)
    assert p.grid.amplification_b == pytest.approx(expected, rel=1e-12)


def test_rows_plan_amplification_counts_slabs_restarting_at_each_walked_chunk():
    """A: chunks of 10 rows (two of them), B: chunks of 4 rows, 3-row slabs. Slabs [0,3) [3,6) [6,9)
    [9,10) [10,13) [13,16) [16,19) [19,20) overlap 1+2+2+1+2+1+1+1 = 11 of B's 5 chunks: 2.2."""
    p = rows_plan((20, 4), (10, 4), (4, 4), True, False, bytes_per_element=8, max_block_bytes=96)
    assert p.slab_rows == 3
    assert brute_amplification(slabs((20, 4), (10, 4), 3), (20, 4), (4, 4)) == pytest.approx(11 / 5)
    assert p.grid.amplification_b == pytest.approx(11 / 5)


# ------------------------------------------------------------------------------------ memory_plan


@pytest.mark.parametrize(
    "budget,jobs,tile,in_flight,block",
    [
        # 2 GiB, 4 jobs: 1938 MiB after the 110 MiB base; tiles of 2**18 cost 4 * 2**18 * 112 B =
        # 112 MiB (under a quarter); 2 * 4 + 2 = 10 blocks in flight share 1826 MiB, twice each.
        (2 << 30, 4, 1 << 18, 10, (1826 * MiB) // 20),
        # 512 MiB, 8 jobs: 402 MiB left; tiles halve until 8 * tile * 112 <= 100.5 MiB: 2**16
        # (56 MiB); 18 blocks share 402 - 56 = 346 MiB.
        (512 << 20, 8, 1 << 16, 18, (346 * MiB) // 36),
        # 64 MiB, 2 jobs: below the base, so the 16 MiB floor; tiles halve to 2**14 (3.5 MiB);
        # 6 blocks share 12.5 MiB: 1092266 B, just over the 1 MiB minimum.
        (64 << 20, 2, 1 << 14, 6, (25 * MiB // 2) // 12),
    ],
)
def test_memory_plan_worked_by_hand(budget, jobs, tile, in_flight, block):
    assert BASE_RSS == 110 * MiB and TILE_BYTES_PER_ELEMENT == 112  # the constants the hand numbers use
    m = memory_plan(budget, jobs)
    assert (m.tile, m.in_flight, m.block_bytes) == (tile, in_flight, block)
    assert m.in_flight_bytes == in_flight * block


@pytest.mark.parametrize("budget", [256 << 20, 512 << 20, 2 << 30, 16 << 30, 64 << 30])
@pytest.mark.parametrize("jobs", [1, 2, 8, 16])
def test_memory_plan_stays_within_the_budget(budget, jobs):
    """Base + tiles + every block in flight at twice its size (decode buffer and array) <= budget."""
    m = memory_plan(budget, jobs)
    assert BASE_RSS + jobs * m.tile * TILE_BYTES_PER_ELEMENT + 2 * m.in_flight_bytes <= budget
    assert MiB <= m.block_bytes <= 256 * MiB and m.tile >= 1 << 12


def test_memory_plan_block_bytes_override_keeps_everything_else():
    m = memory_plan(2 << 30, 4, block_bytes=16)
    assert m.block_bytes == 16 and (m.tile, m.in_flight) == (memory_plan(2 << 30, 4).tile, 10)
    assert memory_plan(2 << 30, 4, block_bytes=0).block_bytes == 1


# ------------------------------------------------------------------------ crossed grids (pair_grid)

#: The issue's pair: MLP kernels saved on two meshes, chunks [256,8,2048] and [128,8,4096].
KERNEL, MESH_A, MESH_B = (1024, 8, 4096), (256, 8, 2048), (128, 8, 4096)


def lru_count(boxes, shape, chunks, capacity: int) -> int:
    """Chunk decodes reading `boxes` in order through a least-recently-used cache of `capacity`
    chunks: a list, most recent last (written apart from plan.lru_decodes)."""
    cache: list = []
    decodes = 0
    for start, stop in boxes:
        for key in itertools.product(*(chunks_overlapping(s, e, c) for s, e, c in zip(start, stop, chunks))):
            if key in cache:
                cache.remove(key)
            else:
                decodes += 1
            cache.append(key)
            del cache[: max(0, len(cache) - capacity)]
    return decodes


def test_pair_grid_takes_the_lcm_block_when_two_fit_in_flight_and_no_chunk_fits_a_block():
    """16 blocks of 8 MiB in flight (128 MiB) hold two lcm blocks of 64 MiB (both sides); a chunk of
    either side (32 MiB both sides) is over twice the block, so no cached traversal: the block is
    the lcm block, charged its full size (two in flight), every chunk decoded once."""
    m = MemoryPlan(budget=2 << 30, jobs=2, block_bytes=8 * MiB, in_flight=16, tile=1 << 12)
    g = pair_grid(KERNEL, MESH_A, MESH_B, (4, 4), m)
    assert g.block_shape == (256, 8, 4096) and g.hold == 64 * MiB
    assert (g.amplification_a, g.amplification_b, g.cache_a, g.cache_b) == (1.0, 1.0, 0, 0)
    assert m.in_flight_bytes // g.hold == 2
    fewer = MemoryPlan(budget=2 << 30, jobs=2, block_bytes=8 * MiB - 1, in_flight=16, tile=1 << 12)
    assert pair_grid(KERNEL, MESH_A, MESH_B, (4, 4), fewer).block_shape != (256, 8, 4096)


@pytest.mark.parametrize("budget", [384 << 20, 512 << 20])
def test_pair_grid_between_256m_and_1g_reads_one_sides_chunks_and_caches_the_other(budget):
    """384M-512M: a chunk of A (32 MiB both sides) fits a block; B's chunks, crossing it along the
    last axis, are cached (the two each pair of A blocks shares): every chunk decoded once, by the
    independent LRU count. (Decoding each chunk straight into the array compared costs less than
    the lcm block's copy out of two decode buffers, so this wins even where two lcm blocks fit.)"""
    m = memory_plan(budget, 2)
    g = pair_grid(KERNEL, MESH_A, MESH_B, (4, 4), m)
    assert g.block_shape == MESH_A and g.cache_a == 0 and g.cache_b > 0
    assert (g.amplification_a, g.amplification_b) == (1.0, 1.0)
    chunk = math.prod(MESH_B) * 4
    stored = math.prod(n // c for n, c in zip(KERNEL, MESH_B))
    assert lru_count(g.boxes(), KERNEL, MESH_B, g.cache_b // chunk) == stored
    window = m.in_flight_bytes // g.hold
    assert window >= 1 and g.cache_b + window * 2 * math.prod(MESH_A) * 8 <= 2 * m.in_flight_bytes


def test_pair_rows_at_256m_reads_the_crossed_side_through_a_cache_every_chunk_once():
    """256M: chunks of 16 MiB exceed the 9.8 MiB block, so A's stream; B's chunks cross A's along
    the last axis, and the two B chunks each pair of A chunks shares (32 MiB) are cached: each B
    chunk is decoded once (LRU replay of the slabs in order, independent count)."""
    m = memory_plan(256 << 20, 2)
    r = pair_rows(KERNEL, MESH_A, MESH_B, True, True, (4, 4), m)
    assert r.stream_a and not r.stream_b and r.grid.cache_b > 0
    assert (r.grid.amplification_a, r.grid.amplification_b) == (1.0, 1.0)
    boxes = list(slabs(KERNEL, MESH_A, r.slab_rows))
    chunk = math.prod(MESH_B) * 4
    assert lru_count(boxes, KERNEL, MESH_B, r.grid.cache_b // chunk) == math.prod(
        n // c for n, c in zip(KERNEL, MESH_B)
    )
    window = m.in_flight_bytes // r.grid.hold  # tasks in flight; the cache fits beside what they hold
    cost = rows_hold(r, 8, m, prefetch_depth(True))
    assert window == 2 and r.grid.cache_b + window * cost <= 2 * m.in_flight_bytes


@pytest.mark.parametrize(
    "chunks_b, block_bytes, capacity, amp_a, uncached",
    [
        # B's 8x16 chunks cross A's 16x24: 2560 bytes a block leave room (5120 less one block's
        # 2048) for the two A chunks a row of blocks shares: each decoded once.
        ((8, 16), 2560, 2, 1.0, 4.0),
        # B's 8x8 chunks: 1280 bytes a block leave room (2560 - 1024) for one A chunk: each is
        # decoded once per 8-row band, twice, instead of once per block, 6 times.
        ((8, 8), 1280, 1, 2.0, 6.0),
    ],
)
def test_pair_grid_cached_amplification_is_the_independent_lru_count(chunks_b, block_bytes, capacity, amp_a, uncached):
    """Blocks of B's chunks over A's 16x24 chunks, A's chunk too big for a block (3072 bytes over
    twice the block bytes), one block in flight: A is read through a cache of what the room holds,
    and the amplification is the count of an LRU cache of that many chunks reading the blocks."""
    m = MemoryPlan(budget=2 << 30, jobs=2, block_bytes=block_bytes, in_flight=1, tile=1 << 12)
    shape, ca = (64, 48), (16, 24)
    g = pair_grid(shape, ca, chunks_b, (4, 4), m)
    assert g.block_shape == chunks_b and g.cache_a == capacity * math.prod(ca) * 4 and g.cache_b == 0
    stored = math.prod(n // c for n, c in zip(shape, ca))
    assert g.amplification_a == lru_count(g.boxes(), shape, ca, capacity) / stored == amp_a
    assert g.amplification_b == 1.0
    assert brute_amplification(g.boxes(), shape, ca) == uncached  # without the cache: once per block


def test_tasks_in_flight_grow_on_remote_stores_up_to_16_tasks_or_128_mib_never_below_the_plan():
    m = memory_plan(2 << 30, 2)
    assert m.in_flight == 6
    assert tasks_in_flight(m, remote=False, task_bytes=4 * MiB) == 6  # local: the plan's own count
    assert tasks_in_flight(m, remote=True, task_bytes=4 * MiB) == 16  # at most 16
    assert tasks_in_flight(m, remote=True, task_bytes=12 * MiB) == 10  # 128 MiB / 12 MiB
    assert tasks_in_flight(m, remote=True, task_bytes=32 * MiB) == 6  # never fewer than the plan's
    assert tasks_in_flight(m, remote=True, task_bytes=0) == 16


def test_fill_stagger_pauses_only_before_large_tasks_on_remote_stores():
    """The first reads of large remote tasks start REMOTE_STAGGER_SECONDS apart; local tasks and
    small remote ones never wait."""
    from streamdiff.plan import REMOTE_STAGGER_MIN_BYTES, REMOTE_STAGGER_SECONDS, fill_stagger

    assert fill_stagger(True, REMOTE_STAGGER_MIN_BYTES) == REMOTE_STAGGER_SECONDS > 0
    assert fill_stagger(True, REMOTE_STAGGER_MIN_BYTES - 1) == 0
    assert fill_stagger(False, 1 << 30) == 0
