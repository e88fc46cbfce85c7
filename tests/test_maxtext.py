"""Real MaxText checkpoints (tests/data/maxtext, written by MaxText itself; see its README.md).

Ground truth is LEAVES.json (computed independently with orbax + numpy) and the value relations the
corpus README lists. Values are re-read here with plain tensorstore specs built from the leaf paths,
not with streamdiff's tree, so the statistics check is independent of the reader under test.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import tensorstore as ts
from conftest import MAXTEXT, run_cli
from reference import assert_stats_match, expected_stats

import streamdiff
from streamdiff.datatypes import format_path
from streamdiff.reader.locate import locate
from streamdiff.reader.tree import build_tree

FOLDERS = sorted(p.name for p in MAXTEXT.iterdir() if p.is_dir())


def items_of(folder: str) -> dict[str, list[dict]]:
    return json.loads((MAXTEXT / folder / "LEAVES.json").read_text())


def load(item_dir, path: str) -> np.ndarray:
    """Read one array with a hand-built spec: OCDBT at the item root, param name = keys joined by '.'."""
    name = ".".join(path.split("/"))
    base = {"driver": "ocdbt", "base": f"file://{item_dir}/", "path": name + "/"}
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{item_dir}/"}).result()
    driver = "zarr3" if kv.read(name + "/zarr.json").result().state == "value" else "zarr"
    return ts.open({"driver": driver, "kvstore": base}).result().read().result()


@pytest.mark.parametrize("folder", FOLDERS)
def test_tree_matches_ground_truth(folder):
    """Every array leaf: path, shape, dtype from metadata, and the bytes read hash to LEAVES.json."""
    for rel, leaves in items_of(folder).items():
        item = locate(str(MAXTEXT / folder / rel)).items[0]
        tree = build_tree(item.dir)
        got = {format_path(p): leaf for p, leaf in tree.leaves.items() if leaf.kind != "empty"}
        assert sorted(got) == sorted(e["path"] for e in leaves)
        for e in leaves:
            leaf = got[e["path"]]
            assert list(leaf.shape) == e["shape"] and leaf.dtype == e["dtype"], e["path"]
            arr = ts.open(leaf.source.spec, context=item.dir.storage.context, assume_metadata=True).result()
            raw = np.ascontiguousarray(arr.read().result()).tobytes()
            assert hashlib.sha256(raw).hexdigest()[:16] == e["sha256"], e["path"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_self_diff_is_identical(folder):
    rel = next(iter(items_of(folder)))
    r = run_cli(MAXTEXT / folder / rel, MAXTEXT / folder / rel, "--json", "-", "-q")
    assert r.code == 0, r.err
    assert r.json["identical"] and r.json["summary"]["different"] == 0


def test_seed1_differs_in_36_of_39_leaves_counters_equal():
    r = run_cli(MAXTEXT / "v024_linen_scan/checkpoints", MAXTEXT / "v024_linen_scan_seed1/checkpoints", "--json", "-")
    assert r.code == 1
    leaves = {x["path"]: x for x in r.json["leaves"] if x["kind"] != "empty"}
    assert len(leaves) == 39
    differ = {p for p, x in leaves.items() if x["status"] == "different"}
    assert len(differ) == 36
    assert set(leaves) - differ == {"step", "opt_state/0/count", "opt_state/2/count"}


def test_root_picks_latest_committed_step_and_step_option():
    root = MAXTEXT / "v024_linen_scan/checkpoints"
    r = run_cli(root, root / "1", "--json", "-", "-q")
    assert r.code == 0 and "step 1 (latest committed" in " ".join(r.json["notes"]["a"])
    r0 = run_cli(root, root / "0", "--step", "0", "--json", "-", "-q")
    assert r0.code == 0, r0.err  # --step applies to the root side; the step dir is used as it is
    both = run_cli(root / "0", root / "1", "--step", "0")
    assert both.code == 2 and "--step applies to a CheckpointManager root" in both.err
    r0 = run_cli(root, root, "--step", "0", "--json", "-", "-q")
    assert r0.code == 0 and "step 0" in r0.json["notes"]["a"]


def test_step0_vs_step1_every_leaf_differs_and_numbers_equal_numpy():
    """One optimizer update apart: all 39 leaves differ; every statistic equals numpy's."""
    root = MAXTEXT / "v024_linen_scan/checkpoints"
    exact = run_cli(root / "0", root / "1", "--json", "-")
    data = [x for x in exact.json["leaves"] if x["kind"] != "empty"]
    assert exact.code == 1 and len(data) == 39 and all(x["status"] == "different" for x in data)
    r = run_cli(root / "0", root / "1", "--atol", "1e-6", "--rtol", "1e-5", "--json", "-")
    assert r.code == 1
    for x in (x for x in r.json["leaves"] if x["kind"] != "empty"):
        a = load(root / "0/items", x["path"])
        b = load(root / "1/items", x["path"])
        assert_stats_match(x, expected_stats(a, b, 1e-6, 1e-5), x["path"])


def test_structure_only_same_layout_is_exit_0_without_statistics():
    r = streamdiff.diff(
        str(MAXTEXT / "v024_linen_scan/checkpoints"),
        str(MAXTEXT / "v024_linen_scan_seed1/checkpoints"),
        structure_only=True,
    )
    assert r.exit_code == 0 and r.equal and all(x.stats is None for x in r.leaves)


def test_linen_vs_native_nnx_with_no_auto_is_a_structure_difference():
    """Without presets (--no-auto) the layouts share no path: every path is one-sided (exit 1)."""
    r = streamdiff.diff(
        str(MAXTEXT / "v024_linen_scan/checkpoints"),
        str(MAXTEXT / "pr283f88b_nnx_scan/checkpoints"),
        structure_only=True,
        auto=False,
    )
    assert r.exit_code == 1 and r.count("only_a") == 40 and r.count("only_b") == 69
