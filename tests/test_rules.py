"""Mapping rules and the MaxText presets: every cross-layout relation of the shared corpus with no
options, user rules files (TOML), lazy views checked against numpy, and rules that are wrong."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import MAXTEXT, run_cli
from helpers import save
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_stats_match, expected_stats
from test_maxtext import load

import streamdiff
from streamdiff.datatypes import Kind, Leaf, format_path
from streamdiff.mapping.layouts import PRESETS, load_preset
from streamdiff.mapping.patterns import Pattern, RulesError, fill
from streamdiff.mapping.rules import PRESET_DIR, apply_rules, parse_rules, read_preset
from streamdiff.mapping.views import move_axis, source_of, stacked
from streamdiff.reader.locate import locate
from streamdiff.reader.tree import read_item

LINEN = MAXTEXT / "v024_linen_scan/checkpoints"
LINEN_NOSCAN = MAXTEXT / "v024_linen_noscan/checkpoints"
CONVERTED = MAXTEXT / "conv_pr283f88b_linen_scan_to_nnx/items"
NNX_RELEASED = MAXTEXT / "v024_nnx_scan/checkpoints"
NNX = MAXTEXT / "pr283f88b_nnx_scan/checkpoints"
NNX_NOSCAN = MAXTEXT / "pr283f88b_nnx_noscan/checkpoints"


def statuses(r) -> dict[str, str]:
    return {x["path"]: x["status"] for x in r.json["leaves"]}


def test_linen_equals_its_converted_nnx_copy_in_every_leaf():
    r = run_cli(LINEN, CONVERTED, "--json", "-", "-q")
    assert r.code == 0, r.out[:2000]
    s = statuses(r)
    assert len(s) == 39 and set(s.values()) == {"equal"}
    assert "optimizer/step" in s and "optimizer/opt_state/0/mu/decoder/layers/mlp/wi_0/kernel" in s
    assert r.json["ignored"] == {"a": ["opt_state/1"], "b": ["optimizer/opt_state/1"]}
    assert r.json["identical"]


def test_released_nnx_equals_native_nnx_with_step_int32_vs_uint32():
    r = run_cli(NNX_RELEASED, NNX, "--json", "-", "-q")
    assert r.code == 0, [x for x in r.json["leaves"] if x["status"] != "equal"][:3]
    s = statuses(r)
    assert len(s) == 69 and set(s.values()) == {"equal"}
    step = next(x for x in r.json["leaves"] if x["path"] == "optimizer/step")
    assert (step["dtype"], step["dtype_b"]) == ("int32", "uint32") and r.json["summary"]["dtype_mismatch"] == 0
    rng = next(x for x in r.json["leaves"] if x["path"] == "model/decoder/layers/mlp/dropout/rngs/aqt/key")
    assert rng["kind"] == "prng_key" and rng["source_a"] == "nnx_aux/model/decoder/layers/mlp/dropout/rngs/aqt/key"


@pytest.mark.parametrize("a,b", [(LINEN, NNX), (LINEN_NOSCAN, NNX_NOSCAN)])
def test_linen_vs_nnx_same_structure_values_differ_counters_equal(a, b):
    """Different initialisation: only the counters agree; rng state exists only on the NNX side."""
    r = run_cli(a, b, "--json", "-", "-q")
    assert r.code == 1
    s = statuses(r)
    assert {p for p, v in s.items() if v == "equal"} == {
        "optimizer/step",
        "optimizer/opt_state/0/count",
        "optimizer/opt_state/2/count",
    }
    only_b = {p for p, v in s.items() if v == "only_b"}
    assert only_b and all("/rngs/" in p for p in only_b)
    assert not any(v in ("only_a", "shape_mismatch", "error") for v in s.values())


def test_scanned_vs_unscanned_stacks_the_unscanned_side_and_equals_numpy():
    r = run_cli(LINEN, LINEN_NOSCAN, "--json", "-", "-q", "--atol", "1e-6")
    s = statuses(r)
    assert len(s) == 40 and not any(v in ("only_a", "only_b", "shape_mismatch") for v in s.values())  # + opt_state/1
    leaf = next(x for x in r.json["leaves"] if x["path"] == "params/params/decoder/layers/mlp/wi_0/kernel")
    assert leaf["source_b"].startswith("stack([params/params/decoder/layers_0/mlp/wi_0/kernel")
    a = load(LINEN / "1/items", leaf["path"])
    b = np.stack(
        [load(LINEN_NOSCAN / "1/items", f"params/params/decoder/layers_{i}/mlp/wi_0/kernel") for i in range(3)], 1
    )
    assert_stats_match(leaf, expected_stats(a, b, 1e-6, 0.0))


def test_layer_axis_moved_is_aligned_by_shape(tmp_path):
    """A saved with the layer axis at 1, B at 0 (param_scan_axis=0): every scanned leaf moved the same
    axis (3 layers), so B is viewed with the axis moved."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 5)).astype(np.float32)
    s = rng.standard_normal((8, 3)).astype(np.float32)
    save(tmp_path / "a", {"decoder": {"layers": {"kernel": x, "scale": s}}})
    save(tmp_path / "b", {"decoder": {"layers": {"kernel": np.moveaxis(x, 1, 0), "scale": s.T}}})
    r = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")
    assert r.code == 0 and all(x["source_b"].startswith("transpose(") for x in r.json["leaves"])
    raw = run_cli(tmp_path / "a", tmp_path / "b", "--no-auto", "--json", "-", "-q")
    assert raw.code == 1 and {x["status"] for x in raw.json["leaves"]} == {"shape_mismatch"}


