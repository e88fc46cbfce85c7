"""The oracle: the statistics streamdiff reports, written from the definitions in README.md
("Semantics": tolerance, NaN and infinity, statistics per leaf), on whole in-memory arrays.

Written without looking at streamdiff's statistics code, so the two can disagree. No blocks, no
merging, no sentinel values: every rule is a boolean mask over the flattened arrays, and positions
come from numpy's own argmax (first occurrence, C order) and unravel_index.
"""

from __future__ import annotations

import numpy as np


def _exact_dtype(dt: np.dtype) -> bool:
    """Integers and bools compare exactly (README: "Exact comparison ... applies to integers, bools")."""
    return dt.kind in "biu" or dt.name.startswith(("int", "uint"))  # ml_dtypes int4/uint4 have kind 'V'


def _largest(values: np.ndarray, where: np.ndarray, shape: tuple[int, ...]) -> tuple[float, list[int] | None]:
    """Largest of `values` over the positions in `where`, and the first (C order) position holding it;
    (0.0, None) when there is no such position or the largest value is 0 (README: index `null`)."""
    positions = np.flatnonzero(where)
    if positions.size == 0:
        return 0.0, None
    candidates = values[positions]
    k = int(np.argmax(candidates))
    if candidates[k] == 0:
        return 0.0, None
    return float(candidates[k]), [int(i) for i in np.unravel_index(int(positions[k]), shape)]


def expected_stats(a, b, atol=0.0, rtol=0.0, nan_equal=True, exact=False) -> dict:
    """README's statistics of A against B (B is the reference side of the tolerance test).

    `exact=True` asks for the exact rule (`a != b`) whatever the dtype, as for saved scalars.
    """
    a, b = np.asarray(a), np.asarray(b)
    shape = a.shape
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) else np.float64
    x = a.astype(wide).reshape(-1)  # README: floats upcast to float64, complex to complex128
    y = b.astype(wide).reshape(-1)
    nan_x, nan_y = np.isnan(x), np.isnan(y)
    both_nan = nan_x & nan_y
    defined = ~(nan_x | nan_y)  # README: d is undefined where either side is NaN

    exact = exact or (_exact_dtype(a.dtype) and _exact_dtype(b.dtype))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # Equality in the stored dtypes for integers (float64 cannot tell 2**53 from 2**53 + 1).
        # numpy compares mixed integer dtypes (int64 vs uint64) exactly too.
        native = a.dtype == b.dtype or (a.dtype.kind in "iub" and b.dtype.kind in "iub")
        same = (a == b).reshape(-1) if exact and native else x == y
        diff = np.abs(x - y)
        if a.dtype.kind in "iu" and b.dtype.kind in "iu":
            # README: d = |a - b|, the true difference, then a float64 statistic. Python integers
            # hold it exactly; x - y would not (2**62 and 2**62 + 1 are the same float64).
            diff = np.abs(a.astype(object).reshape(-1) - b.astype(object).reshape(-1)).astype(np.float64)
        if exact:
            close = same.copy()
        else:
            finite = np.isfinite(x) & np.isfinite(y)
            within = ~(diff > atol + rtol * np.abs(y))  # README: differs when |a-b| > atol + rtol*|b|
            close = np.where(finite, within, same)  # README: +inf equals only +inf; NaN equals nothing...
        if nan_equal:
            close |= both_nan  # ...except, by default, NaN at the same position on both sides

        d = np.where(same, 0.0, diff)  # README: d = |a-b| taken as 0 where a == b
        abs_y = np.abs(y)
        # README: d / |b|, 0 where d is 0, inf where b == 0 != a. Not defined by the README: d and
        # |b| both infinite (b = +-inf, a != b); inf/inf is taken as inf here (see the lead's report).
        rel = np.zeros_like(d)
        nonzero = defined & (d > 0)
        rel[nonzero] = np.where(abs_y[nonzero] == 0, np.inf, d[nonzero] / abs_y[nonzero])
        rel[nonzero & np.isinf(d) & np.isinf(abs_y)] = np.inf

    max_abs, max_abs_index = _largest(d, defined, shape)
    max_rel, max_rel_index = _largest(rel, defined, shape)
    n_defined = int(defined.sum())
    # README: sqrt(mean(d^2)) over the defined positions; with none defined (all NaN) the README is
    # silent, and 0.0 is taken (nothing differs by a measurable amount).
    with np.errstate(over="ignore"):
        rms = float(np.sqrt(np.mean(d[defined] ** 2))) if n_defined else 0.0
    # The two stored values where |a-b| is largest, as the JSON shows them (ints stay ints).
    values = None
    if max_abs_index is not None:
        k = tuple(max_abs_index)
        if exact and _exact_dtype(a.dtype) and _exact_dtype(b.dtype):
            values = [a[k].item(), b[k].item()]
        else:
            values = [v.astype(wide).item() for v in (a[k], b[k])]
            values = [str(v) if isinstance(v, complex) else v for v in values]
    return {
        "count": int(a.size),
        "mismatches": int(np.count_nonzero(~close)),
        "max_abs_diff": max_abs,
        "max_abs_diff_index": max_abs_index,
        "max_abs_diff_values": values,
        "max_rel_diff": max_rel,
        "max_rel_diff_index": max_rel_index,
        "rms_diff": rms,
        "nan_a": int(nan_x.sum()),
        "nan_b": int(nan_y.sum()),
        "inf_a": int(np.isinf(x).sum()),
        "inf_b": int(np.isinf(y).sum()),
        "nan_mismatch": int(np.count_nonzero(nan_x != nan_y)),
        "identical": a.dtype == b.dtype and a.tobytes() == b.tobytes(),
    }


UNKNOWN_WITH_SHORTCUT = {"nan_a", "nan_b", "inf_a", "inf_b"}


def assert_stats_match(got, exp: dict, where: str = "") -> None:
    """Exact for counts, maxima and indices; 1e-12 relative for the RMS (a sum in another order).
    `got` is a leaf's statistics as the JSON writes them, or the `ValueStats` they are written from."""
    from streamdiff.datatypes import ValueStats
    from streamdiff.report import stats_json

    if isinstance(got, ValueStats):
        got = stats_json(got)
    for k, v in exp.items():
        g = got[k]
        if g is None and k in UNKNOWN_WITH_SHORTCUT and got.get("shortcut_chunks"):
            continue  # settled by equal stored bytes: NaN/Inf not counted, reported as unknown
        if g is None and k == "rms_diff" and got.get("shortcut_chunks"):
            # Unknown only where it could differ: some |a-b| > 0 and NaN positions of settled chunks uncounted.
            assert v > 0, (where, k, g, v)
            continue
        if isinstance(g, str):  # JSON spells inf/nan as strings
            g = float(g)
        if k == "max_abs_diff_values" and g is not None:
            g = [float(x) if x in ("inf", "-inf") else x for x in g]
        if k == "rms_diff":
            assert np.isclose(g, v, rtol=1e-12, atol=0) or (np.isinf(g) and np.isinf(v)), (where, k, g, v)
        else:
            assert g == v, (where, k, g, v)
