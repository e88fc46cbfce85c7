"""Render a `Report`: the JSON contract (schema streamdiff/1) and the terminal view."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from .datatypes import WHEN_SET, KeyPath, LeafResult, Report, ValueStats, Verdict, format_path

if TYPE_CHECKING:
    from .mapping.stage import MapResult

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
        if n == 0 and r.excluded:
            return f"error: nothing to compare: --only/--exclude left none of the {len(r.excluded)} leaves"
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
    if r.sample is not None:  # NO_DIFFERENCES_SAMPLED comes only with a sample
        if v is Verdict.NO_DIFFERENCES_SAMPLED:
            return f"no differences in the {percent(r.sample)} sampled: {n} leaves (not a full comparison)"
        return f"{r.different} of {n} leaves differ (in the {percent(r.sample)} sampled)"
    return f"{r.different} of {n} leaves differ"


def percent(fraction: float) -> str:
    """A sampled fraction as the verdict says it: 0.01 is '1.0%', 0.0005 is '0.05%', 0.9999 is
    '99.99%' (never a '100.0%' that was not everything)."""
    p = 100.0 * fraction
    text = f"{p:.1f}" if p >= 0.1 else f"{p:.2g}"
    return f"{p:.6g}%" if text == "100.0" and fraction < 1 else f"{text}%"


# ---------------------------------------------------------------------------------------------- JSON


def _num(x: Any) -> Any:
    """JSON has no inf/nan: write them as the strings 'inf', '-inf', 'nan' (documented)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, list):
        return [_num(v) for v in x]
    if isinstance(x, dict):
        return {k: _num(v) for k, v in x.items()}
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
    if r.stats is not None:
        d.update(stats_json(r.stats))
    if r.message is not None:
        d["message"] = r.message
    if r.source_a is not None:
        d["source_a"] = r.source_a
    if r.source_b is not None:
        d["source_b"] = r.source_b
    return d


def stats_json(s: ValueStats) -> dict[str, Any]:
    """A leaf's statistics as the JSON writes them: every field by name in declaration order, those
    marked `WHEN_SET` only when set; tuples as lists, inf/nan as strings."""
    out: dict[str, Any] = {}
    for f in fields(s):
        v = getattr(s, f.name)
        if f.metadata == WHEN_SET and (v is None or v is False):
            continue
        if f.name == "layers":
            v = [{g.name: _num(getattr(x, g.name)) for g in fields(x)} for x in v]
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = _num(v)
    return out


def to_json(r: Report, stat_depth: int | None = None) -> dict[str, Any]:
    """The `streamdiff/1` document; `subtrees` (per-subtree summary at `stat_depth`) when asked."""
    out = {
        "schema": SCHEMA,
        "a": r.a,
        "b": r.b,
        "equal": r.equal,
        "identical": r.identical,
        "verdict": verdict(r),
        "structure_only": r.structure_only,
        "sampled": r.sample,
        "sample_seed": r.sample_seed,
        "tolerance": {"atol": r.atol, "rtol": r.rtol, "nan_equal": r.nan_equal},
        "summary": r.summary,
        "notes": {"a": list(r.notes_a), "b": list(r.notes_b)},
        "ignored": {"a": list(r.ignored_a), "b": list(r.ignored_b)},
        "leaves": [leaf_json(x) for x in r.leaves],
        "excluded": list(r.excluded),
    }
    if stat_depth is not None:
        out["subtrees"] = [_num(s.to_json()) for s in subtrees(r, stat_depth)]
    return out


def dumps(r: Report, stat_depth: int | None = None) -> str:
    return json.dumps(to_json(r, stat_depth), indent=1, allow_nan=False)


# ---------------------------------------------------------------------------------------- subtrees


@dataclass
class Subtree:
    """`--stat`: what differs under one path prefix."""

    path: str
    leaves: int = 0
    different: int = 0
    mismatches: int = 0
    elements: int = 0
    max_abs_diff: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "leaves": self.leaves,
            "different": self.different,
            "mismatches": self.mismatches,
            "elements": self.elements,
            "max_abs_diff": self.max_abs_diff,
        }