def test_transposed_2d_kernels_under_layers_are_shape_mismatches_not_a_layer_axis_move(tmp_path):
    """Two 2-D leaves whose axes are swapped the same way: still transposes, not a param_scan_axis."""
    rng = np.random.default_rng(1)
    q, k = (rng.standard_normal((8, 16)).astype(np.float32) for _ in range(2))
    save(tmp_path / "a", {"decoder": {"layers": {"q": q, "k": k}}})
    save(tmp_path / "b", {"decoder": {"layers": {"q": q.T.copy(), "k": k.T.copy()}}})
    r = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")
    assert r.code == 1 and [x["status"] for x in r.json["leaves"]] == ["shape_mismatch", "shape_mismatch"]


def test_one_transposed_kernel_under_layers_is_a_shape_mismatch_not_a_layer_axis_move(tmp_path):
    """A single leaf whose axes are swapped is the conversion bug a diff must show, not a save-wide
    param_scan_axis difference; --layer-axis says it is one."""
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    save(tmp_path / "a", {"decoder": {"layers": {"kernel": x}}})
    save(tmp_path / "b", {"decoder": {"layers": {"kernel": x.T.copy()}}})
    r = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")
    assert r.code == 1 and [x["status"] for x in r.json["leaves"]] == ["shape_mismatch"]
    told = run_cli(tmp_path / "a", tmp_path / "b", "--layer-axis", "1", "--json", "-", "-q")
    assert told.code == 0 and told.json["leaves"][0]["source_b"].startswith("transpose(")


def test_explain_reads_no_data_and_lists_sources(copy_ckpt):
    ckpt = copy_ckpt(CONVERTED)
    for d, _, fs in os.walk(ckpt / "ocdbt.process_0"):
        for f in fs:
            os.remove(os.path.join(d, f))
    r = run_cli(LINEN, ckpt, "--explain")
    assert r.code == 0, r.err
    assert "model/decoder/layers/mlp/wi_0/kernel/value" in r.out and "ignored optimizer/opt_state/1" in r.out
    assert "39 canonical paths; only in A: 0; only in B: 0" in r.out


