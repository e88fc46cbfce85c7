"""Per-block statistics of a - b, mergeable in any order with the same result.

Semantics (the README documents them; tests reproduce each number with numpy on whole arrays):

* Values are compared in float64 (complex128 if either side is complex); integers, bools and PRNG
  key data compare exactly (`a != b`), as do `scalar` leaves.
* Floats: a position is a mismatch unless `np.isclose(a, b, rtol, atol, equal_nan)`, i.e.
  `|a - b| <= atol + rtol * |b|` with b from the second checkpoint, infinities equal only to
  themselves, and NaN vs NaN equal unless `--nan-unequal`. NaN vs a number is always a mismatch.
* `d = |a - b|`, taken as 0 where a == b (so +inf vs +inf is 0) and undefined where either side is
  NaN. `max_abs_diff` / `rms_diff` are over the positions where d is defined; `max_rel_diff` is
  d / |b| (0 where d == 0, inf where b == 0 != a). Indices are the first position (C order) holding
  the maximum, and are null when the maximum is 0.
* `identical` is bit-for-bit equality of the stored values (same dtype, same bytes).

Merging keeps the per-block sums of squares and adds them with `math.fsum` at the end: exactly
rounded, hence independent of the order in which threads or workers finish.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .datatypes import LayerStats, ValueStats
from .plan import DEFAULT_TILE
from .reader.formats.dtypes import compute_dtype, is_exact

#: Bytes compared first by `_bytes_equal`: differing blocks almost always differ early.
EQUAL_PREFIX_BYTES = 4096


@dataclass(frozen=True)
class Policy:
    atol: float = 0.0
    rtol: float = 0.0
    nan_equal: bool = True
    exact: bool = False  # compare exactly (ints, bools, PRNG keys, scalars)
    #: Axis of stacked layers: also keep statistics per index along it (`LeafStats.layers`).
    layer_axis: int | None = None


@dataclass
class LeafStats:
    """Mergeable accumulator for one leaf."""

    count: int = 0
    mismatches: int = 0
    max_abs: float = 0.0
    max_abs_index: int = -1  # flat C-order index into the whole array; -1 while max is 0
    #: The two values (as compared: float64, complex128, or the integer) at `max_abs_index`.
    max_abs_values: tuple[Any, Any] | None = None
    max_rel: float = 0.0
    max_rel_index: int = -1
    sq_sums: list[float] = field(default_factory=list)
    n_defined: int = 0  # positions where d is defined (neither side NaN)
    nan_a: int = 0
    nan_b: int = 0
    inf_a: int = 0
    inf_b: int = 0
    nan_mismatch: int = 0  # NaN on exactly one side
    identical: bool = True
    shortcut_chunks: int = 0
    shortcut_bytes: int = 0
    #: Some chunks were settled by the equal-bytes shortcut without decoding: their NaN/Inf are
    #: not counted, so the NaN/Inf counts are reported as unknown (null).
    nan_unknown: bool = False
    #: Per index along `Policy.layer_axis`: the statistics of that layer's slice (same semantics).
    layers: dict[int, LeafStats] | None = None

    def merge(self, o: LeafStats) -> LeafStats:
        """Combine with another accumulator in place (commutative and associative)."""
        self.count += o.count
        self.mismatches += o.mismatches
        best = _better(self.max_abs, self.max_abs_index, o.max_abs, o.max_abs_index)
        if best != (self.max_abs, self.max_abs_index):
            self.max_abs_values = o.max_abs_values
        self.max_abs, self.max_abs_index = best
        self.max_rel, self.max_rel_index = _better(self.max_rel, self.max_rel_index, o.max_rel, o.max_rel_index)
        self.sq_sums.extend(o.sq_sums)
        self.n_defined += o.n_defined
        self.nan_a += o.nan_a
        self.nan_b += o.nan_b
        self.inf_a += o.inf_a
        self.inf_b += o.inf_b
        self.nan_mismatch += o.nan_mismatch
        self.identical = self.identical and o.identical
        self.shortcut_chunks += o.shortcut_chunks
        self.shortcut_bytes += o.shortcut_bytes
        self.nan_unknown = self.nan_unknown or o.nan_unknown
        if o.layers is not None:
            if self.layers is None:
                self.layers = {}
            for k, v in o.layers.items():
                if k in self.layers:
                    self.layers[k].merge(v)
                else:
                    self.layers[k] = LeafStats().merge(v)
        return self

    @property
    def rms(self) -> float:
        if not self.n_defined:
            return 0.0
        return math.sqrt(math.fsum(self.sq_sums) / self.n_defined)

    @property
    def rms_reported(self) -> float | None:
        """`rms`, or None when it cannot be known: chunks settled by equal bytes were not decoded,
        so their NaN positions (which do not count towards the mean) are unknown; that matters only
        when some difference is nonzero (else the rms is 0 whatever the count)."""
        if self.nan_unknown and math.fsum(self.sq_sums) > 0:
            return None
        return self.rms

    def result(self, shape: tuple[int, ...], **found: Any) -> ValueStats:
        """The report's record of these statistics for an array of `shape`; `found` sets what the
        driver adds (`max_abs_diff_allowed`, `streamed`, `blocks`, `read_amplification`)."""

        def idx(flat: int) -> tuple[int, ...] | None:
            if flat < 0:
                return None
            return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()

        unknown = self.nan_unknown
        layers = None
        if self.layers is not None:
            layers = tuple(
                LayerStats(k, v.count, v.mismatches, v.max_abs, v.rms_reported) for k, v in sorted(self.layers.items())
            )
        return ValueStats(
            count=self.count,
            mismatches=self.mismatches,
            max_abs_diff=self.max_abs,
            max_abs_diff_index=idx(self.max_abs_index),
            max_abs_diff_values=None if self.max_abs_values is None else tuple(self.max_abs_values),
            max_rel_diff=self.max_rel,
            max_rel_diff_index=idx(self.max_rel_index),
            rms_diff=self.rms_reported,
            nan_a=None if unknown else self.nan_a,
            nan_b=None if unknown else self.nan_b,
            inf_a=None if unknown else self.inf_a,
            inf_b=None if unknown else self.inf_b,
            nan_mismatch=self.nan_mismatch,
            identical=self.identical,
            shortcut_chunks=self.shortcut_chunks,
            shortcut_bytes=self.shortcut_bytes,
            layers=layers,
            **found,
        )


def _better(v1: float, i1: int, v2: float, i2: int) -> tuple[float, int]:
    """The larger maximum; on a tie the smaller flat index (what np.argmax would return)."""
    if v2 > v1 or (v2 == v1 and i2 >= 0 and (i1 < 0 or i2 < i1)):
        return v2, i2
    return v1, i1


def block_stats(
    a: np.ndarray,
    b: np.ndarray,
    policy: Policy,
    start: tuple[int, ...] = (),
    full_shape: tuple[int, ...] | None = None,
    tile: int = DEFAULT_TILE,
) -> LeafStats:
    """Statistics of one block; `start` places it in the whole array for the reported indices."""
    if a.shape != b.shape:
        raise ValueError(f"block shapes differ: {a.shape} vs {b.shape}")
    axis = policy.layer_axis
    if axis is None or not 0 <= axis < a.ndim:
        return _block_stats(a, b, policy, start, full_shape, tile)
    # Per layer: each layer's slice of this block, placed in the whole array, compared once; the
    # block's statistics are their merge (merging is exact and order-independent), so each value
    # is compared once, not once for the block and once for its layer.
    inner = replace(policy, layer_axis=None)
    at = tuple(start) if start else (0,) * a.ndim
    whole = tuple(a.shape) if full_shape is None else tuple(full_shape)
    out, layers = LeafStats(), {}
    for k in range(a.shape[axis]):
        cut = (slice(None),) * axis + (slice(k, k + 1),)
        place = at[:axis] + (at[axis] + k,) + at[axis + 1 :]
        layers[at[axis] + k] = layer = _block_stats(a[cut], b[cut], inner, place, whole, tile)
        out.merge(layer)
    out.layers = layers
    return out


def layers_settled(n_layers: int, first: int, per_layer: int) -> dict[int, LeafStats]:
    """Layer statistics of a block settled by equal stored bytes: no differences in any layer."""
    return {first + k: LeafStats(count=per_layer, n_defined=per_layer) for k in range(n_layers)}


def _block_stats(
    a: np.ndarray,
    b: np.ndarray,
    policy: Policy,
    start: tuple[int, ...],
    full_shape: tuple[int, ...] | None,
    tile: int,
) -> LeafStats:
    full_shape = tuple(a.shape) if full_shape is None else tuple(full_shape)
    start = tuple(start) if start else (0,) * a.ndim
    fa = np.ascontiguousarray(a).reshape(-1)
    fb = np.ascontiguousarray(b).reshape(-1)
    out = LeafStats(count=fa.size)
    out.identical = a.dtype == b.dtype and _bytes_equal(fa, fb)
    int_like = is_exact(a.dtype.name) and is_exact(b.dtype.name)
    exact = policy.exact or int_like
    cdt = compute_dtype(a.dtype.name, b.dtype.name)
    if out.identical and int_like:
        out.n_defined = fa.size
        return out
    # A 64-bit integer against a float (an allow_dtype rule): float64 cannot hold the integer.
    fast = not exact and cdt == np.float64 and not _wide_int_vs_float(a.dtype, b.dtype)
    for lo in range(0, fa.size, tile):
        ta = fa[lo : lo + tile]
        tb = fb[lo : lo + tile]
        if out.identical:
            # Equal bytes: no differences; only NaN/Inf counts remain to be taken.
            _count_special(ta, cdt, policy, out)
            continue
        where = _Placement(lo, tuple(a.shape), start, full_shape)
        if fast and _tile_fast(ta, tb, policy, out, where):
            continue
        _tile_stats(ta, tb, policy, exact, cdt, out, where)
    return out


def _bytes_equal(fa: np.ndarray, fb: np.ndarray) -> bool:
    """Bitwise equality; a prefix first (EQUAL_PREFIX_BYTES), since differing blocks almost always differ early."""
    if fa.dtype.itemsize != fb.dtype.itemsize:
        return False
    ba = fa.view(np.uint8)
    bb = fb.view(np.uint8)
    if not np.array_equal(ba[:EQUAL_PREFIX_BYTES], bb[:EQUAL_PREFIX_BYTES]):
        return False
    return bool(np.array_equal(ba, bb))


#: Smallest normal float64. Where x*x is at least this (and finite), fl(x*x) is strictly increasing
#: in x: the exact squares of neighbouring doubles lie 2x*ulp(x) apart, more than the rounding can
#: close. So when the largest square exceeds it, every element holding that square holds the
#: largest |d| (smaller ones square to less, or, below it, to at most _TINY itself).
_TINY = float(np.finfo(np.float64).tiny)
#: When bounds leave at most 1/_FEW of a tile's elements undecided (the tolerance test) or possibly
#: holding the largest ratio (the relative difference), only those are computed one by one.
_FEW = 16
#: Largest float64: a ratio d/|b| overflows to inf where |b| < |d| / _MAX.
_MAX = float(np.finfo(np.float64).max)
#: Dtypes whose |b| numpy takes natively; others are widened to float64 first.
_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


class _Scratch(threading.local):
    """Per-thread work buffers, reused across tiles: no allocation (and no page faults) in the
    hot loop."""

    def __init__(self) -> None:
        self.n = 0

    def get(self, n: int) -> tuple[np.ndarray, ...]:
        """(xa, xb, d, r) float64, t32 float32, m bool: n elements each."""
        if n > self.n:
            self.xa = np.empty(n, np.float64)
            self.xb = np.empty(n, np.float64)
            self.d = np.empty(n, np.float64)
            self.r = np.empty(n, np.float64)
            self.t32 = np.empty(n, np.float32)
            self.m = np.empty(n, np.bool_)
            self.n = n
        return self.xa[:n], self.xb[:n], self.d[:n], self.r[:n], self.t32[:n], self.m[:n]


_SCRATCH = _Scratch()


def _as_float64(x: np.ndarray, buf: np.ndarray) -> np.ndarray:
    if x.dtype == np.float64:
        return x
    np.copyto(buf, x, casting="unsafe")  # exact: every float dtype we read widens into float64
    return buf


def _at_least(c: float, dtype: np.dtype) -> np.floating:
    """The smallest value of `dtype` >= c: `x <= it` keeps every x <= c, where comparing a float32
    array with the Python float itself would round c to float32, possibly below c."""
    with np.errstate(over="ignore"):  # c beyond the dtype's range: inf, still >= c
        v: np.floating = dtype.type(c)
    if float(v) < c:
        v = np.nextafter(v, dtype.type(np.inf))
    return v


def _tile_fast(
    ta: np.ndarray,
    tb: np.ndarray,
    policy: Policy,
    out: LeafStats,
    where: _Placement,
) -> bool:
    """Real floats with no NaN or Inf anywhere: a handful of cheap passes over cached buffers.

    Returns False, having recorded nothing, when the tile holds NaN or Inf (the sum of squares is
    then not finite); `_tile_stats` handles those tiles. Every number equals the slow path's:

    * the largest |d| is found from the squares, which keep its order (`_TINY`);
    * the tolerance test `|d| > atol + rtol*|b|` is settled by bounds for most elements and taken
      exactly for the others (`_mismatches`);
    * the largest d/|b| is taken only where |b| is small enough to beat the best ratio known
      (`_relative`).
    """
    t64, xb, d, r, t32, m = _SCRATCH.get(ta.size)
    with np.errstate(all="ignore"):
        # Explicit upcasts into cached buffers beat casting inside each ufunc (buffered loops).
        xb = _as_float64(tb, xb)
        np.subtract(_as_float64(ta, t64), xb, out=d)  # a's upcast is not needed after this: t64 reuses it
        # Not np.dot: OpenBLAS would spin up its own threads on every call, doubling the CPU
        # time of a threaded diff. square + pairwise sum is single-threaded and still cheap.
        np.square(d, out=r)
        sq = float(np.add.reduce(r))
        if not math.isfinite(sq):
            return False
        out.n_defined += d.size
        out.sq_sums.append(sq)
        i = int(np.argmax(r))
        if r[i] > _TINY:
            dm = abs(float(d[i]))
        else:  # the largest difference is below 2**-511 or so: squares underflow, take |d| itself
            np.abs(d, out=t64)
            i = int(np.argmax(t64))
            dm = float(t64[i])
        if dm == 0:
            return True
        if dm >= out.max_abs:  # else this tile's maximum cannot change the block's
            _record_max(out, dm, where.index(i), float(ta[i]), float(tb[i]))
        # |b|, in b's own dtype when numpy handles it natively (exact: abs only drops the sign)
        if tb.dtype in _NATIVE:
            t = np.abs(tb, out=t32 if tb.dtype == np.float32 else t64)
        else:
            t = np.abs(xb, out=t64)
        out.mismatches += _mismatches(policy, d, r, t, m, dm)
        _relative(out, d, r, t, m, dm, abs(float(tb[i])), where)
    return True


def _mismatches(policy: Policy, d: np.ndarray, r: np.ndarray, t: np.ndarray, m: np.ndarray, dm: float) -> int:
    """How many |d| > atol + rtol*|b| (d signed, r = d*d, t = |b|; r and d may be overwritten)."""
    atol, rtol = policy.atol, policy.rtol
    if atol == 0 and rtol == 0:
        np.not_equal(d, 0.0, out=m)
        return int(np.count_nonzero(m))
    if dm <= atol:
        return 0  # every |a-b| is within atol <= atol + rtol*|b|
    n = d.size
    # The threshold grows with |b| (rounding is monotonic), so none exceeds hi, the one at max|b|:
    # r > fl(hi*hi) implies |d| > hi, a mismatch for sure. Likewise r < fl(atol*atol) implies
    # |d| < atol, no mismatch. The others are open: tested one by one when few.
    hi = atol + rtol * float(np.maximum.reduce(t))
    np.less_equal(r, hi * hi, out=m)
    below = int(np.count_nonzero(m))  # n - below are mismatches for sure
    open_ = below
    if open_ * _FEW > n and atol * atol > 0:
        m &= r >= atol * atol
        open_ = int(np.count_nonzero(m))
    if open_ * _FEW <= n:
        at = m.nonzero()[0]
        thr = np.add(np.multiply(t[at].astype(np.float64), rtol), atol)
        return n - below + int(np.count_nonzero(np.abs(d[at]) > thr))
    np.multiply(t, rtol, out=r, dtype=np.float64)  # dtype: never multiply in float32
    np.add(r, atol, out=r)
    np.abs(d, out=d)  # d is signed up to here
    np.greater(d, r, out=m)
    return int(np.count_nonzero(m))


def _relative(
    out: LeafStats,
    d: np.ndarray,
    r: np.ndarray,
    t: np.ndarray,
    m: np.ndarray,
    dm: float,
    b_at: float,
    where: _Placement,
) -> None:
    """Largest d/|b| of the tile, first position on ties (t = |b|; d and r may be overwritten).

    A ratio of at least q needs |b| <= |d|/q <= dm/q: with q the best ratio known (this block's so
    far, or the one where |d| is largest), only elements under that threshold on |b| can hold it.
    """
    k = int(np.argmin(t))  # the smallest |b| usually holds the largest ratio: a good first bound
    bk = float(t[k])
    seed = max(dm / b_at if b_at else math.inf, abs(float(d[k])) / bk if bk else (math.inf if d[k] else 0.0))
    best = max(out.max_rel, seed)
    # An infinite best (b == 0, or a ratio that overflowed) is reached by ratios that overflow too:
    # those where |b| <= |d| / the largest double, not only those where b == 0.
    limit = dm / best if best < math.inf else dm / _MAX
    if best > 0 and math.isfinite(limit):
        np.less_equal(t, _at_least(limit * (1 + 2.0**-40), t.dtype), out=m)  # margin: rounding
        few = int(np.count_nonzero(m))
        if few == 0:
            return  # nothing here reaches the block's best ratio
        if few * _FEW <= d.size:
            at = _positions(m, few)
            q = np.abs(d[at]) / t[at].astype(np.float64)
            q[np.isnan(q)] = 0.0  # 0/0 where a == b == 0
            j = int(np.argmax(q))
            _keep_rel(out, float(q[j]), where, int(at[j]))
            return
    np.abs(d, out=d)
    np.divide(d, t, out=r, dtype=np.float64)  # 0/0 -> nan where a == b == 0
    j = int(np.argmax(r))  # argmax stops at the first nan: one pass when there is none
    if np.isnan(r[j]):
        rmax = float(np.fmax.reduce(r))  # fmax ignores the 0/0 positions
        np.equal(r, rmax, out=m)
        j = int(np.argmax(m))
    _keep_rel(out, float(r[j]), where, j)


def _positions(m: np.ndarray, count: int) -> np.ndarray:
    """Where m is True, ascending; `count` of them. A handful are found by argmax (which stops at
    the first True, and skips along the mask without writing), more by nonzero (a full pass)."""
    if count > 8:
        return m.nonzero()[0]
    at = np.empty(count, np.intp)
    lo = 0
    for k in range(count):
        lo += int(np.argmax(m[lo:]))
        at[k] = lo
        lo += 1
    return at


def _keep_rel(out: LeafStats, q: float, where: _Placement, j: int) -> None:
    if q > 0 and q >= out.max_rel:
        out.max_rel, out.max_rel_index = _better(out.max_rel, out.max_rel_index, q, where.index(j))


def _count_special(ta: np.ndarray, cdt: np.dtype, policy: Policy, out: LeafStats) -> None:
    """Equal bytes on both sides: only NaN/Inf counts remain (and NaN mismatches under --nan-unequal)."""
    if is_exact(ta.dtype.name):
        out.n_defined += ta.size
        return
    with np.errstate(all="ignore"):
        xa = ta.astype(cdt)
    na = int(np.count_nonzero(np.isnan(xa)))
    ia = int(np.count_nonzero(np.isinf(xa)))
    out.nan_a += na
    out.nan_b += na
    out.inf_a += ia
    out.inf_b += ia
    out.n_defined += ta.size - na
    if not policy.nan_equal:
        out.mismatches += na


def _tile_stats(
    ta: np.ndarray,
    tb: np.ndarray,
    policy: Policy,
    exact: bool,
    cdt: np.dtype,
    out: LeafStats,
    where: _Placement,
) -> None:
    with np.errstate(all="ignore"):  # inf/nan arithmetic is expected here, not an error
        xa = ta.astype(cdt)
        xb = tb.astype(cdt)
        nan_a = np.isnan(xa)
        nan_b = np.isnan(xb)
        any_nan = nan_a | nan_b
        if _wide_int_vs_float(ta.dtype, tb.dtype):
            eq, d = _int_float_exact(ta, tb)
        else:
            # Exact kinds compare natively: float64 cannot tell int64 values above 2**53 apart.
            native = exact and (ta.dtype == tb.dtype or (ta.dtype.kind in "iub" and tb.dtype.kind in "iub"))
            eq = (ta == tb) if native else (xa == xb)
            wide = _wide_int_abs_diff(ta, tb)
            d = np.abs(xa - xb) if wide is None else wide
        d[eq] = 0.0
        d[any_nan] = np.nan
        absb = np.abs(xb)
        if exact:
            close = eq
        else:
            finite = np.isfinite(xa) & np.isfinite(xb)
            close = eq | (finite & (d <= policy.atol + policy.rtol * absb))
        if policy.nan_equal:
            close |= nan_a & nan_b
        out.mismatches += int(close.size - np.count_nonzero(close))
        na = int(np.count_nonzero(nan_a))
        nb = int(np.count_nonzero(nan_b))
        out.nan_a += na
        out.nan_b += nb
        out.inf_a += int(np.count_nonzero(np.isinf(xa)))
        out.inf_b += int(np.count_nonzero(np.isinf(xb)))
        out.nan_mismatch += int(np.count_nonzero(nan_a != nan_b))
        defined = ~any_nan
        n_def = int(np.count_nonzero(defined))
        out.n_defined += n_def
        if n_def == 0:
            return
        dz = np.where(defined, d, -1.0)  # -1 never wins a max; d >= 0 elsewhere
        i = int(np.argmax(dz))
        if dz[i] > 0:
            _record_max(
                out,
                float(dz[i]),
                where.index(i),
                _value(ta, xa, i, exact),
                _value(tb, xb, i, exact),
            )
        out.sq_sums.append(float(np.sum(np.square(d[defined]))))
        rel = np.where(dz > 0, dz / absb, np.where(defined, 0.0, -1.0))
        rel[np.isnan(rel)] = np.inf  # inf / inf: an infinite difference relative to an infinite value
        j = int(np.argmax(rel))
        if rel[j] > 0:
            out.max_rel, out.max_rel_index = _better(out.max_rel, out.max_rel_index, float(rel[j]), where.index(j))


def _wide_int_abs_diff(ta: np.ndarray, tb: np.ndarray) -> np.ndarray | None:
    """|a - b| of 64-bit integers, computed exactly and then rounded once to float64; None for
    every other pair of dtypes, whose float64 upcasts (exact below 2**53) already subtract exactly.

    Subtracting the float64 upcasts would lose the difference itself: 2**62 and 2**62 + 1 are the
    same float64, so |a-b| would read 0 where the values differ by 1.
    """
    ka, kb = ta.dtype.kind, tb.dtype.kind
    if ka not in "iu" or kb not in "iu" or max(ta.dtype.itemsize, tb.dtype.itemsize) < 8:
        return None
    if ka == kb:
        # Same signedness: widen to the 64-bit type of that kind, subtract the smaller from the
        # larger in uint64 (mod 2**64), which is exact because the true difference is < 2**64.
        wide = np.int64 if ka == "i" else np.uint64
        xa, xb = ta.astype(wide, copy=False), tb.astype(wide, copy=False)
        ua, ub = xa.view(np.uint64), xb.view(np.uint64)
        du = np.where(xa >= xb, ua - ub, ub - ua)
        return du.astype(np.float64)
    # int64 against uint64 (rare): the difference may need 65 bits; Python integers hold it.
    big = np.abs(ta.astype(object) - tb.astype(object))
    wide_diff: np.ndarray = big.astype(np.float64)
    return wide_diff


def _wide_int_vs_float(da: np.dtype, db: np.dtype) -> bool:
    """A 64-bit integer side against a real float side: the one pairing whose float64 upcast
    loses values (2**62 + 1 becomes 2**62) while the pair is not compared as integers."""
    kinds = {da.kind, db.kind}
    wide = (da.kind in "iu" and da.itemsize == 8) or (db.kind in "iu" and db.itemsize == 8)
    return wide and "f" in kinds and kinds <= {"i", "u", "f"}


def _int_float_exact(ta: np.ndarray, tb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a == b, |a - b|) for a 64-bit integer against a float, both exact: equality holds only
    for an integral float equal to the integer, and the difference is taken in extended precision
    (its 64-bit significand holds every int64, uint64 and float64 exactly), so a difference of 1
    at 2**62 is 1, not 0. Without extended precision, Python's exact rationals do it."""
    ti, tf = (ta, tb) if ta.dtype.kind in "iu" else (tb, ta)  # |a - b| and a == b are symmetric
    f = tf.astype(np.float64)
    lo, hi = (0.0, 2.0**64) if ti.dtype.kind == "u" else (-(2.0**63), 2.0**63)
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(f) & (f == np.floor(f)) & (f >= lo) & (f < hi)
    eq = integral & (np.where(integral, f, 0).astype(ti.dtype) == ti)
    if np.finfo(np.longdouble).nmant >= 63:
        d = np.abs(ti.astype(np.longdouble) - f.astype(np.longdouble)).astype(np.float64)
    else:
        from fractions import Fraction

        d = np.array(
            [float(abs(Fraction(int(i)) - Fraction(x))) if np.isfinite(x) else abs(x) for i, x in zip(ti.tolist(), f)],
            np.float64,
        ).reshape(f.shape)
    return eq, d


