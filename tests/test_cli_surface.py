"""The questions users ask from the command line and the API: --only/--exclude, --stat,
--per-layer, `streamdiff ls`, size strings and display paths in the API, usage errors."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from conftest import MAXTEXT, run_cli
from helpers import save
from reference import expected_stats
from rich.console import Console
from test_maxtext import items_of, load

import streamdiff
from streamdiff.datatypes import format_path
from streamdiff.errors import StreamdiffError
from streamdiff.report import render

RUN = MAXTEXT / "v024_linen_scan/checkpoints"
SEED1 = MAXTEXT / "v024_linen_scan_seed1/checkpoints"


# ------------------------------------------------------------------------------------- item 4: API


def test_api_takes_size_strings_like_the_cli_and_refuses_non_sizes_with_a_streamdiff_error():
    a = streamdiff.diff(str(RUN / "0"), str(RUN / "1"), max_memory="1G")
    b = streamdiff.diff(str(RUN / "0"), str(RUN / "1"), max_memory=1 << 30)
    assert streamdiff.to_json(a)["leaves"] == streamdiff.to_json(b)["leaves"]
    with pytest.raises(StreamdiffError, match="not a size"):
        streamdiff.diff(str(RUN / "0"), str(RUN / "1"), max_memory="lots")


def test_api_objects_carry_what_the_json_carries():
    r = streamdiff.diff(str(RUN / "0"), str(RUN / "1"))
    d = streamdiff.to_json(r)
    assert [x.name for x in r.leaves] == [x["path"] for x in d["leaves"]]
    assert all(isinstance(x.name, str) and x.path == tuple(x.name.split("/")) for x in r.leaves)
    assert r.verdict_text == d["verdict"] == "39 of 40 leaves differ"
    assert r.summary == d["summary"] and r.summary["different"] == 39 and r.verdict == "different"


# ------------------------------------------------------------------------------ item 9: selection


def test_only_and_exclude_select_canonical_paths_and_count_the_rest_as_excluded():
    full = run_cli(RUN / "0", RUN / "1", "--json", "-", "-q").json
    r = run_cli(RUN / "0", RUN / "1", "--only", "params/**", "--exclude", "**/scale", "--json", "-", "-q")
    kept = [x["path"] for x in full["leaves"] if x["path"].startswith("params/") and not x["path"].endswith("/scale")]
    assert [x["path"] for x in r.json["leaves"]] == kept and len(kept) == 9
    assert r.json["summary"]["excluded"] == len(full["leaves"]) - 9 == len(r.json["excluded"])
    assert r.json["summary"]["bytes_read"] < full["summary"]["bytes_read"]
    for x in r.json["leaves"]:  # the statistics of a selected leaf do not depend on the selection
        assert x == next(y for y in full["leaves"] if y["path"] == x["path"]) | {"blocks": x["blocks"]}


def test_excluded_leaves_are_named_with_verbose_and_everything_excluded_is_an_error():
    v = run_cli(RUN / "0", RUN / "1", "--exclude", "opt_state/**", "-v")
    assert (
        "excluded by --only/--exclude: 27 leaves" in v.out
        and "     opt_state/0/mu/params/decoder/decoder_norm/scale" in v.out
    )
    none = run_cli(RUN / "0", RUN / "1", "--only", "nothing/here", "-q")
    assert none.code == 2 and "nothing to compare" in none.err


def test_nothing_outside_the_selection_is_read(tmp_path):
    """The leaf left out has garbage for chunks on one side: reading it would be an error."""
    rng = np.random.default_rng(0)
    tree = {"keep": rng.standard_normal((8, 8)).astype(np.float32), "drop": np.arange(64, dtype=np.float32)}
    save(tmp_path / "a", tree, use_ocdbt=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    chunks = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "b/drop") for f in fs if not f.startswith(".z")]
    assert chunks
    for c in chunks:
        with open(c, "wb") as f:
            f.write(b"garbage, not a chunk")
    assert run_cli(tmp_path / "a", tmp_path / "b", "-q").code == 2  # the damage is seen when read
    r = run_cli(tmp_path / "a", tmp_path / "b", "--only", "keep", "--json", "-", "-q")
    assert r.code == 0 and r.json["excluded"] == ["drop"] and r.json["summary"]["excluded"] == 1


# ----------------------------------------------------------------------------------- item 10: --stat


def test_stat_subtrees_sum_the_leaves_under_each_prefix_worst_first():
    r = run_cli(RUN, SEED1, "--stat", "--json", "-", "-q")
    d = r.json
    want: dict[str, dict] = {}
    for x in d["leaves"]:
        g = want.setdefault("/".join(x["path"].split("/")[:2]), {"leaves": 0, "different": 0, "mismatches": 0})
        g["leaves"] += 1
        g["different"] += x["status"] != "equal"
        g["mismatches"] += x.get("mismatches", 0)
    got = {s["path"]: {k: s[k] for k in ("leaves", "different", "mismatches")} for s in d["subtrees"]}
    assert got == want
    order = [s["mismatches"] for s in d["subtrees"]]
    assert order == sorted(order, reverse=True)
    deeper = run_cli(RUN, SEED1, "--stat=4", "--json", "-", "-q").json["subtrees"]
    assert len(deeper) > len(d["subtrees"]) and "subtrees" not in run_cli(RUN, SEED1, "--json", "-", "-q").json


@pytest.mark.parametrize("width", [60, 80])
def test_stat_lines_fit_the_width_one_per_subtree(width, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    out = run_cli(RUN, SEED1, "--stat").out.splitlines()
    assert max(len(line) for line in out) <= width
    start = out.index(next(line for line in out if line.startswith("per subtree")))
    assert out[start + 1].split()[0] == "subtree"
    rows = out[start + 2 : start + 2 + 5]
    subtrees = run_cli(RUN, SEED1, "--stat", "--json", "-", "-q").json["subtrees"]
    assert [row.split()[0] for row in rows] == [s["path"] for s in subtrees]  # worst first, one line each
    assert "+" in rows[0] and rows[-1].rstrip().endswith("|")  # a bar, empty for an equal subtree


# ------------------------------------------------------------------------------- item 11: per layer


def test_per_layer_statistics_equal_numpy_on_each_layer_slice():
    """MaxText's scanned weights hold the layers on axis 1 (tests/data/maxtext/README.md)."""
    plain = run_cli(RUN / "0", RUN / "1", "--atol", "1e-6", "--rtol", "1e-5", "--json", "-", "-q").json
    r = run_cli(RUN / "0", RUN / "1", "--atol", "1e-6", "--rtol", "1e-5", "--per-layer", "--json", "-", "-q").json
    assert r["summary"]["bytes_read"] == plain["summary"]["bytes_read"]  # same pass, no second read
    scanned = [x for x in r["leaves"] if "/layers/" in x["path"]]
    assert len(scanned) == 3 * 9 and all(len(x["layers"]) == 3 for x in scanned)
    assert not any("layers" in x for x in r["leaves"] if "/layers/" not in x["path"])
    for x in scanned:
        a = load(RUN / "0/items", x["path"])
        b = load(RUN / "1/items", x["path"])
        for layer in x["layers"]:
            k = layer["layer"]
            e = expected_stats(np.take(a, k, 1), np.take(b, k, 1), 1e-6, 1e-5)
            assert layer["mismatches"] == e["mismatches"] and layer["max_abs_diff"] == e["max_abs_diff"], x["path"]
            assert np.isclose(layer["rms_diff"], e["rms_diff"], rtol=1e-12, atol=0) and layer["count"] == e["count"]