def test_explain_takes_the_remote_io_options_and_refuses_a_bad_timeout():
    """--explain reads metadata with the diff's --io-concurrency and --timeout (it dropped them once):
    a timeout outside its range is the diff's one-line error, a good one and a concurrency work."""
    ok = run_cli(LINEN, CONVERTED, "--explain", "--io-concurrency", "3", "--timeout", "30")
    assert ok.code == 0 and "39 canonical paths" in ok.out, ok.err
    bad = run_cli(LINEN, CONVERTED, "--explain", "--timeout", "0")
    assert bad.code == 2 and bad.err.startswith("streamdiff: error: --timeout must be"), bad.err


# ------------------------------------------------------------------------------ user rules files


HAIKU_RULES = """
# Haiku names modules 'mlp/~/linear_0'; Flax names the same layer Dense_0.
[[rule]]
op = "rename"
from = "mlp/~/linear_{i}/{param}"
to = "mlp/Dense_{i}/{param}"

[[rule]]
op = "rename"
from = "mlp/Dense_{i}/w"
to = "mlp/Dense_{i}/kernel"

[[rule]]
op = "rename"
from = "mlp/Dense_{i}/b"
to = "mlp/Dense_{i}/bias"
"""


def test_haiku_names_vs_flax_names_readme_example(tmp_path):
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    save(tmp_path / "haiku", {"mlp/~/linear_0": {"w": w, "b": b}})
    save(tmp_path / "flax", {"mlp": {"Dense_0": {"kernel": w, "bias": b}}})
    rules = tmp_path / "haiku.toml"
    rules.write_text(HAIKU_RULES)
    assert run_cli(tmp_path / "haiku", tmp_path / "flax", "-q").code == 1
    r = run_cli(tmp_path / "haiku", tmp_path / "flax", "--rules", rules, "--json", "-", "-q")
    assert r.code == 0 and sorted(statuses(r)) == ["mlp/Dense_0/bias", "mlp/Dense_0/kernel"]


def test_tolerance_allow_dtype_and_ignore_rules_turn_exit_1_into_exit_0(tmp_path):
    x = np.linspace(0, 1, 100, dtype=np.float32)
    save(tmp_path / "a", {"opt": {"mu": x}, "w": x, "step": np.int32(3), "junk": x})
    save(tmp_path / "b", {"opt": {"mu": x + 1e-3}, "w": x, "step": np.uint32(3)})
    rules = tmp_path / "r.toml"
    rules.write_text(
        '[[rule]]\nop = "tolerance"\npath = "opt/**"\natol = 1e-2\n'
        '[[rule]]\nop = "allow_dtype"\npath = "step"\ndtypes = ["int32", "uint32"]\n'
        '[[rule]]\nop = "ignore"\npath = "junk"\n'
    )
    assert run_cli(tmp_path / "a", tmp_path / "b", "-q").code == 1
    r = run_cli(tmp_path / "a", tmp_path / "b", "--rules", rules, "--json", "-", "-q")
    assert r.code == 0, r.json["leaves"]
    assert r.json["ignored"]["a"] == ["junk"]


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[[rule]\nop=", "not valid TOML"),
        ('[[rule]]\nop = "explode"\n', "'op' must be one of"),
        ('[[rule]]\nop = "rename"\nfrom = "x"\n', "rename needs to"),
        ('[[rule]]\nop = "rename"\nfrom = "{a}"\nto = "{b}"\n', "does not capture"),
        ('[[rule]]\nop = "rename"\nfrom = "{a:**}"\nto = "same"\n', "two leaves map to"),
        ('[[rule]]\nop = "tolerance"\npath = "**"\natol = -1\n', "atol must be a finite number >= 0"),
        ('[[rule]]\nop = "transpose"\npath = "**"\naxes = [0, 0]\n', "not a permutation"),
        ('[[rule]]\nop = "stack"\nfrom = "{a}/layers_{i}"\naxis = "a"\nto = "x"\n', "axis must be an integer"),
        ('[[rule]]\nop = "strip"\nkey = 5\n', "key must be a string"),
        ('[[rule]]\nop = "allow_dtype"\npath = "**"\ndtypes = "float32"\n', "dtypes must be a list"),
        ('[[rule]]\nop = "moveaxis"\npath = "**/kernel"\nsource = 9\ndestination = 0\n', "out of range"),
        ("rule = 5\n", "'rule' must be [[rule]] tables"),
        ('include = "maxtext-linen"\n', "include must be a list of preset names"),
        ('include = ["no-such"]\n', "include 'no-such' is not a preset (presets: flax-linen, "),
        ('include = ["../maxtext-linen"]\n', "include '../maxtext-linen' is not a preset"),
    ],
)
def test_bad_rules_file_is_one_line_exit_2(tmp_path, text, needle):
    rules = tmp_path / "bad.toml"
    rules.write_text(text)
    r = run_cli(LINEN, LINEN, "--rules", rules, "--structure-only")
    assert r.code == 2 and needle in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_missing_rules_file():
    r = run_cli(LINEN, LINEN, "--rules", "/no/such.toml")
    assert r.code == 2 and "cannot read rules file" in r.err


