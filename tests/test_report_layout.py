"""The terminal report at any width: one line per leaf, numbers never wrapped, paths shortened in the
middle, the verdict again at the end of a long report; grouped one-sided paths; values at max |a-b|."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from conftest import MAXTEXT, run_cli
from rich.console import Console
from test_maxtext import load

from streamdiff import diff
from streamdiff.mapping.patterns import Pattern
from streamdiff.report import distinct, fmt_number, group_paths, render, severity, shorten

RUN = MAXTEXT / "v024_linen_scan/checkpoints"
NNX_NOSCAN = MAXTEXT / "pr283f88b_nnx_noscan/checkpoints"


@pytest.fixture(scope="module")
def steps_report():
    return diff(str(RUN / "0"), str(RUN / "1"), atol=1e-6, rtol=1e-5)


def recorded(report, width: int, **kw) -> list[str]:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    render(report, console, **kw)
    return console.export_text().splitlines()


def table_rows(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith("leaf "))
    rows = []
    for line in lines[start + 1 :]:
        if not line or line.endswith(":") or line.startswith("..."):
            break
        rows.append(line)
    return rows


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_every_differing_leaf_is_one_line_with_its_numbers_whole_and_no_line_wider_than_the_console(
    steps_report, width
):
    lines = recorded(steps_report, width)
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    differing = sorted((x for x in steps_report.leaves if x.stats and x.status != "equal"), key=severity)
    rows = table_rows(lines)
    assert len(rows) == len(differing) == 36
    for row, leaf in zip(rows, differing):
        tokens = row.split()
        s = leaf.stats
        assert tokens[0].split("/")[-1] == leaf.path[-1]  # the last key always stays: it names the leaf
        assert any(t == str(s.mismatches) or t.startswith(f"{s.mismatches}/") for t in tokens), row
        assert fmt_number(s.max_abs_diff) in tokens, row  # second in importance: present at every width
        if width >= 200:  # the whole table, with rows that still read distinct
            assert ("x".join(map(str, leaf.shape)) or "()") in tokens and fmt_number(s.rms_diff) in tokens, row
    if width >= 80:
        names = [row.split("  ")[0] for row in rows]
        assert len(set(names)) == len(names), names  # no two rows read the same (mu vs nu of one kernel)


def test_full_table_when_wide_enough_for_distinct_rows_and_fewer_columns_below(steps_report):
    """At 120 columns every column would leave 28 for paths, where the mu and nu copies of a layer
    norm read the same: the least important columns go first, never the rows' distinctness."""
    header = {w: next(line for line in recorded(steps_report, w) if line.startswith("leaf ")) for w in (60, 120, 200)}
    for col in ("dtype", "shape", "mismatches", "max |a-b|", "at", "max rel", "rms", "NaN a/b"):
        assert col in header[200]
    assert "NaN a/b" not in header[120] and all(c in header[120] for c in ("mismatches", "max |a-b|", "max rel"))
    assert "mismatches" in header[60] and "max |a-b|" in header[60] and "NaN a/b" not in header[60]


def test_long_report_ends_with_the_verdict_and_it_shows_the_tolerance(steps_report):
    lines = recorded(steps_report, 80)
    assert lines[0] == lines[-1] == "36 of 40 leaves differ (atol=1e-06, rtol=1e-05)"


@pytest.mark.parametrize("width", [8, 12, 20, 30, 45])
def test_shorten_keeps_the_last_key_and_fits(width):
    path = "opt_state/0/mu/params/decoder/layers/self_attention/query/kernel"
    s = shorten(path, width)
    assert len(s) <= width and "…" in s
    assert s.endswith("kernel") or s.startswith("…") and "kernel".endswith(s[1:])
    assert shorten(path, len(path)) == path