def subtrees(r: Report, depth: int) -> list[Subtree]:
    """Leaves grouped by their first `depth` keys, worst first: most mismatching elements, then
    the largest max |a-b|, then most differing leaves (structure problems count as differing)."""
    groups: dict[str, Subtree] = {}
    for x in r.leaves:
        key = format_path(x.path[:depth])
        g = groups.setdefault(key, Subtree(key))
        g.leaves += 1
        g.different += x.status != "equal"
        if x.stats is not None:
            g.mismatches += x.stats.mismatches
            g.elements += x.stats.count
            g.max_abs_diff = max(g.max_abs_diff, x.stats.max_abs_diff)
    return sorted(groups.values(), key=lambda g: (-g.mismatches, -g.max_abs_diff, -g.different, g.path))


# ------------------------------------------------------------------------------------------ terminal

#: At this width and above, the table shows every column; below it, the compact layout drops
#: columns in reverse order of importance (see `_COLUMNS`).
FULL_WIDTH = 120
#: Width of piped output when no terminal and no COLUMNS say otherwise.
PIPE_WIDTH = 120
#: Leaves whose values at the max |a-b| are printed without --verbose.
WORST_ROWS = 10
#: Reports longer than this many lines print the verdict again as their last line.
LONG_REPORT = 20
#: A path gets at least this many columns before optional columns are added.
PATH_MIN = 24
ELLIPSIS = "…"
SPARKS = "▁▂▃▄▅▆▇█"


def fmt_number(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.3g}" if math.isfinite(x) else str(x)
    return str(x)


#: Rows beyond which `shorten_all` keeps the plain cut (its search is quadratic in rows).
DISTINCT_CUT_ROWS = 256


def shorten_all(paths: list[str], width: int) -> list[str]:
    """`shorten` for the rows of one table, but rows that would read the same (params/…/kernel for
    mu and nu) get the cut that tells them apart, when one fits: keep k keys from the start and m
    from the end such that no other row shares both."""
    out = [shorten(p, width) for p in paths]
    counts = Counter(out)
    if all(c == 1 for c in counts.values()) or len(paths) > DISTINCT_CUT_ROWS:
        return out
    keysets = [p.split("/") for p in paths]
    for i, text in enumerate(out):
        if counts[text] > 1:
            out[i] = _distinct_cut(i, keysets, width) or text
    return out


def _distinct_width(paths: list[str], lo: int, hi: int) -> int:
    """The narrowest width from `lo` (up to `hi`) at which `shorten_all` keeps every row distinct."""
    if len(set(paths)) < len(paths) or len(paths) > DISTINCT_CUT_ROWS:
        return lo  # equal names (or too many rows to search): width cannot help
    w = lo
    while w < hi and len(set(shorten_all(paths, w))) < len(paths):
        w += 2
    return max(lo, min(w, hi))


def _distinct_cut(i: int, keysets: list[list[str]], width: int) -> str | None:
    """Row i as [keys s..s+k] … [last m keys], the most keys that fit and that no other row shares
    at the same positions (`…/mu/…/pre_self_attention_layer_norm/scale` when the first keys do not fit)."""
    keys = keysets[i]
    n = len(keys)
    best: tuple[tuple[int, int, int], str] | None = None
    for m in range(1, n):
        tail = keys[n - m :]
        for s in range(n - m):
            for k in range(n - m - s):  # keys[s:s+k], then a gap before the tail (k = 0: no window)
                if k == 0 and s > 0:
                    continue
                window = keys[s : s + k]
                parts = ([ELLIPSIS] if s else []) + window + ([ELLIPSIS] if k or not s else []) + tail
                text = "/".join(parts)
                score = (k + m, m, -s)
                if len(text) > width or (best is not None and score <= best[0]):
                    continue
                if any(
                    j != i and q[s : s + k] == window and q[len(q) - m :] == tail and len(q) > s + k + m
                    for j, q in enumerate(keysets)
                ):
                    continue
                best = (score, text)
    return best[1] if best else None