def test_rules_apply_to_both_sides_alike_so_equal_trees_stay_equal(tmp_path):
    """One rules file maps both sides: transposing or unstacking a leaf both sides hold keeps them equal."""
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    save(tmp_path / "a", {"w": x})
    save(tmp_path / "b", {"w": x})
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nop = "transpose"\npath = "w"\naxes = [1, 0]\n')
    r = run_cli(tmp_path / "a", tmp_path / "b", "--rules", rules, "--json", "-", "-q")
    assert r.code == 0 and statuses(r) == {"w": "equal"}
    assert r.json["leaves"][0]["shape"] == [6, 4] and r.json["leaves"][0]["source_a"].startswith("transpose(")
    rules.write_text('[[rule]]\nop = "unstack"\nfrom = "w"\naxis = 0\nto = "w_{i}"\n')
    r = run_cli(tmp_path / "a", tmp_path / "b", "--rules", rules, "--json", "-", "-q")
    assert r.code == 0 and statuses(r) == {f"w_{i}": "equal" for i in range(4)}


def test_wrong_rule_is_caught_as_shape_mismatch(tmp_path):
    """B stores the kernel transposed under another name. A rename without the transpose pairs
    (4, 6) with (6, 4): a shape mismatch, exit 1. The right rules (transpose, then rename) make it equal."""
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    save(tmp_path / "a", {"w": x})
    save(tmp_path / "b", {"w_t": x.T.copy()})
    rules = tmp_path / "r.toml"
    rename = '[[rule]]\nop = "rename"\nfrom = "w_t"\nto = "w"\n'
    rules.write_text(rename)
    r = run_cli(tmp_path / "a", tmp_path / "b", "--rules", rules, "--json", "-", "-q")
    assert r.code == 1 and statuses(r) == {"w": "shape_mismatch"}
    leaf = r.json["leaves"][0]
    assert (leaf["shape"], leaf["shape_b"]) == ([4, 6], [6, 4]) and r.json["summary"]["shape_mismatch"] == 1
    rules.write_text('[[rule]]\nop = "transpose"\npath = "w_t"\naxes = [1, 0]\n' + rename)
    r = run_cli(tmp_path / "a", tmp_path / "b", "--rules", rules, "--json", "-", "-q")
    assert r.code == 0 and statuses(r) == {"w": "equal"}


def test_display_paths_round_trip():
    from streamdiff.datatypes import format_path, parse_path

    for path in [("mlp/~/linear_0", "w"), ("a~b", ""), ("x",), ()]:
        assert parse_path(format_path(path)) == path
    assert format_path(("mlp/~/linear_0", "w")) == "mlp~1~0~1linear_0/w"


def test_pattern_language():
    p = Pattern.compile("params/{scope:**}/layers_{i:int}/{leaf}")
    caps = p.match(("params", "a", "b", "layers_12", "kernel"))
    assert caps == {"scope": ("a", "b"), "i": "12", "leaf": "kernel"}
    assert p.match(("params", "layers_x", "kernel")) is None
    assert fill("m/{scope}/L{i}/{leaf}", caps) == ("m", "a", "b", "L12", "kernel")
    assert Pattern.compile("**").match(()) == {} and Pattern.compile("a/*").match(("a", "b")) == {}


