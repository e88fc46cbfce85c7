"""Render a `Report`: the JSON contract (schema streamdiff/1) and the terminal view."""

from __future__ import annotations

import json
import math
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .datatypes import LeafResult, Report, Verdict, format_path

SCHEMA = "streamdiff/1"
#: Rows of the differing-leaves table shown without --verbose.
TABLE_ROWS = 40


def verdict(r: Report) -> str:
    """One line that says what `Report.verdict` decided (and so what the exit code means)."""
    n = len(r.leaves)
    v = r.verdict
    if v is Verdict.ERROR:
        if r.errors:
            return f"error: {r.errors} of {n} leaves could not be read"
        return f"error: nothing to compare ({n} leaves, none holding data on both sides)"
    if v is Verdict.INCOMPLETE:
        return f"not compared: {r.not_compared} of {n} leaves could not be interpreted; {r.different} differ"
    if r.structure_only:
        if v is Verdict.SAME_STRUCTURE:
            return f"same structure: {n} leaves (values not compared)"
        return f"structure differs: {r.different} of {n} leaves"
    if v is Verdict.IDENTICAL:
        return f"identical: {n} leaves, bit for bit"
    if v is Verdict.EQUAL:
        return f"equal within tolerance (atol={r.atol:g}, rtol={r.rtol:g}): {n} leaves"
    return f"{r.different} of {n} leaves differ"


# ---------------------------------------------------------------------------------------------- JSON


