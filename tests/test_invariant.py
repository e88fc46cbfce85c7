"""Exit 0 is a promise: the cases that once ended in a false "identical", and the one place
(`Report.verdict`) that decides what exit 0 means."""

from __future__ import annotations

import pytest
from conftest import MAXTEXT, run_cli

from streamdiff.datatypes import (
    Kind,
    Leaf,
    LeafResult,
    Pair,
    PairStatus,
    Report,
    Status,
    ValueStats,
    Verdict,
    json_equal,
)

RUN = MAXTEXT / "v024_linen_scan/checkpoints"
SEED1 = MAXTEXT / "v024_linen_scan_seed1/checkpoints"


def _report(*leaves: LeafResult, structure_only: bool = False) -> Report:
    return Report("a", "b", 0.0, 0.0, True, structure_only, tuple(leaves))


def _leaf(status: Status, kind: Kind = Kind.ARRAY, identical: bool = True) -> LeafResult:
    if kind != Kind.ARRAY:
        return LeafResult(("x",), status, kind)
    stats = ValueStats(1, 0, 0.0, None, None, 0.0, None, 0.0, 0, 0, 0, 0, 0, identical, 0, 0)
    return LeafResult(("x",), status, kind, stats=stats)


@pytest.mark.parametrize(
    "leaves, verdict, code",
    [
        ((_leaf(Status.EQUAL),), Verdict.IDENTICAL, 0),
        ((_leaf(Status.EQUAL, identical=False),), Verdict.EQUAL, 0),
        ((_leaf(Status.EQUAL), _leaf(Status.NOT_COMPARED)), Verdict.INCOMPLETE, 2),
        ((_leaf(Status.EQUAL), _leaf(Status.DIFFERENT), _leaf(Status.NOT_COMPARED)), Verdict.INCOMPLETE, 2),
        ((_leaf(Status.EQUAL), _leaf(Status.ERROR)), Verdict.ERROR, 2),
        ((_leaf(Status.EQUAL), _leaf(Status.ONLY_B)), Verdict.DIFFERENT, 1),
        ((), Verdict.ERROR, 2),
        ((_leaf(Status.EQUAL, Kind.EMPTY), _leaf(Status.EQUAL, Kind.EMPTY)), Verdict.ERROR, 2),
    ],
)
def test_verdict_is_zero_only_when_every_leaf_holding_data_was_compared_equal(leaves, verdict, code):
    r = _report(*leaves)
    assert r.verdict is verdict
    assert r.exit_code == code


def test_structure_only_with_only_empty_nodes_is_an_error_not_same_structure():
    assert _report(_leaf(Status.EQUAL, Kind.EMPTY), structure_only=True).exit_code == 2


def test_json_equal_tells_bool_int_and_float_apart_and_ignores_key_order():
    assert not json_equal(True, 1) and not json_equal(1, 1.0) and not json_equal(0, False)
    assert json_equal({"a": [1, 2.5, None], "b": "x"}, {"b": "x", "a": [1, 2.5, None]})
    assert not json_equal({"a": [1, 2]}, {"a": [1, 2, 3]})
    assert json_equal(float("nan"), float("nan"))


@pytest.mark.parametrize("opt", ["--atol", "--rtol"])
@pytest.mark.parametrize("value", ["nan", "-nan", "inf", "-1"])
def test_non_finite_or_negative_tolerance_is_refused_with_exit_2(opt, value):
    r = run_cli(RUN, SEED1, opt, value, "-q")
    assert r.code == 2 and r.err.startswith("streamdiff: error: ") and len(r.err.splitlines()) == 1, r.err
    assert "finite number >= 0" in r.err


def test_rules_file_with_nan_tolerance_is_refused(tmp_path):
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nop = "tolerance"\npath = "**"\natol = nan\n')
    r = run_cli(RUN, SEED1, "--rules", rules, "-q")
    assert r.code == 2 and "finite number >= 0" in r.err


def test_step_given_twice_compares_step_0_of_a_with_step_1_of_b():
    r = run_cli(RUN, RUN, "--step", "0", "--step", "1", "--json", "-", "-q")
    assert r.code == 1, r.err
    d = r.json
    assert "step 0" in d["notes"]["a"] and "step 1" in d["notes"]["b"]
    assert d["summary"]["different"] == 39


def test_step_a_and_step_b_match_step_given_twice():
    r_twice = run_cli(RUN, RUN, "--step", "0", "--step", "1", "--json", "-", "-q")
    r_named = run_cli(RUN, RUN, "--step-a", "0", "--step-b", "1", "--json", "-", "-q")
    assert r_twice.code == r_named.code == 1
    twice = [x["max_abs_diff"] for x in r_twice.json["leaves"] if "max_abs_diff" in x]
    assert len(twice) == 39 and twice == [x["max_abs_diff"] for x in r_named.json["leaves"] if "max_abs_diff" in x]