# ----------------------------------------------------------------------- property: undo the rules


@st.composite
def disguised(draw):
    """A tree, and the same tree renamed, transposed and unstacked, with the rules that undo it."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    layers = draw(st.integers(2, 4))
    d1, d2 = draw(st.integers(2, 5)), draw(st.integers(2, 5))
    axis = draw(st.integers(0, 2))
    shape = [d1, d2]
    shape.insert(axis, layers)
    stacked = rng.standard_normal(shape).astype(np.float32)
    emb = rng.standard_normal((d1, d2)).astype(np.float32)
    a = {"params": {"layers": {"kernel": stacked}, "embed": emb}}
    b = {"net": {f"block_{i}": {"w": np.take(stacked, i, axis=axis)} for i in range(layers)}, "emb_T": emb.T.copy()}
    rules = f"""
[[rule]]
op = "rename"
from = "net/block_{{i:int}}/w"
to = "params/layers_{{i}}/kernel"
[[rule]]
op = "stack"
from = "params/layers_{{i:int}}/kernel"
to = "params/layers/kernel"
axis = {axis}
[[rule]]
op = "transpose"
path = "emb_T"
axes = [1, 0]
[[rule]]
op = "rename"
from = "emb_T"
to = "params/embed"
"""
    return a, b, rules


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=disguised(), block_bytes=st.sampled_from([16, None]))
def test_rules_undo_random_renames_transposes_and_stacking(case, block_bytes):
    a, b, rules = case
    with tempfile.TemporaryDirectory() as tmp:
        save(f"{tmp}/a", a)
        save(f"{tmp}/b", b)
        with open(f"{tmp}/undo.toml", "w") as f:
            f.write(rules)
        r = streamdiff.diff(f"{tmp}/a", f"{tmp}/b", rules=[f"{tmp}/undo.toml"], auto=False, block_bytes=block_bytes)
        assert r.exit_code == 0, [(x.path, x.status, x.message) for x in r.leaves]
        assert sorted("/".join(x.path) for x in r.leaves) == ["params/embed", "params/layers/kernel"]
        assert all(x.stats.identical for x in r.leaves)


@pytest.mark.parametrize(
    "a,b", [(NNX, NNX_NOSCAN), (LINEN, NNX_NOSCAN), (LINEN_NOSCAN, NNX), (NNX_RELEASED, NNX_NOSCAN)]
)
def test_scanned_vs_unscanned_across_layouts_pairs_every_weight(a, b):
    """Both spellings of per-layer leaves (layers_<i>, layers/<i>) are stacked to meet a scanned
    side; what stays one-sided is rng state, which the runs really hold differently."""
    r = run_cli(a, b, "--json", "-", "-q", "--structure-only")
    s = statuses(r)
    assert not any(v == "shape_mismatch" for v in s.values()), s
    one_sided = [p for p, v in s.items() if v in ("only_a", "only_b")]
    assert all("/rngs/" in p for p in one_sided), one_sided
    weights = [p for p in s if p.endswith("/kernel") and "/layers/" in p]
    assert weights and all(s[p] == "equal" for p in weights)  # structure-only: paired and same shape


def test_stack_rule_with_two_leaves_at_one_index_is_an_error_not_a_silent_drop(tmp_path):
    """decoder/layers_0 and encoder/layers_0 both stacking into layers/w at index 0 dropped one."""
    tree = {blk: {f"layers_{i}": {"w": np.full(3, i, np.float32)} for i in range(2)} for blk in ("decoder", "encoder")}
    save(tmp_path / "a", tree)
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nop = "stack"\nfrom = "{blk}/layers_{i}/{name:**}"\naxis = 0\nto = "layers/{name}"\n')
    r = run_cli(tmp_path / "a", tmp_path / "a", "--rules", rules, "-q")
    assert r.code == 2 and "both stack into layers/w at index 0" in r.err, r.err


def test_allow_dtype_int64_against_float64_differing_by_one_above_2_53_exits_1(tmp_path):
    """float64 cannot hold 2**60 + 1: the pairing allowed by a rule must still see the difference."""
    save(tmp_path / "a", {"n": np.array([2**60 + 1, 3], np.int64)})
    save(tmp_path / "b", {"n": np.array([2.0**60, 3.0], np.float64)})
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nop = "allow_dtype"\npath = "n"\ndtypes = ["int64", "float64"]\n')
    r = run_cli(tmp_path / "a", tmp_path / "b", "--rules", rules, "--json", "-", "-q")
    leaf = r.json["leaves"][0]
    assert (r.code, leaf["status"], leaf["mismatches"], leaf["max_abs_diff"]) == (1, "different", 1, 1.0)


# ------------------------------------------------------------------------------- preset includes

#: streamdiff/presets/maxtext-nnx-released.toml as it was before it included maxtext-linen (d518ffe).
OLD_RELEASED = """
name = "maxtext-nnx-released"
description = "MaxText released NNX (pure_nnx=True, 0.2.x): the Linen layout plus nnx_aux/model/... rng state"

