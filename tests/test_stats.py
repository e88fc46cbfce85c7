"""Block statistics, merged over any block grid in any order, equal numpy on the whole arrays."""

from __future__ import annotations

import math
import random

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import assert_stats_match, expected_stats

from streamdiff.plan import BlockGrid
from streamdiff.report import stats_json
from streamdiff.stats import LeafStats, Policy, block_stats

SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, 1e30, 1.0, -1.0]
FLOAT_DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn]


def blockwise(a, b, policy, block_shape, tile, seed=0):
    """What the streaming engine does: blocks of a grid, stats per block, merged in shuffled order."""
    grid = BlockGrid(a.shape, tuple(block_shape), 1.0, 1.0)
    parts = []
    for start, stop in grid.boxes():
        box = tuple(slice(s, e) for s, e in zip(start, stop))
        parts.append(block_stats(a[box], b[box], policy, start, a.shape, tile))
    random.Random(seed).shuffle(parts)
    acc = LeafStats()
    for p in parts:
        acc.merge(p)
    return stats_json(acc.result(a.shape))


@st.composite
def array_pairs(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=7))
    kind = draw(st.sampled_from(["float", "float", "float", "int", "wideint", "bool", "complex", "mixed"]))
    if kind == "float":
        dt = draw(st.sampled_from(FLOAT_DTYPES))
        base = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from(SPECIAL) | st.floats(-1e3, 1e3)))
        noise_values = st.sampled_from([0.0, 0.0, 1e-6, -1e-3, 1.0, np.nan, np.inf])
        noise = draw(hnp.arrays(np.float64, shape, elements=noise_values))
        # 1e30 overflows to inf in small floats and -inf + inf is NaN: fine, both are cases too
        with np.errstate(over="ignore", invalid="ignore"):
            a = base.astype(dt)
            b = (base + noise).astype(dt)
    elif kind == "mixed":  # dtype differs between sides: compared after promotion
        base = draw(hnp.arrays(np.float32, shape, elements=st.floats(-100, 100, width=32)))
        a, b = base, base.astype(ml_dtypes.bfloat16)
    elif kind == "int":
        dt = draw(st.sampled_from([np.int8, np.int32, np.int64, np.uint32, ml_dtypes.int4]))
        lo, hi = (-8, 7) if dt is ml_dtypes.int4 else (0, 100)
        a = draw(hnp.arrays(np.int64, shape, elements=st.integers(lo, hi))).astype(dt)
        b = draw(hnp.arrays(np.int64, shape, elements=st.integers(lo, hi))).astype(dt)
        keep = draw(hnp.arrays(np.bool_, shape))
        b = np.where(keep, a, b).astype(dt)
    elif kind == "wideint":  # 64-bit values whose differences float64 upcasts cannot represent
        dt = draw(st.sampled_from([np.int64, np.uint64]))
        info = np.iinfo(dt)
        near = st.sampled_from([int(info.min), int(info.max), 2**62, 2**53 + 1]).flatmap(
            lambda v: st.integers(max(int(info.min), v - 3), min(int(info.max), v + 3))
        )
        values = near | st.integers(int(info.min), int(info.max))
        a = np.array(draw(st.lists(values, min_size=math.prod(shape), max_size=math.prod(shape))), dt).reshape(shape)
        # B: A moved by a few units (a difference float64 upcasts of such values round away)
        steps = draw(st.lists(st.integers(-3, 3), min_size=math.prod(shape), max_size=math.prod(shape)))
        moved = [min(int(info.max), max(int(info.min), x + k)) for x, k in zip(a.reshape(-1).tolist(), steps)]
        b = np.array(moved, dt).reshape(shape)
    elif kind == "bool":
        a = draw(hnp.arrays(np.bool_, shape))
        b = draw(hnp.arrays(np.bool_, shape))
    else:
        re = draw(hnp.arrays(np.float64, shape, elements=st.floats(-10, 10)))
        a = (re + 1j * re[::-1] if re.ndim else re + 1j).astype(np.complex64)
        b = a.copy()
        if a.size:
            b.reshape(-1)[0] += draw(st.sampled_from([0, 1e-3, 1j, np.nan]))
    block = tuple(draw(st.integers(1, max(1, n))) for n in shape)
    return a, b, block


@settings(max_examples=300, deadline=None)
@given(
    pair=array_pairs(),
    atol=st.sampled_from([0.0, 1e-6, 1e-2]),
    rtol=st.sampled_from([0.0, 1e-5, 1e-1]),
    nan_equal=st.booleans(),
    exact=st.booleans(),
    tile=st.sampled_from([1, 3, 1 << 18]),
    seed=st.integers(0, 3),
)
def test_blockwise_stats_equal_numpy(pair, atol, rtol, nan_equal, exact, tile, seed):
    a, b, block = pair
    policy = Policy(atol=atol, rtol=rtol, nan_equal=nan_equal, exact=exact)
    got = blockwise(a, b, policy, block, tile, seed)
    assert_stats_match(got, expected_stats(a, b, atol, rtol, nan_equal, exact))


