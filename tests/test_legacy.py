"""Checkpoints written by real orbax 0.3.5 and 0.5.10 (tests/data/legacy, see its README.md)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import DATA, run_cli
from reference import assert_stats_match, expected_stats
from test_maxtext import load

import streamdiff
from streamdiff.reader.locate import locate
from streamdiff.reader.tree import build_tree

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
    """Verdict "identical": all 10 leaves of the saved tree paired, every one equal, every data leaf bit for bit."""
    r = run_cli(LEGACY / a, LEGACY / b, "--json", "-", "-q")
    assert r.code == 0, (r.err, [x for x in r.json["leaves"] if x["status"] != "equal"])
    assert r.json["identical"] and r.json["verdict"] == "identical: 10 leaves, bit for bit"
    expected = {"/".join(e["path"]): e for e in EXPECTED[a]["items"][a]}
    got = {x["path"]: x for x in r.json["leaves"]}
    assert sorted(got) == sorted(expected) and len(got) == 10
    assert {x["status"] for x in got.values()} == {"equal"}
    for path, x in got.items():
        assert x["kind"] == expected[path]["kind"], path
        if x["kind"] in ("array", "scalar"):
            assert x["identical"] is True and x["mismatches"] == 0, path
            assert x["count"] == math.prod(expected[path].get("shape", [])), path


def test_legacy_manager_root_without_commit_files():
    """Old managers wrote no _CHECKPOINT_METADATA and no commit_success.txt locally: still final."""
    r = run_cli(LEGACY / "legacy_0.3.5_manager", LEGACY / "legacy_0.5.10_manager", "--json", "-", "-q")
    assert r.code == 0 and "step 1" in " ".join(r.json["notes"]["a"])


def test_multi_chunk_shards_stream_per_inner_chunk():
    """Leaf `a`: zarr3 shards of (128, 256) holding 4x4 inner chunks of (32, 64). With a block budget
    smaller than one inner chunk, the leaf is stream-decoded one inner chunk per block: 8 x 4 = 32
    blocks (a shard-sized walk would be 2), and the numbers are numpy's on the array tensorstore reads."""
    item = LEGACY / "legacy_0.5.10_zarr3_subchunks"
    source = build_tree(locate(str(item)).items[0].dir).leaves[("a",)].source
    assert source.chunk_shape == (128, 256) and source.read_chunk_shape == (32, 64)
    inner_chunk_bytes = 32 * 64 * 4 * 2  # float32, both sides
    r = streamdiff.diff(str(item), str(item), block_bytes=inner_chunk_bytes // 4, shortcut=False)
    stats = next(x for x in r.leaves if x.path == ("a",)).stats
    assert r.exit_code == 0 and stats.streamed is True
    assert stats.blocks == (256 // 32) * (256 // 64)
    a = load(item, "a")
    assert_stats_match(stats, expected_stats(a, a))
    roomy = streamdiff.diff(str(item), str(item), shortcut=False)  # default budget: no streaming
    assert not next(x for x in roomy.leaves if x.path == ("a",)).stats.streamed
