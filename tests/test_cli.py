"""The CLI surface: JSON contract, terminal report, exit codes, entry points."""

from __future__ import annotations

import json
import math
import os
import pty
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import MAXTEXT, run_cli
from helpers import save

from streamdiff.report import TABLE_ROWS

LINEN = MAXTEXT / "v024_linen_scan/checkpoints"
SEED1 = MAXTEXT / "v024_linen_scan_seed1/checkpoints"

#: Statistics every compared leaf carries (README "JSON contract"; the ValueStats fields not marked WHEN_SET).
ALWAYS = {
    "count": int,
    "mismatches": int,
    "max_abs_diff": (float, str),
    "max_abs_diff_index": (list, type(None)),
    "max_abs_diff_values": (list, type(None)),
    "max_rel_diff": (float, str),
    "max_rel_diff_index": (list, type(None)),
    "rms_diff": (float, str),
    "nan_a": (int, type(None)),
    "nan_b": (int, type(None)),
    "inf_a": (int, type(None)),
    "inf_b": (int, type(None)),
    "nan_mismatch": int,
    "identical": bool,
    "blocks": int,
    "shortcut_chunks": int,
    "shortcut_bytes": int,
}
#: Present only when they say something (README): streamed chunks, read amplification above 1.
SOMETIMES = {"streamed", "read_amplification", "max_abs_diff_allowed", "layers"}
STATUSES = {"equal", "different", "only_a", "only_b", "shape_mismatch", "error", "not_compared"}


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
    compared = 0
    for leaf in d["leaves"]:
        assert leaf["status"] in STATUSES
        assert leaf["kind"] in {"array", "scalar", "string", "prng_key", "empty", "json"}
        if leaf["kind"] == "empty":
            continue
        assert isinstance(leaf["shape"], list) and isinstance(leaf["dtype"], str)
        compared += 1
        stats = set(leaf) - {"path", "status", "kind", "shape", "dtype", "kind_b", "shape_b", "dtype_b", "message"}
        assert set(ALWAYS) <= stats <= set(ALWAYS) | SOMETIMES, (leaf["path"], stats ^ set(ALWAYS))
        for key, types in ALWAYS.items():
            assert isinstance(leaf[key], types) and not (types is int and isinstance(leaf[key], bool)), (key, leaf)
        assert leaf.get("streamed", True) is True and leaf.get("read_amplification", 2.0) > 1.0
    assert compared == 39  # every leaf holding data (opt_state/1 is an empty node)


def test_json_to_file_and_terminal_report_in_one_run(tmp_path):
    out = tmp_path / "r.json"
    r = run_cli(LINEN, SEED1, "--json", out)
    assert r.code == 1
    assert json.loads(out.read_text())["summary"]["different"] == 36
    first = r.out.splitlines()[0]
    assert first == "36 of 40 leaves differ (atol=0, rtol=0)"  # the tolerance in force, in every verdict
    assert "params/params/token_embedder/embedding" in r.out


def table_leaves(text: str) -> list[str]:
    """Leaf names in the order the terminal table lists them."""
    return re.findall(r"^(w_\d\d)\s+float32", text, re.MULTILINE)  # table rows, not the values lines


def test_table_is_truncated_to_the_worst_leaves_most_mismatches_first(tmp_path):
    """TABLE_ROWS + 5 differing leaves, w_i with i + 1 mismatching elements: the table shows the
    TABLE_ROWS worst, most mismatches first; the 5 mildest are left out and counted."""
    n = TABLE_ROWS + 5
    a = {f"w_{i:02d}": np.zeros(64, np.float32) for i in range(n)}
    b = {k: v.copy() for k, v in a.items()}
    for i in range(n):
        b[f"w_{i:02d}"][: i + 1] = 1.0
    save(tmp_path / "a", a)
    save(tmp_path / "b", b)
    r = run_cli(tmp_path / "a", tmp_path / "b")
    assert r.code == 1 and r.out.splitlines()[0] == f"{n} of {n} leaves differ (atol=0, rtol=0)"
    assert table_leaves(r.out) == [f"w_{i:02d}" for i in range(n - 1, 4, -1)]
    assert "... 5 more differing leaves (--verbose or --json)" in r.out
    verbose = run_cli(tmp_path / "a", tmp_path / "b", "-v")
    assert table_leaves(verbose.out) == [f"w_{i:02d}" for i in range(n - 1, -1, -1)]


