"""Property, per msgpack-family writer (T5X specs, flax msgpack, flax.training.checkpoints, orbax JsonSave):
a random tree saved twice by the real writer exits 0; with one stored value changed it never exits 0.

The lead joins `WRITERS_MSGPACK` with the zarr helper's `tests/writers.py` registry.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from writers_msgpack import WRITERS_MSGPACK

NAMES = ("w", "layer/kernel", "layer/bias", "emb")


@st.composite
def trees(draw) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    out = {}
    for name in names:
        dtype = draw(st.sampled_from([np.float32, np.int32]))
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
        elems = st.floats(-1e3, 1e3, width=32, allow_nan=False) if dtype is np.float32 else st.integers(-1000, 1000)
        out[name] = draw(hnp.arrays(dtype, shape, elements=elems))
    return out


@pytest.mark.parametrize("writer", sorted(WRITERS_MSGPACK))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees(), data=st.data())
def test_one_changed_value_never_exits_0_and_unchanged_exits_0(writer, tree, data):
    write = WRITERS_MSGPACK[writer]
    name = data.draw(st.sampled_from(sorted(tree)))
    index = data.draw(st.integers(0, tree[name].size - 1))
    changed = {k: v.copy() for k, v in tree.items()}
    changed[name].flat[index] += 1
    with tempfile.TemporaryDirectory() as tmp:
        a = write(Path(tmp) / "a", tree)
        same = write(Path(tmp) / "same", tree)
        b = write(Path(tmp) / "b", changed)
        r = run_cli(a, same, "-q")
        assert r.code == 0, (writer, r.out, r.err)
        r = run_cli(a, b, "--json", "-", "-q")
        assert r.code == 1, (writer, r.out, r.err)
        differing = [x["path"] for x in r.json["leaves"] if x["status"] != "equal"]
        assert any(p.endswith(name) or name in p for p in differing), (name, differing)
