"""The CLI surface: JSON contract, terminal report, exit codes, entry points."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import MAXTEXT, run_cli

LINEN = MAXTEXT / "v024_linen_scan/checkpoints"
SEED1 = MAXTEXT / "v024_linen_scan_seed1/checkpoints"

LEAF_FIELDS = {
    "count",
    "mismatches",
    "max_abs_diff",
    "max_abs_diff_index",
    "max_rel_diff",
    "rms_diff",
    "nan_a",
    "nan_b",
    "identical",
}


def test_json_contract_fields():
    r = run_cli(LINEN, SEED1, "--atol", "1e-6", "--rtol", "1e-5", "--json", "-", "-q")
    assert r.code == 1
    d = r.json
    assert d["schema"] == "streamdiff/1"
    assert d["a"] == str(LINEN) and d["b"] == str(SEED1)
    assert d["equal"] is False and d["tolerance"] == {"atol": 1e-6, "rtol": 1e-5, "nan_equal": True}
    s = d["summary"]
    for k in ("leaves", "equal", "different", "only_a", "only_b", "shape_mismatch", "dtype_mismatch", "errors"):
        assert isinstance(s[k], int), k
    assert s["leaves"] == len(d["leaves"]) == s["equal"] + s["different"]
    assert s["bytes_read"] > 0 and s["requests"] > 0 and s["seconds"] > 0
    for leaf in d["leaves"]:
        assert leaf["status"] in {"equal", "different", "only_a", "only_b", "shape_mismatch", "error"}
        assert leaf["kind"] in {"array", "scalar", "string", "prng_key", "empty"}
        if leaf["kind"] != "empty":
            assert LEAF_FIELDS <= set(leaf), leaf["path"]
            assert isinstance(leaf["shape"], list) and isinstance(leaf["dtype"], str)


def test_json_to_file_and_terminal_report(tmp_path):
    out = tmp_path / "r.json"
    r = run_cli(LINEN, SEED1, "--json", out)
    assert r.code == 1
    assert json.loads(out.read_text())["summary"]["different"] == 36
    first = r.out.splitlines()[0]
    assert first == "36 of 40 leaves differ (atol=0, rtol=0)"  # the tolerance in force, in every verdict
    assert "params/params/token_embedder/embedding" in r.out  # worst leaf is in the table


def test_json_stdout_is_pure_json_and_report_goes_to_stderr():
    r = run_cli(LINEN, SEED1, "--json", "-")
    json.loads(r.out)
    assert "leaves differ" in r.err


def test_verbose_lists_equal_leaves_and_quiet_prints_nothing():
    v = run_cli(LINEN, SEED1, "-v")
    assert "opt_state/0/count" in v.out  # an equal leaf
    q = run_cli(LINEN, SEED1, "-q")
    assert q.out == "" and q.err == "" and q.code == 1


def test_identical_verdict_and_exit_0():
    r = run_cli(LINEN, LINEN)
    assert r.code == 0 and r.out.startswith("identical: 40 leaves")


def test_structure_only_verdict():
    r = run_cli(LINEN, SEED1, "--structure-only")
    assert r.code == 0 and r.out.startswith("same structure: 40 leaves (values not compared)")


def test_equal_within_tolerance(tmp_path):
    import orbax.checkpoint as ocp

    a = {"w": np.linspace(0, 1, 1000, dtype=np.float32)}
    b = {"w": a["w"] + np.float32(1e-7)}
    for name, tree in (("a", a), ("b", b)):
        ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).save(tmp_path / name, args=ocp.args.PyTreeSave(tree))
    strict = run_cli(tmp_path / "a", tmp_path / "b")
    assert strict.code == 1
    loose = run_cli(tmp_path / "a", tmp_path / "b", "--atol", "1e-6")
    assert loose.code == 0 and loose.out.startswith("equal within tolerance (atol=1e-06, rtol=0)")


def test_nonfinite_numbers_are_strings_in_json(tmp_path):
    import orbax.checkpoint as ocp

    a = {"w": np.array([1.0, np.inf, np.nan, 0.0], np.float32)}
    b = {"w": np.array([1.0, 2.0, np.nan, 0.0], np.float32)}
    for name, tree in (("a", a), ("b", b)):
        ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).save(tmp_path / name, args=ocp.args.PyTreeSave(tree))
    r = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")
    leaf = r.json["leaves"][0]
    assert leaf["max_abs_diff"] == "inf" and leaf["max_abs_diff_index"] == [1]
    assert leaf["nan_a"] == 1 and leaf["mismatches"] == 1
    assert math.isinf(float(leaf["rms_diff"]))
    nan_unequal = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q", "--nan-unequal")
    assert nan_unequal.json["leaves"][0]["mismatches"] == 2


def test_dtype_difference_is_reported_and_values_compared(tmp_path):
    import ml_dtypes
    import orbax.checkpoint as ocp

    w = np.arange(8, dtype=np.float32)
    for name, tree in (("a", {"w": w}), ("b", {"w": w.astype(ml_dtypes.bfloat16)})):
        ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).save(tmp_path / name, args=ocp.args.PyTreeSave(tree))
    r = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")
    leaf = r.json["leaves"][0]
    assert r.code == 1 and leaf["status"] == "different" and leaf["dtype_b"] == "bfloat16"
    assert leaf["mismatches"] == 0 and r.json["summary"]["dtype_mismatch"] == 1


@pytest.mark.parametrize("size,expected", [("512M", 512 << 20), ("4G", 4 << 30), ("1.5GiB", 3 << 29), ("1000", 1000)])
def test_parse_size(size, expected):
    from streamdiff.cli import parse_size

    assert parse_size(size) == expected


def test_help_shows_defaults_and_semantics():
    r = run_cli("--help")
    assert r.code == 0
    for needle in ("--max-memory", "[default: 2G]", "atol + rtol*|b|", "Exit codes"):
        assert needle in r.out, needle


def test_console_script_and_module_run_a_real_diff():
    exe = os.path.join(os.path.dirname(sys.executable), "streamdiff")
    for cmd in ([exe], [sys.executable, "-m", "streamdiff"]):
        p = subprocess.run(cmd + [str(LINEN), str(SEED1), "-q"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 1, p.stderr


def test_progress_bar_only_on_a_terminal():
    """Piped stderr gets no progress bar; a terminal gets one, over bytes of both sides."""
    import io

    from rich.console import Console

    from streamdiff.cli import _Bar

    piped = run_cli(LINEN, SEED1)  # not -q: the report prints, but stderr stays clean
    assert piped.err == "" and piped.out.startswith("36 of 40")
    buf = io.StringIO()
    bar = _Bar(Console(file=buf, force_terminal=True, width=100))
    bar.start(2_000_000)
    bar.advance(1_000_000)
    bar.progress.refresh()
    bar.stop()
    assert "comparing" in buf.getvalue() and "MB" in buf.getvalue()


def test_file_urls():
    assert run_cli(f"file://{LINEN}", LINEN, "-q").code == 0
    assert run_cli(f"file:///{LINEN}/", f"{LINEN}/", "-q").code == 0  # extra slashes are harmless
    bad = run_cli("file://relative/path", LINEN)
    assert bad.code == 2 and "absolute path" in bad.err
