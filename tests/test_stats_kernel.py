"""The fast comparison kernel (stats._tile_fast): bounds that skip most of the tolerance and
relative-error work, maxima found from squares. Every number is checked against numpy on the whole
arrays (tests/reference.py), and each tile's sum of squares against numpy's own sum of that tile.
Arrays are large enough, and tiles small enough, that each shortcut is taken (and each fallback)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_stats_match, expected_stats

from streamdiff.report import stats_json
from streamdiff.stats import LeafStats, Policy, _at_least, block_stats

TOLERANCES = [(0.0, 0.0), (1e-6, 1e-5), (0.0, 1e-5), (1e-3, 0.0), (0.25, 0.25)]


def stats_of(a, b, policy, tile, block=None):
    """Blocks of `block` elements along the flat array (the engine's blocks), merged."""
    block = block or a.size
    acc = LeafStats()
    for lo in range(0, a.size, block):
        acc.merge(block_stats(a[lo : lo + block], b[lo : lo + block], policy, (lo,), a.shape, tile))
    return acc


def tile_sums(a, b, tile, block=None):
    """numpy's sum of squares of each tile of each block, in float64 (none for a block whose
    stored bytes are equal: nothing differs there, so no sums are kept)."""
    block = block or a.size
    x = a.astype(np.float64) - b.astype(np.float64)
    sums = []
    for lo in range(0, a.size, block):
        if a.dtype == b.dtype and a[lo : lo + block].tobytes() == b[lo : lo + block].tobytes():
            continue
        part = x[lo : lo + block]
        sums += [float(np.sum(part[k : k + tile] ** 2)) for k in range(0, part.size, tile)]
    return sums


def check(a, b, atol, rtol, tile, block=None):
    s = stats_of(a, b, Policy(atol=atol, rtol=rtol), tile, block)
    assert_stats_match(stats_json(s.result(a.shape)), expected_stats(a, b, atol, rtol))
    if np.isfinite(a.astype(np.float64) - b.astype(np.float64)).all():
        assert s.sq_sums == tile_sums(a, b, tile, block)
    return s


@st.composite
def noisy_pairs(draw):
    """B = A plus noise of a few scales, with zeros, exact ties and equal stretches mixed in."""
    n = draw(st.integers(1, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dt = draw(st.sampled_from([np.float32, np.float64, ml_dtypes.bfloat16, np.float16]))
    scale = draw(st.sampled_from([0.02, 1.0, 1e4]))
    a = rng.standard_normal(n) * scale
    noise = rng.standard_normal(n) * draw(st.sampled_from([1e-4, 1e-6, 1e-2])) * scale
    keep = rng.random(n) < draw(st.sampled_from([0.0, 0.5, 0.97]))  # stretches of equal values
    b = np.where(keep, a, a + noise)
    zeros = rng.random(n) < draw(st.sampled_from([0.0, 0.01]))
    b[zeros] = 0.0  # d / |b| is inf there (or 0/0 where a is 0 too)
    a[zeros & (rng.random(n) < 0.5)] = 0.0
    a, b = a.astype(dt), b.astype(dt)
    if draw(st.booleans()) and n > 4:  # the same pair twice: ties in |d| and in d/|b|
        k = int(rng.integers(0, n - 1))
        a[-1], b[-1] = a[k], b[k]
    if draw(st.booleans()):  # mixed dtypes: float32 against float64
        b = b.astype(np.float64) if dt == np.float32 else b
    return a, b


@settings(max_examples=150, deadline=None)
@given(
    pair=noisy_pairs(),
    tol=st.sampled_from(TOLERANCES),
    tile=st.sampled_from([64, 257, 1000, 1 << 17]),
    block=st.sampled_from([None, 700]),
)
def test_fast_kernel_equals_numpy_on_noisy_pairs(pair, tol, tile, block):
    """Count, mismatches, max |a-b| (index, values), max rel (index), rms and each tile's sum of
    squares equal numpy's, for float32/float64/bf16/f16 and mixed pairs, over tiles and blocks."""
    a, b = pair
    check(a, b, *tol, tile, block)


def test_tolerance_count_of_noise_is_exact_where_bounds_leave_elements_open():
    """B = A + 1e-4 noise at atol 1e-6, rtol 1e-5 (the bench's pair): about 1.6% of the
    differences are too small for the bound at max|b| to settle and are tested one by one; values
    placed exactly on the threshold (binary fractions) count as within."""
    rng = np.random.default_rng(1)
    a = (rng.standard_normal(50_000) * 0.02).astype(np.float32)
    b = a + (rng.standard_normal(50_000) * 1e-4).astype(np.float32)
    s = check(a, b, 1e-6, 1e-5, 4096)
    on = np.array([1.5, 2.75, 3.0], np.float32), np.array([1.0, 2.0, 2.0], np.float32)
    a2 = np.concatenate([a[:1000] * 1e-3, on[0]])
    b2 = np.concatenate([a[:1000] * 1e-3, on[1]])  # |d| == 0.25 + 0.25*|b| on the first two
    assert check(a2, b2, 0.25, 0.25, 512).mismatches == 1
    assert 0 < s.mismatches < a.size


def test_tolerance_with_most_values_equal_counts_exactly():
    """97% of the values equal (d = 0, below atol: settled by the lower bound), the rest differing
    around the threshold: the exact count, tile by tile."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal(20_000)
    b = a.copy()
    moved = rng.random(a.size) < 0.03
    b[moved] += rng.standard_normal(int(moved.sum())) * 1e-3
    for atol, rtol in [(1e-3, 1e-4), (0.0, 1e-3), (1e-3, 0.0)]:
        check(a, b, atol, rtol, 1000)


def test_largest_difference_at_the_last_element_of_a_tile_and_ties_keep_the_first():
    """max |a-b| at the last element of the first tile, then the same difference again later
    (the first position wins), and differences below 2**-511 whose squares underflow."""
    a = np.zeros(300)
    b = np.full(300, 1e-3)
    b[63] = a[63] + 5.0
    b[200] = a[200] + 5.0
    s = check(a, b, 0.0, 0.0, 64)
    assert (s.max_abs, s.max_abs_index) == (5.0, 63)
    tiny = np.zeros(100)
    other = np.full(100, 1e-170)
    other[77] = 3e-170  # squares of all of these underflow to 0
    s = check(tiny, other, 0.0, 0.0, 64)
    assert (s.max_abs, s.max_abs_index) == (3e-170, 77)


def test_largest_relative_difference_found_across_tiles_and_at_zeros():
    """The largest d/|b| in a later tile than the largest |d|; an equal ratio in a later tile
    loses to the first; b == 0 != a is an infinite ratio at its first position; a == b == 0 is 0."""
    n = 1000
    a = np.linspace(1.0, 2.0, n)
    b = a + 1e-3
    b[10] = 1e-9  # huge ratio in tile 0
    a[10] = b[10] + 1e-3
    a[900], b[900] = a[10], b[10]  # the same pair later: a tie in d/|b|
    s = check(a, b, 0.0, 1e-6, 128)
    assert s.max_rel_index == 10
    a[500], b[500] = 0.0, 0.0  # 0/0: not a ratio
    b[700], a[700] = 0.0, 1e-9  # infinite ratio
    b[950], a[950] = 0.0, 2e-9  # a later infinite ratio
    s = check(a, b, 0.0, 1e-6, 128)
    assert (s.max_rel, s.max_rel_index) == (math.inf, 700)


def test_nan_and_inf_in_the_second_tile_leave_every_stat_and_the_other_tiles_sums_equal_to_numpys():
    """A NaN (and an Inf) in the second tile: that tile alone takes the NaN-aware path; all
    statistics still equal numpy's, and the finite tiles' sums of squares are numpy's."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal(1000).astype(np.float32)
    b = a + np.float32(1e-3)
    b[300], a[310] = np.nan, np.inf
    s = stats_of(a, b, Policy(atol=1e-6, rtol=1e-5), 256)
    assert_stats_match(stats_json(s.result(a.shape)), expected_stats(a, b, 1e-6, 1e-5))
    sums = tile_sums(a, b, 256)
    assert [s.sq_sums[k] for k in (0, 2, 3)] == [sums[k] for k in (0, 2, 3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_at_least_rounds_a_threshold_up_into_the_dtype(dtype):
    """The threshold a float32 |b| is compared with is the dtype's smallest value >= c: never below
    c (which would drop candidates), and the value before it is below c."""
    rng = np.random.default_rng(5)
    hi = float(np.finfo(dtype).max)
    for c in np.concatenate([rng.random(200) * 10.0 ** rng.integers(-8, 4, 200), [0.0, 1.0, hi * 2]]):
        v = _at_least(float(c), np.dtype(dtype))
        assert v.dtype == dtype and float(v) >= c
        below = np.nextafter(v, dtype(-np.inf))
        assert float(below) < c


def test_squares_of_neighbouring_doubles_differ_above_the_smallest_normal():
    """What locating max |d| by its square rests on: for doubles x whose square is a normal
    float64, the next double up has a strictly larger rounded square, including at binade edges
    (x just below a power of two, x near sqrt(2) times one) and at the lowest and highest exponents."""
    rng = np.random.default_rng(6)
    exps = np.arange(-511, 512)
    x = np.concatenate(
        [
            np.ldexp(rng.uniform(1.0, 2.0, 40_000), rng.choice(exps, 40_000)),
            np.nextafter(np.ldexp(1.0, exps), 0.0),  # just below 2**e
            np.ldexp(math.sqrt(2.0), exps[:-1]),
            np.nextafter(np.ldexp(math.sqrt(2.0), exps[:-1]), 0.0),
        ]
    )
    x = x[(x * x >= np.finfo(np.float64).tiny) & np.isfinite(np.nextafter(x, np.inf) ** 2)]
    assert x.size > 40_000
    assert (x * x < np.nextafter(x, np.inf) ** 2).all()


def test_placement_index_equals_numpys_unravel_and_ravel():
    """A tile's flat position, placed through its block into the whole array, is numpy's
    ravel_multi_index(start + unravel_index(offset + i, block), full) for random shapes."""
    from streamdiff.stats import _Placement

    rng = np.random.default_rng(7)
    for _ in range(300):
        nd = int(rng.integers(1, 5))
        block = tuple(int(x) for x in rng.integers(1, 9, nd))
        start = tuple(int(x) for x in rng.integers(0, 5, nd))
        full = tuple(s + b + int(e) for s, b, e in zip(start, block, rng.integers(0, 4, nd)))
        flat = int(rng.integers(0, math.prod(block)))
        offset = int(rng.integers(0, flat + 1))
        local = np.unravel_index(flat, block)
        want = int(np.ravel_multi_index(tuple(s + int(k) for s, k in zip(start, local)), full))
        assert _Placement(offset, block, start, full).index(flat - offset) == want
    assert _Placement(0, (), (), ()).index(0) == 0