def shorten(path: str, width: int) -> str:
    """`path` in at most `width` characters, cut in the middle with '…'. Whole keys are kept from
    both ends, two from the end for each one from the start (the last keys name the leaf, the
    first say which tree it is in: params, opt_state/0/mu); a last key too long on its own keeps
    its end."""
    if len(path) <= width:
        return path
    keys = path.split("/")
    last = keys[-1]
    if len(last) + 2 > width:
        return (ELLIPSIS + last[len(last) - (width - 1) :]) if width > 1 else ELLIPSIS[:width]
    head: list[str] = []
    tail = [last]
    lo, hi = 0, len(keys) - 1  # keys[lo:hi] are still unplaced

    def size(h: list[str], t: list[str]) -> int:
        return len("/".join(h + [ELLIPSIS] + t))

    turn = 0
    while lo < hi:
        take_tail = turn % 3 != 1
        if take_tail and size(head, [keys[hi - 1]] + tail) <= width:
            tail.insert(0, keys[hi - 1])
            hi -= 1
        elif not take_tail and size(head + [keys[lo]], tail) <= width:
            head.append(keys[lo])
            lo += 1
        elif size(head, [keys[hi - 1]] + tail) <= width:
            tail.insert(0, keys[hi - 1])
            hi -= 1
        elif size(head + [keys[lo]], tail) <= width:
            head.append(keys[lo])
            lo += 1
        else:
            break
        turn += 1
    return "/".join(head + [ELLIPSIS] + tail)


def _as_typed(note: str, path: str) -> str:
    """A note's absolute item path spelled from what the user typed (`ckpt/1/items`, not
    `/home/.../ckpt/1/items`): shorter, and the way they would paste it."""
    if "://" in path or os.path.isabs(path):
        return note
    full = os.path.abspath(path)
    return note.replace(full + "/", path.rstrip("/") + "/").replace(full, path)


def verdict_line(r: Report) -> str:
    """The verdict with the tolerance in force (the JSON keeps it in `tolerance`)."""
    v = verdict(r)
    if r.structure_only or r.verdict is Verdict.EQUAL:
        return v  # no values compared / the tolerance is already in the text
    return f"{v} (atol={r.atol:g}, rtol={r.rtol:g})"


def severity(r: LeafResult) -> tuple[int, int, float]:
    """Errors and structure first, then the leaves with the most mismatching elements (a counter
    that is off by one matters less than a kernel that differs everywhere), then by max |a-b|."""
    rank = {"error": 0, "not_compared": 0, "shape_mismatch": 1, "only_a": 2, "only_b": 2, "different": 3, "equal": 4}[
        r.status
    ]
    if r.stats is None:
        return (rank, 0, 0.0)
    return (rank, -r.stats.mismatches, -r.stats.max_abs_diff)


@dataclass(frozen=True)
class _Row:
    """A leaf of the value table: compared, so its statistics, dtype and shape are known."""

    leaf: LeafResult
    stats: ValueStats
    dtype: str
    shape: tuple[int, ...]

    @staticmethod
    def of(x: LeafResult) -> _Row:
        if x.stats is None or x.dtype is None or x.shape is None:
            raise ValueError(f"{x.name}: the value table lists compared leaves only")
        return _Row(x, x.stats, x.dtype, x.shape)


@dataclass(frozen=True)
class _Col:
    title: str
    right: bool
    cell: Callable[[_Row, bool], str]  # (leaf, full layout) -> text


def _mismatches(x: _Row, full: bool) -> str:
    s = x.stats
    pct = f"{100.0 * s.mismatches / s.count:.3g}%" if s.count else "-"
    return f"{s.mismatches}/{s.count} ({pct})" if full else f"{s.mismatches} ({pct})"


def _at(index: tuple[int, ...] | None) -> str:
    return "-" if index is None else "[" + ",".join(map(str, index)) + "]"


#: Columns in order of importance: narrower terminals drop them from the end of this list.
_COLUMNS = (
    _Col("mismatches", True, _mismatches),
    _Col("max |a-b|", True, lambda x, f: fmt_number(x.stats.max_abs_diff)),
    _Col("max rel", True, lambda x, f: fmt_number(x.stats.max_rel_diff)),
    _Col("at", False, lambda x, f: _at(x.stats.max_abs_diff_index)),
    _Col("rms", True, lambda x, f: fmt_number(x.stats.rms_diff)),
    _Col("dtype", False, lambda x, f: x.dtype + (f"/{x.leaf.dtype_b}" if x.leaf.dtype_b else "")),
    _Col("shape", False, lambda x, f: "x".join(map(str, x.shape)) or "()"),
    _Col("NaN a/b", True, lambda x, f: f"{fmt_number(x.stats.nan_a)}/{fmt_number(x.stats.nan_b)}"),
)
#: The order columns are displayed in, whichever are shown.
_DISPLAY = ("dtype", "shape", "mismatches", "max |a-b|", "at", "max rel", "rms", "NaN a/b")


