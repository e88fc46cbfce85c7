"""The statistics streamdiff reports, computed by numpy on whole in-memory arrays.

Independent of streamdiff's block/tile code: no blocks, no merging, no index arithmetic beyond
numpy's own argmax / unravel_index. Tests compare every reported number against these.
"""

from __future__ import annotations

import numpy as np


def _is_exact(dt: np.dtype) -> bool:
    return dt.name == "bool" or dt.name.startswith(("int", "uint"))


def expected_stats(a, b, atol=0.0, rtol=0.0, nan_equal=True, exact=False) -> dict:
    a = np.asarray(a)
    b = np.asarray(b)
    cdt = np.complex128 if "complex" in (a.dtype.name[:7], b.dtype.name[:7]) else np.float64
    xa = a.astype(cdt).reshape(-1)
    xb = b.astype(cdt).reshape(-1)
    nan_a, nan_b = np.isnan(xa), np.isnan(xb)
    exact = exact or (_is_exact(a.dtype) and _is_exact(b.dtype))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if exact:
            eq = (a == b).reshape(-1) if a.dtype == b.dtype else xa == xb
            close = eq | (nan_a & nan_b) if nan_equal else eq
        else:
            close = np.isclose(xa, xb, rtol=rtol, atol=atol, equal_nan=nan_equal)
        defined = ~(nan_a | nan_b)
        d = np.where(xa == xb, 0.0, np.abs(xa - xb))
        dz = np.where(defined, d, -1.0)
        absb = np.abs(xb)
        rel = np.where(dz > 0, dz / absb, np.where(defined, 0.0, -1.0))
        rel[np.isnan(rel)] = np.inf
    shape = a.shape

    def where_max(v):
        if v.size == 0 or v.max() <= 0:
            return 0.0, None
        i = int(np.argmax(v))
        return float(v[i]), [int(k) for k in np.unravel_index(i, shape)]

    max_abs, max_abs_idx = where_max(dz)
    values = None
    if max_abs_idx is not None:
        k = tuple(max_abs_idx)
        if exact and _is_exact(a.dtype) and _is_exact(b.dtype):
            values = [a[k].item(), b[k].item()]
        else:
            values = [v.astype(cdt).item() for v in (a[k], b[k])]
            values = [str(v) if isinstance(v, complex) else v for v in values]
    max_rel, max_rel_idx = where_max(rel)
    n_def = int(defined.sum())
    rms = float(np.sqrt(np.sum(d[defined] ** 2) / n_def)) if n_def else 0.0
    return {
        "count": int(a.size),
        "mismatches": int((~close).sum()),
        "max_abs_diff": max_abs,
        "max_abs_diff_index": max_abs_idx,
        "max_abs_diff_values": values,
        "max_rel_diff": max_rel,
        "max_rel_diff_index": max_rel_idx,
        "rms_diff": rms,
        "nan_a": int(nan_a.sum()),
        "nan_b": int(nan_b.sum()),
        "inf_a": int(np.isinf(xa).sum()),
        "inf_b": int(np.isinf(xb).sum()),
        "nan_mismatch": int((nan_a != nan_b).sum()),
        "identical": a.dtype == b.dtype and a.tobytes() == b.tobytes(),
    }


UNKNOWN_WITH_SHORTCUT = {"nan_a", "nan_b", "inf_a", "inf_b"}


def assert_stats_match(got: dict, exp: dict, where: str = "") -> None:
    """Exact for counts, maxima and indices; 1e-12 relative for the RMS (a sum in another order)."""
    for k, v in exp.items():
        g = got[k]
        if g is None and k in UNKNOWN_WITH_SHORTCUT and got.get("shortcut_chunks"):
            continue  # settled by equal stored bytes: NaN/Inf not counted, reported as unknown
        if isinstance(g, str):  # JSON spells inf/nan as strings
            g = float(g)
        if k == "max_abs_diff_values" and g is not None:
            g = [float(x) if x in ("inf", "-inf") else x for x in g]
        if k == "rms_diff":
            assert np.isclose(g, v, rtol=1e-12, atol=0) or (np.isinf(g) and np.isinf(v)), (where, k, g, v)
        else:
            assert g == v, (where, k, g, v)
