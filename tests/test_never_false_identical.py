"""The promise behind exit 0, as a property over every writer in `writers.WRITERS`.

A random small tree is saved twice by the same real writer: the two copies must diff with exit 0.
A third copy with one stored value changed (or one array zeroed, so that whole chunks become fill
value and are no longer stored) must never exit 0; it must exit 1 with that leaf different.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from writers import WRITERS

import streamdiff

NAMES = ["model/layer_0/kernel", "model/0", "bias", "emb"]


@st.composite
def trees_and_change(draw):
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    tree = {}
    for n in names:
        shape = tuple(draw(st.lists(st.integers(1, 6), max_size=2)))
        dt = draw(st.sampled_from([np.float32, np.int32]))
        tree[n] = rng.integers(-2, 3, size=shape).astype(dt)  # small ints: whole zero chunks happen
    target = draw(st.sampled_from(names))
    changed = {k: v.copy() for k, v in tree.items()}
    a = changed[target]
    if draw(st.booleans()) and a.any():
        a[...] = 0  # every chunk becomes fill value: the writer stores none of them
    else:
        flat = a.reshape(-1)
        i = draw(st.integers(0, flat.size - 1))
        flat[i] = flat[i] + draw(st.sampled_from([1, -1, 0.5, 1000]))
        if flat[i] == tree[target].reshape(-1)[i]:  # int cast of 0.5: make sure it changed
            flat[i] += 1
    return tree, changed, target


def leaf_name(writer: str, name: str) -> str:
    if writer in ("xarray_v2", "xarray_v3", "array_serialization"):
        return name.replace("/", ".")
    return "state/" + name if writer == "orbax_jsonsave" else name  # the PyTree item of a composite step


@pytest.mark.parametrize("writer", sorted(WRITERS))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=trees_and_change())
def test_never_exit_0_when_a_stored_value_differs(writer, case):
    tree, changed, target = case
    write = WRITERS[writer]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / x for x in "abc"]
        for d in dirs:
            d.mkdir()
        a, same, b = write(dirs[0], tree), write(dirs[1], tree), write(dirs[2], changed)
        assert streamdiff.diff(str(a), str(same), block_bytes=16).exit_code == 0
        r = streamdiff.diff(str(a), str(b), block_bytes=16)
    assert r.exit_code == 1
    keys = tuple(leaf_name(writer, target).split("/"))
    differing = [x.path for x in r.leaves if x.status != "equal"]
    # The changed leaf, under whatever prefix the writer puts the tree (T5X: optimizer/target/), and
    # for orbax_jsonsave also its copy in the `metadata` JSON item (values stored a second time).
    assert [p for p in differing if p[len(p) - len(keys) :] == keys] != [], differing
    for p in differing:
        in_json = writer == "orbax_jsonsave" and p[:3] == ("metadata", "values", target)
        assert p[len(p) - len(keys) :] == keys or in_json, (p, differing)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, width=32) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=6,
)


@pytest.mark.parametrize("zarr_format", [2, 3])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=JSON_VALUES, after=JSON_VALUES, on_array=st.booleans())
def test_never_exit_0_when_an_attribute_differs(zarr_format, before, after, on_array):
    """1 and 1.0 and true are different JSON; so are [] and {} and null."""
    import zarr

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, value in (("a", before), ("b", after)):
            root = zarr.open_group(f"{tmp}/{name}", mode="w", zarr_format=zarr_format)
            arr = root.create_array("w", shape=(2,), dtype="f4")
            arr[...] = 1.0
            (arr if on_array else root).attrs["k"] = value
            paths.append(f"{tmp}/{name}")
        # What zarr-python reads back is what was stored (JSON turns tuples into lists, and so on).
        stored = [zarr.open_group(p, mode="r") for p in paths]
        values = [(g["w"] if on_array else g).attrs["k"] for g in stored]
        code = streamdiff.diff(*paths).exit_code
    same = json.dumps(_zero(values[0]), sort_keys=True) == json.dumps(_zero(values[1]), sort_keys=True)
    assert code == (0 if same else 1)


def _zero(v):
    """-0.0 and 0.0 are one number (the one JSON difference that is not a value difference)."""
    if isinstance(v, float) and v == 0:
        return 0.0
    if isinstance(v, list):
        return [_zero(x) for x in v]
    if isinstance(v, dict):
        return {k: _zero(x) for k, x in v.items()}
    return v