[[rule]]
op = "rename"
from = "params/params/{rest:**}"
to = "model/{rest}"

[[rule]]
op = "rename"
from = "nnx_aux/model/{rest:**}"
to = "model/{rest}"

[[rule]]
op = "rename"
from = "opt_state/{i}/{moment}/params/{rest:**}"
to = "optimizer/opt_state/{i}/{moment}/{rest}"

[[rule]]
op = "rename"
from = "opt_state/{rest:**}"
to = "optimizer/opt_state/{rest}"

[[rule]]
op = "rename"
from = "step"
to = "optimizer/step"

[[rule]]
op = "ignore"
path = "optimizer/opt_state/*"
kind = "empty"

[[rule]]
op = "allow_dtype"
path = "optimizer/step"
dtypes = ["int32", "uint32"]

# Unscanned rng state under nnx_aux keeps NNX's layers/<i> dict keys; the canonical form is layers_<i>.
[[rule]]
op = "rename"
from = "{pre:**}/layers/{i:int}/{rest:**}"
to = "{pre}/layers_{i}/{rest}"
"""


def test_released_preset_includes_linen_and_holds_the_rules_the_old_file_repeated():
    old = [r.args for r in parse_rules(OLD_RELEASED, "old").rules]
    new = [r.args for r in load_preset("maxtext-nnx-released").rules]
    assert new[:6] == [r.args for r in load_preset("maxtext-linen").rules]  # the included file, first
    # The same 8 rules; the nnx_aux rename now runs after the Linen ones instead of second.
    assert len(new) == len(old) == 8 and new == old[:1] + old[2:7] + [old[1]] + old[7:]


def test_released_preset_maps_the_released_corpus_exactly_as_the_old_file_did():
    """Moving the nnx_aux rename after the Linen rules changes nothing: no Linen rule matches an
    nnx_aux/ path before it is renamed, nor a model/ path after."""
    tree = read_item(locate(str(NNX_RELEASED)).items[0])
    leaves = {p: replace(leaf, source_path=p) for p, leaf in tree.leaves.items()}
    got = [apply_rules(leaves, [rs]) for rs in (parse_rules(OLD_RELEASED, "old"), load_preset("maxtext-nnx-released"))]
    old, new = ({format_path(p): (source_of(x), x.shape, x.dtype, x.kind) for p, x in m.leaves.items()} for m in got)
    assert new == old and list(new) == list(old) and len(new) == 69
    rng = "decoder/layers/mlp/dropout/rngs/aqt/key"
    assert new[f"model/{rng}"][0] == f"nnx_aux/model/{rng}"  # renamed by the rule that moved
    assert got[1].ignored == got[0].ignored == ["opt_state/1"]
    assert [(p.text, d) for p, d in got[1].allow_dtypes] == [(p.text, d) for p, d in got[0].allow_dtypes]


def test_every_shipped_preset_loads_with_its_includes():
    for name in PRESETS:
        assert load_preset(name).rules, name
    shipped = sorted(f.name for f in PRESET_DIR.iterdir() if f.name.endswith(".toml"))
    assert shipped == sorted(f"{n}.toml" for n in PRESETS)


def test_a_rules_file_can_include_a_preset(tmp_path):
    """--no-auto turns the presets off; a user file including maxtext-linen maps both sides to model/..."""
    rules = tmp_path / "r.toml"
    rules.write_text('include = ["maxtext-linen"]\n')
    r = run_cli(LINEN, LINEN, "--no-auto", "--rules", rules, "--json", "-", "-q", "--structure-only")
    s = statuses(r)
    assert r.code == 0 and len(s) == 39 and "optimizer/step" in s and not any(p.startswith("params/") for p in s)
    assert r.json["ignored"] == {"a": ["opt_state/1"], "b": ["opt_state/1"]}


def _write_presets(directory: Path, files: dict[str, list[str]]) -> None:
    """One preset file per name, including the listed presets and ignoring the path of its own name."""
    for name, includes in files.items():
        inc = ", ".join(f'"{x}"' for x in includes)
        (directory / f"{name}.toml").write_text(f'include = [{inc}]\n[[rule]]\nop = "ignore"\npath = "{name}"\n')


@pytest.mark.parametrize(
    "files,needle",
    [
        ({"a": ["b"], "b": ["a"]}, "preset b: include cycle a -> b -> a"),
        ({"a": ["a"]}, "preset a: include cycle a -> a"),
        ({"a": ["b"], "b": ["c"], "c": ["b"]}, "preset c: include cycle a -> b -> c -> b"),
    ],
)
def test_preset_include_cycle_is_refused_in_one_line(tmp_path, files, needle):
    _write_presets(tmp_path, files)
    with pytest.raises(RulesError) as e:
        read_preset("a", tmp_path)
    assert str(e.value) == needle


def test_preset_included_twice_without_a_cycle_is_expanded_twice(tmp_path):
    """a includes b and c, both include d: a diamond, not a cycle."""
    _write_presets(tmp_path, {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []})
    assert [r.args["path"] for r in read_preset("a", tmp_path).rules] == ["d", "b", "d", "c", "a"]
    assert [r.origin for r in read_preset("b", tmp_path).rules] == ["preset d rule 1", "preset b rule 1"]


# --------------------------------------------------------------------- the view helpers, directly


def test_move_axis_permutes_as_numpy_moveaxis_for_every_source_and_destination():
    for rank in range(1, 5):
        x = np.arange(np.prod(range(2, rank + 2))).reshape(range(2, rank + 2))
        for src in range(rank):
            for dst in range(rank):
                np.testing.assert_array_equal(np.transpose(x, move_axis(rank, src, dst)), np.moveaxis(x, src, dst))


def test_stacked_views_a_clean_run_and_refuses_gaps_and_unequal_shapes():
    def leaf(i: int, shape=(2, 3)) -> Leaf:
        return Leaf(("l", str(i)), Kind.ARRAY, "np.ndarray", shape, "float32", value=np.full(shape, i, np.float32))

    got = stacked({1: leaf(1), 0: leaf(0), 2: leaf(2)}, ("layers",), lambda shape, n: 1)
    assert got.path == ("layers",) and got.shape == (2, 3, 3)
    assert got.view.describe() == "stack([l/0, l/1, l/2], axis 1)"
    want = np.stack([np.full((2, 3), i) for i in range(3)], 1)
    np.testing.assert_array_equal(got.view.open(None).read().result(), want)
    assert stacked({0: leaf(0), 2: leaf(2)}, ("layers",), lambda shape, n: 1) is None  # gap at 1
    assert stacked({1: leaf(1), 2: leaf(2)}, ("layers",), lambda shape, n: 1) is None  # no layer 0
    assert stacked({0: leaf(0), 1: leaf(1, (3, 2))}, ("layers",), lambda shape, n: 1) is None
    assert stacked({0: leaf(0), 1: leaf(1)}, ("layers",), lambda shape, n: None) is None  # no axis fits