def _record_max(out: LeafStats, d: float, index: int, va: Any, vb: Any) -> None:
    best = _better(out.max_abs, out.max_abs_index, d, index)
    if best != (out.max_abs, out.max_abs_index):
        out.max_abs, out.max_abs_index = best
        out.max_abs_values = (va, vb)


def _value(t: np.ndarray, x: np.ndarray, i: int, exact: bool) -> Any:
    """A compared value as JSON can hold it: the integer itself for exact kinds (float64 would
    round int64 above 2**53, also when compared against a float), a float, or 'a+bj' text for complex."""
    if is_exact(t.dtype.name) and (exact or t.dtype.itemsize == 8):
        return bool(t[i]) if t.dtype == np.bool_ else int(t[i])
    v = x[i]
    if np.iscomplexobj(v):
        return str(complex(v))
    return float(v)


@dataclass(frozen=True, slots=True)
class _Placement:
    """Where a tile sits: at flat `offset` of a block of `block_shape` placed at `start` in an
    array of `full_shape`. Statistics report indices in the whole array."""

    offset: int
    block_shape: tuple[int, ...]
    start: tuple[int, ...]
    full_shape: tuple[int, ...]

    def index(self, in_tile: int) -> int:
        """Flat index in the whole array of a flat index within the tile (C order; in Python
        integers: np.unravel_index and np.ravel_multi_index cost microseconds a call, per tile)."""
        if not self.block_shape:
            return 0
        rest = self.offset + in_tile
        local = []
        for n in reversed(self.block_shape):
            rest, k = divmod(rest, n)
            local.append(k)
        flat = 0
        for s, k, n in zip(self.start, reversed(local), self.full_shape):
            flat = flat * n + int(s) + k
        return flat
