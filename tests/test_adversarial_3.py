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