def leaf_table(rows: list[LeafResult], width: int) -> list[Text]:
    """One line per leaf, never longer than `width`: every column at FULL_WIDTH and above, below
    it the columns that fit in order of importance; the path is shortened in the middle."""
    full = width >= FULL_WIDTH
    table = [_Row.of(x) for x in rows]
    paths = [format_path(x.path) for x in rows]
    path_w = max(len("leaf"), *(len(p) for p in paths))
    # Below the full width, half the line stays for the path: a path cut to its last keys no
    # longer tells params from opt_state/0/mu, which matters more than a fifth column.
    path_min = PATH_MIN if full else max(PATH_MIN, width // 2)
    columns = [
        (col, cells, max(len(col.title), *(len(c) for c in cells)))
        for col in _COLUMNS
        for cells in ([col.cell(x, full) for x in table],)
    ]
    if path_w + sum(2 + w for _, _, w in columns) > width:
        # Rows must stay distinct: a less important column goes before two rows read the same
        # (searched only when something must be cut: every path fitting whole is distinct).
        path_min = _distinct_width(paths, path_min, min(path_w, width - 2 * 12))
    chosen: list[tuple[_Col, list[str], int]] = []
    used = 0
    for col, cells, w in columns:
        if used + 2 + w + min(path_w, path_min) > width and chosen[1:]:
            break  # the first two columns (mismatches, max |a-b|) stay at any width
        chosen.append((col, cells, w))
        used += 2 + w
    chosen.sort(key=lambda c: _DISPLAY.index(c[0].title))
    path_w = max(1, min(path_w, width - used))

    def line(first: str, cells: list[tuple[str, int, bool]]) -> str:
        out = first.ljust(path_w)
        for text, w, right in cells:
            out += "  " + (text.rjust(w) if right else text.ljust(w))
        return out.rstrip()

    out = [Text(line("leaf", [(c.title, w, c.right) for c, _, w in chosen]), style="bold")]
    cut = shorten_all(paths, path_w)
    for i, x in enumerate(rows):
        text = line(cut[i], [(cells[i], w, c.right) for c, cells, w in chosen])
        out.append(Text(text, style="green" if x.status == "equal" else ""))
    return out


def distinct(a: float, b: float) -> tuple[str, str]:
    """Two floats with the fewest significant digits (at least 3) whose printed difference is the
    real one to two digits: 0.28258681 vs 0.28258371 must not print as 0.28259 vs 0.28258 (a gap
    three times too big, above the tolerance shown beside it)."""
    d = a - b
    for digits in range(3, 18):
        sa, sb = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if a == b or not math.isfinite(d):
            if sa != sb or a == b:
                return sa, sb
            continue
        shown = float(sa) - float(sb)
        if abs(shown - d) <= 0.05 * abs(d):
            return sa, sb
    return repr(a), repr(b)


def worst_values_line(x: LeafResult, width: int) -> str | None:
    """`path: a=0.0123 b=0.0138 at [56,0,21], allowed 1.1e-07` (numpy's and torch's way of
    showing the worst element), None when the leaf has no nonzero difference."""
    s = x.stats
    if s is None or s.max_abs_diff_values is None:
        return None
    values = s.max_abs_diff_values
    a, b = distinct(*values) if all(isinstance(v, float) for v in values) else (str(v) for v in values)
    tail = f": a={a} b={b} at {_at(s.max_abs_diff_index)}"
    if s.max_abs_diff_allowed is not None:
        tail += f", allowed {fmt_number(s.max_abs_diff_allowed)}"
    return shorten(format_path(x.path), max(8, width - len(tail))) + tail


def group_paths(paths: list[KeyPath]) -> list[tuple[str, list[KeyPath]]]:
    """One-sided paths as a few groups, each (pattern, members). The pattern is in the rules'
    language and matches every member, so it can be pasted into --only / --exclude: the common
    first keys, then '**', then the common last keys with '*' where they vary
    (`model/decoder/**/rngs/*/*`). Groups are split by first key when they share none."""
    if not paths:
        return []
    if len({p[0] for p in paths if p}) > 1:
        by_first: dict[str, list[KeyPath]] = {}
        for p in paths:
            by_first.setdefault(p[0] if p else "", []).append(p)
        return [(_pattern(members), members) for members in by_first.values()]
    return [(_pattern(paths), paths)]


def _pattern(paths: list[KeyPath]) -> str:
    if len(paths) == 1:
        return format_path(paths[0])
    prefix = list(_common_prefix(paths))
    rest = [p[len(prefix) :] for p in paths]
    if len({len(r) for r in rest}) == 1:  # same depth: '*' where the keys vary
        return "/".join(prefix + [r0 if len({r[i] for r in rest}) == 1 else "*" for i, r0 in enumerate(rest[0])])
    suffix: list[str] = []
    keep = 0  # the suffix reaches back to the last key (from the end) every path shares
    for i in range(1, min(len(r) for r in rest) + 1):
        keys = {r[-i] for r in rest}
        suffix.insert(0, rest[0][-i] if len(keys) == 1 else "*")
        if len(keys) == 1:
            keep = i
    return "/".join(prefix + ["**"] + suffix[len(suffix) - keep :])


def _common_prefix(keys: list[tuple[str, ...]]) -> tuple[str, ...]:
    if not keys:
        return ()
    first = keys[0]
    n = min(len(k) for k in keys)
    for i in range(n):
        if any(k[i] != first[i] for k in keys):
            return first[:i]
    return first[:n]


class LinePrinter:
    """Prints logical lines fitted to the console (the diff report and `streamdiff ls`) and counts
    them, so a long report can repeat its verdict at the end."""

    def __init__(self, console: Console):
        self.console = console
        self.lines = 0

    def __call__(self, text: str | Text, style: str | None = None) -> None:
        """Print one logical line; a line wider than the console continues indented, cut at a
        space in its second half, else at the width (rich would cut at the last space, leaving a
        lone 'ocdbt + zarr3:' above a path)."""
        t = text if isinstance(text, Text) else Text(text, style=style or "")
        width = self.console.width
        indent = min(len(t.plain) - len(t.plain.lstrip(" ")) + 2, width // 2)
        first = True
        while first or len(t):
            take = width if first else width - indent
            if len(t) > take:  # prose breaks at a space in the second half; a long path anywhere
                space = t.plain.rfind(" ", take // 2, take)
                take = space + 1 if space > 0 else take
            part = t[:take] if first else Text(" " * indent) + t[:take]
            self.console.print(part, no_wrap=True, overflow="crop", highlight=False)
            t = t[take:]
            first = False
        self.lines += 1


def render(
    r: Report,
    console: Console,
    verbose: bool = False,
    stat_depth: int | None = None,
    per_layer: bool = False,
) -> None:
    """The terminal report: verdict, inputs, structure problems, the differing leaves (one line
    each, fitted to the console width), the worst values, and --stat / --per-layer on request."""
    width = console.width
    out = LinePrinter(console)
    v = verdict_line(r)
    style = "bold red" if r.exit_code == 2 else ("bold green" if r.equal else "bold yellow")
    out(v, style)
    for side, path, notes in (("A", r.a, r.notes_a), ("B", r.b, r.notes_b)):
        out(f"  {side}: {path}", "dim")
        for n in notes:
            out(f"     {_as_typed(n, path)}", "dim")

    if r.sample is not None:
        out(f"  sampled: {percent(r.sample)} of each leaf's blocks (at least one); figures are of those only", "dim")
    for side, ignored in (("A", r.ignored_a), ("B", r.ignored_b)):
        if ignored:
            shown = ignored if verbose else ignored[:5]
            more = "" if len(shown) == len(ignored) else f", ... ({len(ignored)} in all, --verbose)"
            out(f"  ignored by rules in {side}: {', '.join(shown)}{more}", "dim")
    if r.excluded:
        hint = "" if verbose else " (--verbose lists them)"
        out(f"  excluded by --only/--exclude: {len(r.excluded)} leaves{hint}", "dim")
        if verbose:
            for p in r.excluded:
                out(f"     {p}", "dim")

    _render_problems(r, out, verbose)
    if r.structure_only:
        if verbose:
            same = [x for x in r.leaves if x.status == "equal"]
            if same:
                out("matched:", "bold")
                for x in same:
                    out(f"  {format_path(x.path)} ({x.kind}{_shape(x)})")
    else:
        _render_values(r, out, width, verbose)
    if stat_depth is not None:
        _render_stat(r, out, width, stat_depth)
    if per_layer and not r.structure_only:
        _render_layers(r, out, width, verbose)
    if out.lines > LONG_REPORT:
        out(v, style)


def _render_problems(r: Report, out: LinePrinter, verbose: bool) -> None:
    problems = [x for x in r.leaves if x.status in ("shape_mismatch", "error", "not_compared")]
    problems += [
        x
        for x in r.leaves
        if x.status == "different" and (x.kind_b or (x.dtype_b and not x.dtype_allowed) or x.stats is None)
    ]
    one_sided = {s: [x for x in r.leaves if x.status == s] for s in ("only_a", "only_b")}
    if not problems and not any(one_sided.values()):
        return
    out("structure and errors:", "bold")
    problems.sort(key=severity)
    limit = None if verbose else 4 * TABLE_ROWS
    for x in problems[:limit]:
        out(f"  {_problem_line(x)}", "red" if x.status == "error" else None)
    if limit is not None and len(problems) > limit:
        out(f"  ... {len(problems) - limit} more (--verbose or --json)", "dim")
    for status, leaves in one_sided.items():
        side = "A" if status == "only_a" else "B"
        if verbose:
            for x in leaves:
                out(f"  {_problem_line(x)}")
            continue
        by_path = {x.path: x for x in leaves}
        for pattern, members in group_paths([x.path for x in leaves]):
            if len(members) <= 3:
                for p in members:
                    out(f"  {_problem_line(by_path[p])}")
            else:
                out(f"  only in {side}: {len(members)} paths matching {pattern} (--verbose lists them)")


def _render_values(r: Report, out: LinePrinter, width: int, verbose: bool) -> None:
    rows = [x for x in r.leaves if x.stats is not None and (verbose or x.status != "equal")]
    if not rows:
        return
    rows.sort(key=severity)
    shown = rows if verbose else rows[:TABLE_ROWS]
    for line in leaf_table(shown, width):
        out(line)
    if len(rows) > len(shown):
        out(f"... {len(rows) - len(shown)} more differing leaves (--verbose or --json)", "dim")
    worst = [w for w in (worst_values_line(x, width - 2) for x in shown if x.status != "equal") if w]
    if worst:
        out("values at max |a-b|:", "bold")
        for w in worst if verbose else worst[:WORST_ROWS]:
            out("  " + w)
        if not verbose and len(worst) > WORST_ROWS:
            out(f"  ... {len(worst) - WORST_ROWS} more (--verbose or --json)", "dim")


def _render_stat(r: Report, out: LinePrinter, width: int, depth: int) -> None:
    """`--stat`: one line per subtree, worst first, with a bar of mismatching elements (of
    differing leaves when no values were compared)."""
    groups = subtrees(r, depth)
    if not groups:
        return
    cells = [
        (
            f"{g.different}/{g.leaves}",
            f"{g.mismatches}",
            fmt_number(g.max_abs_diff),
        )
        for g in groups
    ]
    titles = ("differ", "mismatches", "max |a-b|")
    ws = [max(len(t), *(len(c[i]) for c in cells)) for i, t in enumerate(titles)]
    fixed = sum(w + 2 for w in ws) + 2  # + " |" before the bar
    path_w = min(max(len("subtree"), *(len(g.path) for g in groups)), max(12, width - fixed - 10))
    bar_w = max(1, min(40, width - fixed - path_w - 1))
    # The bar measures mismatching elements; with none (structure only), differing leaves.
    elements = any(g.mismatches for g in groups)
    size = [g.mismatches if elements else g.different for g in groups]
    top = max(size) or 1
    out(f"per subtree (depth {depth}):", "bold")
    head = "subtree".ljust(path_w) + "".join("  " + t.rjust(w) for t, w in zip(titles, ws))
    out(Text(head, style="bold"))
    for g, c, m in zip(groups, cells, size):
        n = 0 if m == 0 else max(1, round(bar_w * m / top))
        line = shorten(g.path or "(root)", path_w).ljust(path_w)
        line += "".join("  " + t.rjust(w) for t, w in zip(c, ws))
        text = Text(line + " |" + "+" * n if n else line + " |")
        if n:
            text.stylize("red", len(line) + 2)
        out(text)
    total = sum(g.different for g in groups)
    out(f"{len(groups)} subtrees, {total} differing leaves, {sum(g.mismatches for g in groups)} mismatching elements")


def sparkline(values: list[float], width: int) -> str:
    """max |a-b| per layer as bars, '·' where a layer is unchanged; more layers than `width` are
    binned (each bin shows its maximum)."""
    if width <= 0 or not values:
        return ""
    if len(values) > width:
        per = -(-len(values) // width)
        values = [max(values[i : i + per]) for i in range(0, len(values), per)]
    top = max(values)
    out = ""
    for v in values:
        if v == 0 or top == 0:
            out += "·"
        elif not math.isfinite(v):
            out += SPARKS[-1]
        else:
            out += SPARKS[min(len(SPARKS) - 1, int(v / top * len(SPARKS)))] if math.isfinite(top) else SPARKS[0]
    return out


def _render_layers(r: Report, out: LinePrinter, width: int, verbose: bool) -> None:
    """`--per-layer`: one line per scanned leaf, a sparkline of max |a-b| over its layers."""
    rows = [x for x in r.leaves if x.stats is not None and x.stats.layers and (verbose or x.status != "equal")]
    out("per layer (max |a-b| by layer index, · = unchanged):", "bold")
    if not rows:
        out("  no scanned leaf differs" if not verbose else "  no scanned leaves", "dim")
        return
    rows.sort(key=severity)
    tails: list[str] = []
    maxes: list[list[float]] = []
    for x in rows:
        layers = x.stats.layers if x.stats is not None else None
        if not layers:
            raise ValueError(f"{x.name}: per-layer rows are leaves with layer statistics only")
        m = [float(layer.max_abs_diff) for layer in layers]
        moved = sum(1 for layer in layers if layer.mismatches)
        worst = max(range(len(m)), key=lambda i: m[i])
        tail = f"{moved}/{len(layers)} moved"
        if m[worst] > 0:
            tail += f", max {fmt_number(m[worst])} at layer {layers[worst].layer}"
        tails.append(tail)
        maxes.append(m)
    tail_w = max(len(t) for t in tails)
    n_max = max(len(m) for m in maxes)
    path_full = max(len(format_path(x.path)) for x in rows)
    spark_w = max(1, min(n_max, width - tail_w - 4 - min(path_full, PATH_MIN)))
    path_w = max(1, min(path_full, width - tail_w - spark_w - 4))
    for x, m, tail in zip(rows, maxes, tails):
        line = shorten(format_path(x.path), path_w).ljust(path_w) + "  " + sparkline(m, spark_w).ljust(spark_w)
        out(Text((line + "  " + tail)[:width]))


def _problem_line(x: LeafResult) -> str:
    p = format_path(x.path)
    if x.status == "only_a":
        return f"only in A: {p} ({x.kind}{_shape(x)})"
    if x.status == "only_b":
        return f"only in B: {p} ({x.kind}{_shape(x)})"
    if x.status == "shape_mismatch":
        return f"shape:     {p} {list(x.shape or ())} vs {list(x.shape_b or ())}"
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


def render_explain(m: MapResult, rows: list[tuple[KeyPath, str | None, str | None]], console: Console) -> None:
    """`--explain`: canonical path <- source on each side, from metadata only."""
    for side, layout, notes, mapped in (("A", m.layout_a, m.notes_a, m.a), ("B", m.layout_b, m.notes_b, m.b)):
        console.print(Text(f"{side}: layout {layout or 'none detected'}", style="bold"))
        for n in notes:
            console.print(Text(f"   {n}", style="dim"))
        for line in mapped.applied:
            console.print(Text(f"   applied {line}", style="dim"))
        for p in mapped.ignored:
            console.print(Text(f"   ignored {p}", style="dim"))
    # One block per canonical path, sources indented below it: whole paths at any width (a
    # three-column table folds every long path into several lines).
    console.print(Text("canonical path", style="bold"))
    for path, sa, sb in rows:
        console.print(Text(format_path(path)), soft_wrap=True)
        for side, src in (("A", sa), ("B", sb)):
            text = Text(f"    {side}: ") + (Text(src) if src else Text("(none)", style="red"))
            console.print(text, soft_wrap=True)
    unmatched_a = sum(1 for _, _, sb in rows if sb is None)
    unmatched_b = sum(1 for _, sa, _ in rows if sa is None)
    console.print(f"{len(rows)} canonical paths; only in A: {unmatched_a}; only in B: {unmatched_b}")
