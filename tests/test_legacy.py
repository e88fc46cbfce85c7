"""Checkpoints written by real orbax 0.3.5 and 0.5.10 (tests/data/legacy, see its README.md)."""

from __future__ import annotations

import json

import pytest
from conftest import DATA, run_cli

from streamdiff.locate import locate
from streamdiff.tree import build_tree

LEGACY = DATA / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_legacy_leaves_and_self_diff(variant):
    for rel, leaves in EXPECTED[variant]["items"].items():
        tree = build_tree(locate(str(LEGACY / rel)).items[0].dir)
        got = {leaf.path: leaf for leaf in tree.leaves.values()}
        assert sorted(got) == sorted(tuple(e["path"]) for e in leaves), rel
        for e in leaves:
            leaf = got[tuple(e["path"])]
            assert leaf.error is None and leaf.kind == e["kind"], (e, leaf)
            if "dtype" in e:
                assert leaf.dtype == e["dtype"] and list(leaf.shape) == e["shape"], (e, leaf)
            if e["kind"] == "string":
                assert leaf.value == e["value"]
        r = run_cli(LEGACY / rel, LEGACY / rel, "--json", "-", "-q")
        assert r.code == 0 and r.json["identical"], r.err


@pytest.mark.parametrize(
    "a,b",
    [
        ("legacy_0.3.5_default", "legacy_0.3.5_aggregate"),  # values inline in msgpack vs in zarr
        ("legacy_0.3.5_default", "legacy_0.5.10_default"),  # per-leaf dirs vs OCDBT, two orbax versions
        ("legacy_0.5.10_aggregate", "legacy_0.3.5_aggregate"),
    ],
)
def test_same_tree_saved_differently_is_identical(a, b):
    r = run_cli(LEGACY / a, LEGACY / b, "--json", "-", "-q")
    assert r.code == 0, (r.err, [x for x in r.json["leaves"] if x["status"] != "equal"])
    assert r.json["summary"]["leaves"] == 10


def test_legacy_manager_root_without_commit_files():
    """Old managers wrote no _CHECKPOINT_METADATA and no commit_success.txt locally: still final."""
    r = run_cli(LEGACY / "legacy_0.3.5_manager", LEGACY / "legacy_0.5.10_manager", "--json", "-", "-q")
    assert r.code == 0 and "step 1" in " ".join(r.json["notes"]["a"])


def test_multi_chunk_shards_stream_per_inner_chunk():
    r = run_cli(LEGACY / "legacy_0.5.10_zarr3_subchunks", LEGACY / "legacy_0.5.10_zarr3_subchunks", "--json", "-")
    assert r.code == 0
    tree = build_tree(locate(str(LEGACY / "legacy_0.5.10_zarr3_subchunks")).items[0].dir)
    a = tree.leaves[("a",)].source
    assert a.chunk_shape == (128, 256) and a.read_chunk_shape == (32, 64)