def test_piped_output_is_120_columns_or_columns_env(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    wide = run_cli(RUN / "0", RUN / "1").out.splitlines()
    assert max(len(line) for line in wide) <= 120 and "rms" in next(x for x in wide if x.startswith("leaf "))
    monkeypatch.setenv("COLUMNS", "70")
    narrow = run_cli(RUN / "0", RUN / "1").out.splitlines()
    assert max(len(line) for line in narrow) <= 70 and "NaN a/b" not in next(x for x in narrow if x.startswith("leaf "))


def test_one_sided_paths_are_grouped_by_a_pattern_that_matches_them_and_verbose_lists_them():
    r = run_cli(RUN, NNX_NOSCAN, "--structure-only")
    only_b = [line for line in r.out.splitlines() if "only in B" in line]
    assert only_b == ["  only in B: 48 paths matching model/decoder/**/rngs/*/* (--verbose lists them)"]
    v = run_cli(RUN, NNX_NOSCAN, "--structure-only", "-v", "--json", "-")
    listed = [line for line in v.err.splitlines() if line.startswith("  only in B: ")]
    one_sided = [x["path"] for x in v.json["leaves"] if x["status"] == "only_b"]
    assert len(listed) == len(one_sided) == 48
    pattern = Pattern.compile("model/decoder/**/rngs/*/*")
    assert all(pattern.match(tuple(p.split("/"))) is not None for p in one_sided)
    # --structure-only --verbose lists the matched leaves too
    matched = [x["path"] for x in v.json["leaves"] if x["status"] == "equal"]
    assert len(matched) == 39 and all(f"  {p} (" in v.err for p in matched)


def test_group_paths_patterns_match_their_members():
    paths = [tuple(p.split("/")) for p in ("p/a/kernel", "p/b/kernel", "o/x/k", "o/y/b", "o/y/c/d")]
    groups = group_paths(paths)
    assert sorted(len(m) for _, m in groups) == [2, 3]
    for pattern, members in groups:
        assert all(Pattern.compile(pattern).match(m) is not None for m in members), pattern


def test_values_at_max_abs_diff_equal_numpy_and_allowed_is_the_tolerance_there(steps_report):
    lines = recorded(steps_report, 200, verbose=True)
    checked = 0
    for leaf in steps_report.leaves:
        s = leaf.stats
        if not s or s.max_abs_diff_index is None:
            continue
        a = load(RUN / "0/items", leaf.name)
        b = load(RUN / "1/items", leaf.name)
        k = tuple(s.max_abs_diff_index)
        exact = a.dtype.kind in "iub"
        want = (a[k].item(), b[k].item()) if exact else (float(a[k]), float(b[k]))
        assert s.max_abs_diff_values == want, leaf.name
        allowed = 0.0 if exact else 1e-6 + 1e-5 * abs(float(b[k]))
        assert s.max_abs_diff_allowed == pytest.approx(allowed, rel=1e-12), leaf.name
        checked += 1
        if leaf.status == "equal":
            continue
        at = "[" + ",".join(map(str, k)) + "]"
        va, vb = (str(v) for v in want) if exact else distinct(*want)
        assert float(va) != float(vb)  # printed with the digits that tell them apart
        line = f"{leaf.name}: a={va} b={vb} at {at}, allowed {fmt_number(allowed)}"
        assert f"  {line}" in lines, line
    assert checked == 39


def test_values_at_max_abs_diff_are_in_the_json():
    d = run_cli(RUN / "0", RUN / "1", "--json", "-", "-q").json
    leaf = next(x for x in d["leaves"] if x["path"] == "params/params/decoder/layers/mlp/wo/kernel")
    a = load(RUN / "0/items", leaf["path"])
    b = load(RUN / "1/items", leaf["path"])
    k = tuple(leaf["max_abs_diff_index"])
    assert leaf["max_abs_diff_values"] == [float(a[k]), float(b[k])]
    assert leaf["max_abs_diff"] == abs(float(a[k]) - float(b[k]))
    assert np.isclose(leaf["max_abs_diff"], np.abs(a.astype(np.float64) - b).max(), rtol=0)


def test_terminal_numbers_never_split_across_lines_at_60_columns(steps_report):
    text = "\n".join(recorded(steps_report, 60))
    assert not re.search(r"[0-9.e+-]\n[0-9]", text)


def test_piped_stdout_takes_the_width_of_the_terminal_the_process_still_has():
    """`streamdiff A B | less` in a 70-column terminal: stdout is a pipe, stderr the terminal."""
    import fcntl
    import os
    import struct
    import subprocess
    import sys
    import termios
    import threading

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 70, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}

    def drain():  # the progress bar writes to the terminal: keep its buffer from filling up
        try:
            while os.read(master, 4096):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "streamdiff", str(RUN / "0"), str(RUN / "1")],
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=120,
            text=True,
        )
    finally:
        os.close(slave)
        os.close(master)
    lines = p.stdout.splitlines()
    assert p.returncode == 1 and lines[0].startswith("39 of 40 leaves differ")
    assert max(len(line) for line in lines) <= 70 < max(len(line) for line in lines) + 10


@pytest.mark.parametrize("a, b", [(0.28258681, 0.28258371), (0.49629003, 0.49628001), (1e-8, 1.2e-8), (-3.5, 2.0)])
def test_values_at_max_show_their_real_gap_to_two_digits(a, b):
    """0.28258681 vs 0.28258371 printed as 0.28259 vs 0.28258 showed a gap 3x the real one."""
    from streamdiff.report import distinct

    sa, sb = distinct(a, b)
    assert abs((float(sa) - float(sb)) - (a - b)) <= 0.05 * abs(a - b), (sa, sb)


@pytest.mark.parametrize("width", [80, 120])
def test_shortened_rows_stay_distinct_and_notes_keep_the_typed_path(width, monkeypatch):
    """mu and nu copies of one kernel used to shorten to the same `opt_state/0/…/kernel` row."""
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.chdir(MAXTEXT.parent.parent.parent)  # the repository root: paths as a user types them
    run = "tests/data/maxtext/v024_linen_scan/checkpoints"
    r = run_cli(run, "tests/data/maxtext/v024_linen_scan_seed1/checkpoints")
    lines = r.out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("leaf "))
    rows = [line.split("  ")[0] for line in lines[start + 1 : start + 37]]
    assert len(rows) == 36 and len(set(rows)) == 36, rows
    assert f"ocdbt + zarr3: {run}/1/items" in r.out