def _num(x: Any) -> Any:
    """JSON has no inf/nan: write them as the strings 'inf', '-inf', 'nan' (documented)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def leaf_json(r: LeafResult) -> dict[str, Any]:
    d: dict[str, Any] = {"path": format_path(r.path), "status": r.status, "kind": r.kind}
    if r.kind_b is not None:
        d["kind_b"] = r.kind_b
    if r.shape is not None:
        d["shape"] = list(r.shape)
    if r.shape_b is not None:
        d["shape_b"] = list(r.shape_b)
    if r.dtype is not None:
        d["dtype"] = r.dtype
    if r.dtype_b is not None:
        d["dtype_b"] = r.dtype_b
    if r.stats:
        d.update({k: _num(v) for k, v in r.stats.items()})
    if r.message is not None:
        d["message"] = r.message
    if r.source_a is not None:
        d["source_a"] = r.source_a
    if r.source_b is not None:
        d["source_b"] = r.source_b
    return d


def to_json(r: Report) -> dict[str, Any]:
    shortcut_chunks = sum((x.stats or {}).get("shortcut_chunks", 0) for x in r.leaves)
    shortcut_bytes = sum((x.stats or {}).get("shortcut_bytes", 0) for x in r.leaves)
    return {
        "schema": SCHEMA,
        "a": r.a,
        "b": r.b,
        "equal": r.equal,
        "identical": r.identical,
        "verdict": verdict(r),
        "structure_only": r.structure_only,
        "tolerance": {"atol": r.atol, "rtol": r.rtol, "nan_equal": r.nan_equal},
        "summary": {
            "leaves": len(r.leaves),
            "equal": r.count("equal"),
            "different": r.count("different"),
            "only_a": r.count("only_a"),
            "only_b": r.count("only_b"),
            "shape_mismatch": r.count("shape_mismatch"),
            "dtype_mismatch": r.dtype_mismatches,
            "errors": r.errors,
            "not_compared": r.not_compared,
            "bytes_read": r.bytes_read,
            "requests": r.requests,
            "shortcut_chunks": shortcut_chunks,
            "shortcut_bytes": shortcut_bytes,
            "seconds": round(r.seconds, 6),
        },
        "notes": {"a": list(r.notes_a), "b": list(r.notes_b)},
        "ignored": {"a": list(r.ignored_a), "b": list(r.ignored_b)},
        "leaves": [leaf_json(x) for x in r.leaves],
    }


def dumps(r: Report) -> str:
    return json.dumps(to_json(r), indent=1, allow_nan=False)


# ------------------------------------------------------------------------------------------ terminal


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.3g}" if math.isfinite(x) else str(x)
    return str(x)


def _severity(r: LeafResult) -> tuple:
    """Errors and structure first, then the leaves with the most mismatching elements (a counter
    that is off by one matters less than a kernel that differs everywhere), then by max |a-b|."""
    s = r.stats or {}
    rank = {"error": 0, "not_compared": 0, "shape_mismatch": 1, "only_a": 2, "only_b": 2, "different": 3, "equal": 4}[
        r.status
    ]
    return (rank, -s.get("mismatches", 0), -(s.get("max_abs_diff") or 0.0))


def render(r: Report, console: Console, verbose: bool = False) -> None:
    v = verdict(r)
    style = "bold red" if r.exit_code == 2 else ("bold green" if r.equal else "bold yellow")
    console.print(Text(v, style=style))
    for side, path, notes in (("A", r.a, r.notes_a), ("B", r.b, r.notes_b)):
        console.print(Text(f"  {side}: {path}", style="dim"))
        for n in notes:
            console.print(Text(f"     {n}", style="dim"))

    for side, ignored in (("A", r.ignored_a), ("B", r.ignored_b)):
        if ignored:
            shown = ignored if verbose else ignored[:5]
            more = "" if len(shown) == len(ignored) else f", ... ({len(ignored)} in all, --verbose)"
            console.print(Text(f"  ignored by rules in {side}: {', '.join(shown)}{more}", style="dim"))

    problems = [x for x in r.leaves if x.status in ("only_a", "only_b", "shape_mismatch", "error", "not_compared")]
    problems += [
        x
        for x in r.leaves
        if x.status == "different" and (x.kind_b or (x.dtype_b and not x.dtype_allowed) or not x.stats)
    ]
    if problems:
        console.print(Text("structure and errors:", style="bold"))
        for x in sorted(problems, key=_severity)[: None if verbose else 4 * TABLE_ROWS]:
            console.print(Text(f"  {_problem_line(x)}", style="red" if x.status == "error" else None))
        hidden = len(problems) - 4 * TABLE_ROWS
        if not verbose and hidden > 0:
            console.print(Text(f"  ... {hidden} more (--verbose or --json)", style="dim"))

    if r.structure_only:
        return
    rows = [x for x in r.leaves if x.stats and (verbose or x.status != "equal")]
    if not rows:
        return
    rows.sort(key=_severity)
    shown = rows if verbose else rows[:TABLE_ROWS]
    table = Table(title=None, show_lines=False, header_style="bold", pad_edge=False)
    for col, just in (
        ("leaf", "left"),
        ("dtype", "left"),
        ("shape", "left"),
        ("mismatches", "right"),
        ("max |a-b|", "right"),
        ("at", "left"),
        ("max rel", "right"),
        ("rms", "right"),
        ("NaN a/b", "right"),
    ):
        table.add_column(col, justify=just, overflow="fold")
    for x in shown:
        s = x.stats
        mism = f"{s['mismatches']}/{s['count']}"
        if s["count"]:
            mism += f" ({100.0 * s['mismatches'] / s['count']:.3g}%)"
        at = s["max_abs_diff_index"]
        table.add_row(
            Text(format_path(x.path), style="green" if x.status == "equal" else None),
            x.dtype + (f"/{x.dtype_b}" if x.dtype_b else ""),
            "x".join(map(str, x.shape)) or "()",
            mism,
            _fmt(s["max_abs_diff"]),
            "-" if at is None else ",".join(map(str, at)) or "()",
            _fmt(s["max_rel_diff"]),
            _fmt(s["rms_diff"]),
            f"{s['nan_a']}/{s['nan_b']}",
        )
    console.print(table)
    if len(rows) > len(shown):
        console.print(Text(f"... {len(rows) - len(shown)} more differing leaves (--verbose or --json)", style="dim"))


def _problem_line(x: LeafResult) -> str:
    p = format_path(x.path)
    if x.status == "only_a":
        return f"only in A: {p} ({x.kind}{_shape(x)})"
    if x.status == "only_b":
        return f"only in B: {p} ({x.kind}{_shape(x)})"
    if x.status == "shape_mismatch":
        return f"shape:     {p} {list(x.shape)} vs {list(x.shape_b)}"
    if x.status == "error":
        return f"error:     {p}: {x.message}"
    if x.status == "not_compared":
        return f"not compared: {p}: {x.message}"
    if x.dtype_b:
        return f"dtype:     {p} {x.dtype} vs {x.dtype_b}"
    return f"differs:   {p}: {x.message}"


def _shape(x: LeafResult) -> str:
    if x.shape is None:
        return ""
    return f" {x.dtype} {list(x.shape)}"


def render_explain(m, rows, console: Console) -> None:
    """`--explain`: canonical path <- source on each side, from metadata only."""
    for side, layout, notes, mapped in (("A", m.layout_a, m.notes_a, m.a), ("B", m.layout_b, m.notes_b, m.b)):
        console.print(Text(f"{side}: layout {layout or 'none detected'}", style="bold"))
        for n in notes:
            console.print(Text(f"   {n}", style="dim"))
        for line in mapped.applied:
            console.print(Text(f"   applied {line}", style="dim"))
        for p in mapped.ignored:
            console.print(Text(f"   ignored {p}", style="dim"))
    table = Table(header_style="bold", pad_edge=False)
    for col in ("canonical path", "A", "B"):
        table.add_column(col, overflow="fold")
    for path, sa, sb in rows:
        table.add_row(format_path(path), sa or Text("(none)", style="red"), sb or Text("(none)", style="red"))
    console.print(table)
    unmatched_a = sum(1 for _, _, sb in rows if sb is None)
    unmatched_b = sum(1 for _, sa, _ in rows if sa is None)
    console.print(f"{len(rows)} canonical paths; only in A: {unmatched_a}; only in B: {unmatched_b}")