def test_tolerance_is_numpy_isclose_convention():
    """|a-b| <= atol + rtol*|b| with b the second argument: asymmetric, like numpy."""
    a = np.array([1.0, 100.0])
    b = np.array([1.1, 110.0])
    fwd = block_stats(a, b, Policy(rtol=0.0910)).mismatches  # 0.1 <= 0.1001, 10 <= 10.01
    rev = block_stats(b, a, Policy(rtol=0.0910)).mismatches  # 0.1 > 0.091, 10 > 9.1
    assert (fwd, rev) == (0, 2)


@pytest.mark.parametrize("with_nan", [False, True])  # a NaN sends the tile down the non-finite path
def test_difference_exactly_at_atol_plus_rtol_b_is_within(with_nan):
    """|a-b| == atol + rtol*|b| is not a mismatch (README: differs when |a-b| > atol + rtol*|b|):
    0.5 == 0.25 + 0.25*1 and 0.75 == 0.25 + 0.25*2 are within; 1.0 > 0.75 is not. Exact binary fractions."""
    a = np.array([1.5, 2.75, 3.0] + [np.nan] * with_nan)
    b = np.array([1.0, 2.0, 2.0] + [np.nan] * with_nan)
    assert block_stats(a, b, Policy(atol=0.25, rtol=0.25)).mismatches == 1
    assert expected_stats(a, b, 0.25, 0.25)["mismatches"] == 1


def test_nan_policy():
    a = np.array([np.nan, 1.0, np.nan], np.float32)
    b = np.array([np.nan, np.nan, 2.0], np.float32)
    s = block_stats(a, b, Policy())
    assert (s.mismatches, s.nan_a, s.nan_b, s.nan_mismatch) == (2, 2, 2, 2)
    assert block_stats(a, b, Policy(nan_equal=False)).mismatches == 3


def test_infinities_equal_only_themselves():
    a = np.array([np.inf, -np.inf, np.inf, 1.0])
    b = np.array([np.inf, np.inf, 1.0, 1.0])
    s = block_stats(a, b, Policy(atol=1e300, rtol=1.0))
    assert s.mismatches == 2
    assert s.max_abs == np.inf and s.max_abs_index == 1


def test_infinite_b_against_another_value_is_an_infinite_relative_difference():
    """d / |b| with d and |b| both infinite (README leaves it open): inf, at the first such position."""
    a = np.array([2.0, 1.0, -np.inf, 3.0])
    b = np.array([2.0, np.inf, np.inf, 3.0])
    s = block_stats(a, b, Policy(), (0,), a.shape).result(a.shape)
    assert (s.max_rel_diff, s.max_rel_diff_index) == (np.inf, (1,))
    assert (s.max_abs_diff, s.max_abs_diff_index, s.mismatches) == (np.inf, (1,), 2)
    assert_stats_match(s, expected_stats(a, b))


def test_large_int64_compare_exactly():
    """float64 cannot tell 2**53 from 2**53+1; integer comparison must."""
    a = np.array([2**53], np.int64)
    b = np.array([2**53 + 1], np.int64)
    assert block_stats(a, b, Policy()).mismatches == 1


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.array([2**62, 5], np.int64), np.array([2**62 + 1, 5], np.int64)),
        (np.array([2**64 - 1, 3], np.uint64), np.array([2**64 - 2, 3], np.uint64)),
        (np.array([-(2**63), 2**63 - 1], np.int64), np.array([2**63 - 1, -(2**63)], np.int64)),
        (np.array([-1, 2**63 - 1], np.int64), np.array([2**64 - 1, 2**63], np.uint64)),  # mixed: 65-bit |a-b|
        (np.array([2**62 + 1, -5], np.int64), np.array([7, -(2**31)], np.int32)),  # int64 vs int32
    ],
    ids=["int64_2**62", "uint64_top", "int64_extremes", "int64_vs_uint64", "int64_vs_int32"],
)
def test_64_bit_integer_abs_diff_is_exact_before_float64(a, b):
    """max |a-b|, its index and values, max rel and rms equal numpy's on Python-int differences."""
    got = stats_json(block_stats(a, b, Policy(), (0,), a.shape).result(a.shape))
    assert_stats_match(got, expected_stats(a, b))
    exact = [abs(int(x) - int(y)) for x, y in zip(a.tolist(), b.tolist())]
    assert got["max_abs_diff"] == float(max(exact))
    assert got["rms_diff"] == pytest.approx(math.sqrt(sum(float(d) ** 2 for d in exact) / len(exact)), rel=1e-15)