def test_table_ties_on_mismatches_are_ordered_by_max_abs_diff(tmp_path):
    """Same number of mismatching elements: the larger max |a-b| comes first, whatever the name order."""
    a = {f"w_{i:02d}": np.zeros(8, np.float32) for i in range(3)}
    b = {"w_00": np.full(8, 1.0, np.float32), "w_01": np.full(8, 3.0, np.float32), "w_02": np.full(8, 2.0, np.float32)}
    save(tmp_path / "a", a)
    save(tmp_path / "b", b)
    assert table_leaves(run_cli(tmp_path / "a", tmp_path / "b").out) == ["w_01", "w_02", "w_00"]


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


def test_within_atol_is_exit_0_equal_within_tolerance_and_exact_is_exit_1(tmp_path):
    a = {"w": np.linspace(0, 1, 1000, dtype=np.float32)}
    b = {"w": a["w"] + np.float32(1e-7)}
    save(tmp_path / "a", a)
    save(tmp_path / "b", b)
    strict = run_cli(tmp_path / "a", tmp_path / "b")
    assert strict.code == 1
    loose = run_cli(tmp_path / "a", tmp_path / "b", "--atol", "1e-6")
    assert loose.code == 0 and loose.out.startswith("equal within tolerance (atol=1e-06, rtol=0)")


def test_nonfinite_numbers_are_strings_in_json_and_nan_unequal_counts_nan_pairs(tmp_path):
    a = {"w": np.array([1.0, np.inf, np.nan, 0.0], np.float32)}
    b = {"w": np.array([1.0, 2.0, np.nan, 0.0], np.float32)}
    save(tmp_path / "a", a)
    save(tmp_path / "b", b)
    r = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")
    leaf = r.json["leaves"][0]
    assert leaf["max_abs_diff"] == "inf" and leaf["max_abs_diff_index"] == [1]
    assert leaf["nan_a"] == 1 and leaf["mismatches"] == 1
    assert math.isinf(float(leaf["rms_diff"]))
    nan_unequal = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q", "--nan-unequal")
    assert nan_unequal.json["leaves"][0]["mismatches"] == 2


def test_dtype_difference_is_reported_and_values_compared(tmp_path):
    import ml_dtypes

    w = np.arange(8, dtype=np.float32)
    save(tmp_path / "a", {"w": w})
    save(tmp_path / "b", {"w": w.astype(ml_dtypes.bfloat16)})
    r = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")
    leaf = r.json["leaves"][0]
    assert r.code == 1 and leaf["status"] == "different" and leaf["dtype_b"] == "bfloat16"
    assert leaf["count"] == 8 and leaf["mismatches"] == 0 and r.json["summary"]["dtype_mismatch"] == 1


@pytest.mark.parametrize("size,expected", [("512M", 512 << 20), ("4G", 4 << 30), ("1.5GiB", 3 << 29), ("1000", 1000)])
def test_parse_size(size, expected):
    from streamdiff.cli import parse_size

    assert parse_size(size) == expected


def test_help_shows_defaults_and_semantics():
    r = run_cli("--help")
    assert r.code == 0
    for needle in ("--max-memory", "[default: 2G]", "atol + rtol*|b|", "Exit codes"):
        assert needle in r.out, needle


def test_console_script_and_module_exit_1_on_two_different_runs():
    exe = os.path.join(os.path.dirname(sys.executable), "streamdiff")
    for cmd in ([exe], [sys.executable, "-m", "streamdiff"]):
        p = subprocess.run(cmd + [str(LINEN), str(SEED1), "-q"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 1, p.stderr


def test_progress_bar_only_on_a_terminal():
    """The CLI's own terminal check: stderr piped gets no progress bar; stderr on a pseudo-terminal
    gets one (rich's 'comparing' bar over bytes) while the report still goes to piped stdout."""
    piped = run_cli(LINEN, SEED1)  # not -q: the report prints, but stderr stays clean
    assert piped.err == "" and piped.out.startswith("36 of 40")
    leader, follower = pty.openpty()
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "streamdiff", str(LINEN), str(SEED1)],
            stdout=subprocess.PIPE,
            stderr=follower,
            env=dict(os.environ, COLUMNS="120", TERM="xterm"),
        )
        os.close(follower)
        terminal = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        out = p.stdout.read().decode()
        assert p.wait(timeout=120) == 1
    finally:
        os.close(leader)
    assert out.startswith("36 of 40 leaves differ")
    assert b"comparing" in terminal, terminal[-2000:]


def test_file_urls():
    assert run_cli(f"file://{LINEN}", LINEN, "-q").code == 0
    assert run_cli(f"file:///{LINEN}/", f"{LINEN}/", "-q").code == 0  # extra slashes are harmless
    bad = run_cli("file://relative/path", LINEN)
    assert bad.code == 2 and "absolute path" in bad.err
