"""Property tests: random trees saved with real orbax, perturbed, diffed; every number equals numpy's.

Each example saves A and B with independently drawn layouts (OCDBT or not, zarr v2 or v3, different
chunk sizes, so the two chunk grids need not match) and streams them with a tiny block size so that
blocks split chunks and chunks split blocks: chunks over the block budget are stream-decoded from
their stored bytes in slabs of rows. The equal-bytes shortcut is on or off at random.
"""

from __future__ import annotations

import tempfile

import ml_dtypes
import numpy as np
from helpers import save
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_stats_match, expected_stats

import streamdiff
from streamdiff.datatypes import format_path

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int32, np.int8, np.bool_]
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0]


@st.composite
def leaf_pairs(draw):
    shape = tuple(draw(st.lists(st.integers(1, 24), min_size=0, max_size=3)))
    dt = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    a = np.asarray(rng.standard_normal(shape) * 10)
    if np.dtype(dt).kind == "f" or dt is ml_dtypes.bfloat16:
        a = np.asarray(a.astype(dt))
        if a.size and draw(st.booleans()):
            a.reshape(-1)[rng.integers(0, a.size, 3)] = draw(st.sampled_from(SPECIALS))
    elif dt is np.bool_:
        a = np.asarray(a > 0)
    else:
        a = np.asarray(a.astype(dt))
    b = a.copy()
    mode = draw(st.sampled_from(["same", "noise", "few", "special"]))
    if b.size and mode != "same":
        flat = b.reshape(-1)
        idx = rng.integers(0, b.size, max(1, b.size // (1 if mode == "noise" else 20)))
        if dt is np.bool_:
            flat[idx] = ~flat[idx]
        elif np.dtype(dt).kind in "iu":
            flat[idx] = flat[idx] + 1
        elif mode == "special":
            flat[idx] = draw(st.sampled_from(SPECIALS))
        else:
            scale = draw(st.sampled_from([1e-7, 1e-3, 1.0]))
            with np.errstate(all="ignore"):
                flat[idx] = (flat[idx].astype(np.float64) + scale * rng.standard_normal(idx.size)).astype(dt)
    return a, b


@st.composite
def trees(draw):
    names = draw(
        st.lists(
            st.sampled_from(["w", "b", "kernel", "with.dot", "x/y", "0", "emb"]), min_size=1, max_size=4, unique=True
        )
    )
    ta, tb = {}, {}
    for n in names:
        a, b = draw(leaf_pairs())
        if draw(st.booleans()):
            ta.setdefault("layer", {})[n], tb.setdefault("layer", {})[n] = a, b
        else:
            ta[n], tb[n] = a, b
    return ta, tb


layouts = st.fixed_dictionaries(
    {
        "use_ocdbt": st.booleans(),
        "use_zarr3": st.booleans(),
        "chunk": st.sampled_from([None, 64, 256, 1000]),
    }
)


def flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from flat(v, prefix + (k,))
        else:
            yield prefix + (k,), v


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    pair=trees(),
    la=layouts,
    lb=layouts,
    atol=st.sampled_from([0.0, 1e-6, 1e-2]),
    rtol=st.sampled_from([0.0, 1e-5]),
    nan_equal=st.booleans(),
    block_bytes=st.sampled_from([8, 100, 4096, None]),
    jobs=st.sampled_from([1, 3]),
    shortcut=st.booleans(),
)
def test_saved_trees_diff_equals_numpy(pair, la, lb, atol, rtol, nan_equal, block_bytes, jobs, shortcut):
    ta, tb = pair
    with tempfile.TemporaryDirectory() as tmp:
        save(f"{tmp}/a", ta, la["chunk"], use_ocdbt=la["use_ocdbt"], use_zarr3=la["use_zarr3"])
        save(f"{tmp}/b", tb, lb["chunk"], use_ocdbt=lb["use_ocdbt"], use_zarr3=lb["use_zarr3"])
        r = streamdiff.diff(
            f"{tmp}/a",
            f"{tmp}/b",
            atol=atol,
            rtol=rtol,
            nan_equal=nan_equal,
            block_bytes=block_bytes,
            jobs=jobs,
            shortcut=shortcut,
        )
    got = {x.path: x for x in r.leaves}
    expected_paths = {p for p, _ in flat(ta)}
    assert set(got) == expected_paths
    any_diff = False
    for path, a in flat(ta):
        b = dict(flat(tb))[path]
        x = got[path]
        scalar = a.ndim == 0  # numpy 0-d arrays are saved as scalars and compare exactly
        exp = expected_stats(a, b, atol, rtol, nan_equal, exact=scalar)
        assert_stats_match(x.stats, exp, format_path(path))
        assert x.status == ("different" if exp["mismatches"] else "equal"), format_path(path)
        any_diff |= bool(exp["mismatches"])
    assert r.exit_code == (1 if any_diff else 0)