@pytest.mark.parametrize(
    "args",
    [
        ["--step", "0", "--step", "1", "--step", "1"],
        ["--step", "0", "--step", "1", "--step-a", "0"],
        ["--step-a", "0", "--step-b", "1", "--step", "1"],
    ],
)
def test_ambiguous_step_options_are_refused(args):
    r = run_cli(RUN, RUN, *args, "-q")
    assert r.code == 2 and len(r.err.splitlines()) == 1, r.err


def test_step_a_on_a_step_directory_is_refused():
    r = run_cli(RUN / "0", RUN, "--step-a", "0", "-q")
    assert r.code == 2 and "A's step (0) applies to a CheckpointManager root" in r.err


def test_same_directory_on_both_sides_is_said_first():
    d = run_cli(RUN, RUN, "--json", "-", "-q").json
    assert d["notes"]["a"][0].startswith("A and B are the same directory")


def test_rules_that_ignore_every_leaf_are_an_error_not_identical(tmp_path):
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nop = "ignore"\npath = "**"\n')
    r = run_cli(RUN, RUN, "--rules", rules, "-q")
    assert r.code == 2 and "nothing to compare" in r.err, (r.code, r.err)


def test_only_matching_no_leaf_is_an_error_that_says_so_once():
    r = run_cli(RUN, RUN, "--only", "nothing/**", "-q")
    assert r.code == 2
    assert r.err == "streamdiff: error: nothing to compare: --only/--exclude left none of the 40 leaves\n"


def test_api_step_must_be_a_step_number():
    import streamdiff
    from streamdiff.errors import UsageError

    with pytest.raises(UsageError, match="step must be a step number"):
        streamdiff.diff(str(RUN), str(RUN), step=[0, 1])


def test_prng_keys_of_another_impl_or_raw_key_data_are_not_the_same_state(tmp_path):
    """Same key bits under rbg vs unsafe_rbg draw different numbers; a typed key vs its raw uint32
    data is a kind difference: neither is "identical"."""
    import jax
    from helpers import save

    rbg = jax.random.key(0, impl="rbg")
    unsafe = jax.random.wrap_key_data(jax.random.key_data(rbg), impl="unsafe_rbg")
    save(tmp_path / "rbg", {"k": rbg})
    save(tmp_path / "unsafe", {"k": unsafe})
    save(tmp_path / "raw", {"k": jax.random.key_data(rbg)})
    assert run_cli(tmp_path / "rbg", tmp_path / "rbg", "-q").code == 0
    for other, needle in (("unsafe", "PRNG key impl rbg vs unsafe_rbg"), ("raw", "prng_key vs array")):
        d = run_cli(tmp_path / "rbg", tmp_path / other, "--json", "-", "-q").json
        assert d["leaves"][0]["status"] == "different" and needle in d["leaves"][0]["message"], d["leaves"]


def test_nan_in_json_values_follows_nan_unequal():
    assert json_equal({"n": [float("nan")]}, {"n": [float("nan")]})
    assert not json_equal({"n": [float("nan")]}, {"n": [float("nan")]}, nan_equal=False)


def test_nan_unequal_reaches_json_items(tmp_path):
    import numpy as np
    from writers_msgpack import write_orbax_jsonsave

    path = write_orbax_jsonsave(tmp_path / "a", {"w": np.array([np.nan, 1.0], np.float32)})
    assert run_cli(path, path, "-q").code == 0
    d = run_cli(path, path, "--nan-unequal", "--json", "-", "-q").json
    status = {x["path"]: x["status"] for x in d["leaves"]}
    assert status["metadata/values/w/0"] == "different" and status["metadata/values/w/1"] == "equal"


def test_two_step_directories_naming_one_step_are_refused(tmp_path):
    import shutil

    root = tmp_path / "run"
    shutil.copytree(RUN, root)
    shutil.copytree(root / "1", root / "01")
    r = run_cli(root, RUN, "-q")
    assert r.code == 2 and "01 and 1 both name step 1" in r.err, r.err
    assert run_cli(root / "01", RUN / "1", "-q").code == 0  # the directory itself is unambiguous


def test_pair_both_refuses_a_one_sided_pair_instead_of_returning_none():
    leaf = Leaf(("k",), Kind.ARRAY, "jax.Array", shape=(2,), dtype="float32")
    assert Pair(("k",), leaf, leaf, PairStatus.COMPARE).both() == (leaf, leaf)
    with pytest.raises(ValueError, match="k: a compare pair without both sides"):
        Pair(("k",), leaf, None, PairStatus.COMPARE).both()


def test_pair_ref_is_a_then_b_and_refuses_a_pair_with_neither_side():
    a = Leaf(("k",), Kind.ARRAY, "jax.Array", shape=(2,), dtype="float32")
    b = Leaf(("k",), Kind.SCALAR, "scalar", shape=(), dtype="int32")
    assert Pair(("k",), a, b, PairStatus.KIND_MISMATCH).ref is a
    assert Pair(("k",), None, b, PairStatus.ONLY_B).ref is b
    with pytest.raises(ValueError, match="neither side"):
        _ = Pair(("k",), None, None, PairStatus.ERROR).ref