def test_bf16_is_upcast_and_accumulates_in_float64():
    """bf16 differences taken in float64 and squared sums kept in float64: the RMS equals numpy's
    float64 result to 1e-14, which a float32 (or bf16) computation of the same data misses by far."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal(1 << 16).astype(ml_dtypes.bfloat16)
    b = (a.astype(np.float64) * (1 + rng.uniform(-0.05, 0.05, 1 << 16))).astype(ml_dtypes.bfloat16)
    d64 = a.astype(np.float64) - b.astype(np.float64)
    expected = float(np.sqrt(np.mean(d64**2)))
    d32 = a.astype(np.float32) - b.astype(np.float32)
    in_float32 = float(np.sqrt(np.sum(d32 * d32, dtype=np.float32) / np.float32(d32.size)))
    in_bf16 = float(np.sqrt(np.mean((a - b) ** 2)))
    assert abs(in_float32 - expected) > 1e-9 * expected and abs(in_bf16 - expected) > 1e-3 * expected
    s = block_stats(a, b, Policy(), tile=1000)
    assert s.mismatches == int(np.count_nonzero(d64))
    assert s.rms == pytest.approx(expected, rel=1e-14)


def test_merge_is_order_independent_for_rms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(100_000)
    b = a + rng.standard_normal(100_000) * np.logspace(-12, 12, 100_000)
    parts = [block_stats(a[i : i + 777], b[i : i + 777], Policy(), (i,), a.shape) for i in range(0, a.size, 777)]
    r1 = LeafStats()
    for p in parts:
        r1.merge(p)
    r2 = LeafStats()
    for p in reversed(parts):
        r2.merge(p)
    assert r1.rms == r2.rms


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.array([2**62 + 1, 5, 2**53 + 1], np.int64), np.array([2.0**62, 5.0, 2.0**53], np.float64)),
        (np.array([2.0**63, 1.5, np.nan], np.float64), np.array([2**63 - 1, 1, 0], np.int64)),
        (np.array([2**64 - 1, 7], np.uint64), np.array([2.0**64, 7.0], np.float32)),
    ],
    ids=["int64_vs_float64_above_2**53", "float64_vs_int64_edges", "uint64_vs_float32_top"],
)
def test_64_bit_integer_against_float_counts_every_unequal_value(a, b):
    """An allow_dtype pairing of a 64-bit integer with a float: each value differing by any amount
    is a mismatch at zero tolerance, and max |a-b| is the exact difference of Python numbers
    (float64 upcasts make 2**62 + 1 equal to 2**62)."""
    from fractions import Fraction

    got = stats_json(block_stats(a, b, Policy(), (0,), a.shape).result(a.shape))
    pairs = [(x, y) for x, y in zip(a.tolist(), b.tolist()) if not (math.isnan(x) or math.isnan(y))]
    exact = [abs(Fraction(x) - Fraction(y)) for x, y in pairs]
    assert got["mismatches"] == sum(1 for d in exact if d != 0) + (len(a) - len(pairs))
    assert got["max_abs_diff"] == float(max(exact))
    i = got["max_abs_diff_index"][0]
    assert got["max_abs_diff_values"] == [a.tolist()[i], b.tolist()[i]]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_per_layer_block_stats_equal_numpy_for_the_block_and_for_every_layer(axis):
    """With a layer axis, the block's statistics (placed at an offset in a larger array) and each
    layer's count, mismatches, max |a-b| and RMS equal numpy's on the block and on that slice."""
    rng = np.random.default_rng(axis)
    a = rng.standard_normal((3, 4, 5)).astype(np.float32)
    b = a.copy()
    b[rng.random(a.shape) < 0.3] += 0.5
    b.flat[7] = np.nan
    start = (2, 4, 6)
    full = (8, 9, 11)
    got = block_stats(a, b, Policy(atol=0.1, layer_axis=axis), start, full)
    whole_a = np.zeros(full, np.float32)
    whole_b = np.zeros(full, np.float32)
    box = tuple(slice(s, s + n) for s, n in zip(start, a.shape))
    whole_a[box], whole_b[box] = a, b
    placed = expected_stats(whole_a, whole_b, atol=0.1)  # indices in the whole array
    alone = expected_stats(a, b, atol=0.1)  # count and RMS over the block's own values
    placed |= {k: alone[k] for k in ("count", "rms_diff")}
    assert_stats_match(stats_json(got.result(full)), placed)
    layers = stats_json(got.result(full))["layers"]
    assert [x["layer"] for x in layers] == [start[axis] + k for k in range(a.shape[axis])]
    for k, x in enumerate(layers):
        exp = expected_stats(np.take(a, k, axis), np.take(b, k, axis), atol=0.1)
        keys = ("count", "mismatches", "max_abs_diff")
        assert [x[k] for k in keys] == [exp[k] for k in keys]
        assert x["rms_diff"] == pytest.approx(exp["rms_diff"], rel=1e-12)