def test_per_layer_shows_which_layers_moved(tmp_path, monkeypatch):
    """Layers 0 and 1 frozen, layer 2 fine-tuned: a sparkline with two unchanged layers."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 5)).astype(np.float32)  # layers on axis 1, as MaxText scans them
    tuned = w.copy()
    tuned[:, 2] += 0.01
    save(tmp_path / "a", {"decoder": {"layers": {"kernel": w}, "embed": w[:, 0]}})
    save(tmp_path / "b", {"decoder": {"layers": {"kernel": tuned}, "embed": w[:, 0]}})
    monkeypatch.setenv("COLUMNS", "80")
    r = run_cli(tmp_path / "a", tmp_path / "b", "--per-layer")
    lines = r.out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("per layer"))
    line = next(line for line in lines[head:] if line.startswith("decoder/layers/kernel "))
    assert line.split()[1] == "··█" and "1/3 moved" in line and "at layer 2" in line
    d = run_cli(tmp_path / "a", tmp_path / "b", "--per-layer", "--json", "-", "-q").json
    layers = next(x for x in d["leaves"] if x["path"] == "decoder/layers/kernel")["layers"]
    assert [x["mismatches"] for x in layers] == [0, 0, 20]
    assert layers[2]["max_abs_diff"] == float(np.abs(tuned[:, 2].astype(np.float64) - w[:, 2]).max())


# -------------------------------------------------------------------------------------- item 12: ls


def test_ls_lists_the_tree_from_metadata_with_step_layout_and_stored_bytes():
    d = run_cli("ls", RUN, "--json", "-").json
    assert d["step"] == 1 and d["steps"] == [0, 1] and d["layout"] == "maxtext-linen"
    (item,) = d["items"]
    truth = items_of("v024_linen_scan")["checkpoints/1/items"]
    arrays = {x["path"]: x for x in item["leaves"] if x["kind"] != "empty"}
    assert {p: (x["shape"], x["dtype"]) for p, x in arrays.items()} == {
        e["path"]: (e["shape"], e["dtype"]) for e in truth
    }
    assert all(x["stored_bytes"] > 0 and x["chunks"] is not None for x in arrays.values())
    on_disk = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(RUN / "1/items") for f in fs)
    assert sum(x["stored_bytes"] for x in arrays.values()) < on_disk


def test_ls_stored_bytes_of_per_leaf_dirs_are_the_chunk_files_and_no_chunk_is_read(tmp_path):
    save(tmp_path / "c", {"w": np.arange(1000, dtype=np.float32).reshape(10, 100)}, use_ocdbt=False)
    chunks = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "c/w") for f in fs if not f.startswith(".z")]
    size = sum(os.path.getsize(c) for c in chunks)
    for c in chunks:  # garbage chunks of the same size: a listing that read data would fail
        n = os.path.getsize(c)
        with open(c, "wb") as f:
            f.write(b"x" * n)
    d = run_cli("ls", tmp_path / "c", "--json", "-").json
    (leaf,) = d["items"][0]["leaves"]
    assert leaf["stored_bytes"] == size and leaf["shape"] == [10, 100] and d["step"] is None


@pytest.mark.parametrize("width", [60, 80, 120])
def test_ls_terminal_fits_the_width(width, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    r = run_cli("ls", RUN)
    lines = r.out.splitlines()
    assert r.code == 0 and max(len(line) for line in lines) <= width
    assert "step 1; other steps: 0" in r.out and "layout: maxtext-linen" in r.out
    ends = ("kernel", "scale", "embedding", "count", "step")
    rows = [line for line in lines if not line.startswith(" ") and line.split()[0].endswith(ends)]
    assert len(rows) == 39


def test_ls_errors_are_one_line_and_a_b_diff_still_works():
    r = run_cli("ls", "/no/such/ckpt")
    assert r.code == 2 and r.err.startswith("streamdiff: error: ") and len(r.err.splitlines()) == 1
    assert run_cli(RUN, RUN, "-q").code == 0


# -------------------------------------------------------------------------------- item 13: usage


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--atl", "1"], "did you mean --atol?"),
        (["--per-layers"], "did you mean --per-layer?"),
        ([], "Missing argument"),
    ],
)
def test_usage_errors_name_the_usage_the_help_option_and_the_nearest_option(args, needle):
    r = run_cli(RUN, *args) if args else run_cli(RUN)
    assert r.code == 2 and len(r.err.splitlines()) == 1 and r.err.startswith("streamdiff: error: ")
    assert needle in r.err and "usage: streamdiff [OPTIONS] A B" in r.err and "'streamdiff --help'" in r.err


def test_render_is_usable_directly_with_any_console():
    r = streamdiff.diff(str(RUN / "0"), str(RUN / "1"), only=["step"])
    console = Console(record=True, width=40, file=io.StringIO())
    render(r, console, verbose=True, stat_depth=1, per_layer=True)
    text = console.export_text()
    assert "step" in text and all(len(line) <= 40 for line in text.splitlines())
    assert format_path(r.leaves[0].path) == "step"


def test_per_layer_finds_the_three_layers_of_every_scanned_leaf_including_prng_keys_on_axis_0():
    """Native NNX: weights scanned on axis 1, rng keys [3, 4] and counts [3] stacked on axis 0
    (tests/data/maxtext/README.md): 3 layers each, never the 4 words of a key."""
    nnx = MAXTEXT / "pr283f88b_nnx_scan/checkpoints"
    d = run_cli(nnx, nnx, "--per-layer", "--json", "-", "-q").json
    scanned = [x for x in d["leaves"] if "/layers/" in x["path"]]
    keys = [x for x in scanned if x["kind"] == "prng_key"]
    assert keys and all(x["shape"][-1] == 4 for x in keys)
    assert all([layer["layer"] for layer in x["layers"]] == [0, 1, 2] for x in scanned)
    assert all(layer["count"] * 3 == x["count"] for x in scanned for layer in x["layers"])


def test_only_matches_canonical_paths_after_mapping_not_stored_ones():
    """Linen (params/params/...) vs converted NNX (model/.../value): the presets map both to model/...;
    the selection sees those canonical paths."""
    linen = MAXTEXT / "v024_linen_scan/checkpoints"
    nnx = MAXTEXT / "conv_pr283f88b_linen_scan_to_nnx/items"
    r = run_cli(linen, nnx, "--only", "model/decoder/layers/**", "--json", "-", "-q")
    paths = [x["path"] for x in r.json["leaves"]]
    assert r.code == 0 and len(paths) == 9 and all(p.startswith("model/decoder/layers/") for p in paths)
    assert all(x["source_a"].startswith("params/params/decoder/layers/") for x in r.json["leaves"])
    assert r.json["summary"]["excluded"] == len(r.json["excluded"]) > 0
    stored = run_cli(linen, nnx, "--only", "params/**", "-q")
    assert stored.code == 2 and "nothing to compare" in stored.err


def test_ls_reads_every_kind_of_store_as_the_diff_does(tmp_path):
    """`ls` of a zarr-python group and of a flax msgpack file lists the leaves the diff compares
    (group paths and attributes; the file's arrays), not a guess at an Orbax directory."""
    import zarr
    from flax import serialization

    g = zarr.open_group(str(tmp_path / "z"), mode="w", zarr_format=3)
    g.attrs["lr"] = 0.1
    g.create_group("model").create_array("kernel", shape=(4, 4), dtype="f4")[:] = 1.0
    (tmp_path / "f.msgpack").write_bytes(serialization.to_bytes({"params": {"w": np.ones((2, 3), np.float32)}}))
    for path, want in (
        (tmp_path / "z", {".attrs/lr": "json", "model/kernel": "array"}),
        (tmp_path / "f.msgpack", {"params/w": "array"}),
    ):
        r = run_cli("ls", path, "--json", "-")
        assert r.code == 0, r.err
        rows = [row for item in r.json["items"] for row in item["leaves"]]
        assert {row["path"]: row["kind"] for row in rows} == want
        diff = run_cli(path, path, "--json", "-", "-q").json
        assert sorted(x["path"] for x in diff["leaves"]) == sorted(want)


def test_per_layer_with_a_layer_axis_no_scanned_leaf_has_is_refused():
    """--layer-axis 7 on 4-axis leaves used to print "no scanned leaf differs" beside 12 differing leaves."""
    run = MAXTEXT / "v024_linen_scan/checkpoints"
    seed1 = MAXTEXT / "v024_linen_scan_seed1/checkpoints"
    r = run_cli(run, seed1, "--per-layer", "--layer-axis", "7", "--only", "params/**", "-q")
    assert r.code == 2 and r.err.strip() == (
        "streamdiff: error: --layer-axis 7: no scanned leaf has that axis (they have at most 4 axes)"
    )
