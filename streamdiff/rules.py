"""Mapping rules: turn each side's tree into a canonical tree before pairing.

Rules are data (TOML, never Python). A rules file is an ordered list of `[[rule]]` tables, each
with an `op`; they run in order over every leaf of the side they apply to:

    [[rule]]
    op = "rename"                          # paths matching `from` take the path `to`
    from = "params/params/{rest:**}"
    to = "model/{rest}"

    op = "ignore"     path = "nnx_aux/**"  [kind = "empty"]     # dropped, and listed in the report
    op = "strip"      key = "value"                             # {value: x} -> x (trailing key)
    op = "transpose"  path = "...", axes = [1, 0, 2]            # result axis k = stored axis axes[k]
    op = "moveaxis"   path = "...", source = 0, destination = 1
    op = "unstack"    from = "layers/{name:**}", axis = 1, to = "layers_{i}/{name}"
    op = "stack"      from = "layers_{i}/{name:**}", axis = 1, to = "layers/{name}"
    op = "tolerance"  path = "opt_state/**", atol = 1e-5, rtol = 1e-3
    op = "allow_dtype" path = "step", dtypes = ["int32", "uint32"]

Patterns are '/'-separated key paths. In a segment, `{name}` captures one key, `{name:int}` one
key made of digits, `*` matches one key; a whole segment `{name:**}` captures one or more keys and
`**` matches any number. Captures can be reused in `to`. A key that itself contains '/' (Haiku's
`mlp/~/linear_0`) is matched as the keys it spells, so `mlp/~/linear_{i}/w` matches it.

Mapped leaves are lazy views of the stored arrays (tensorstore index transforms and `ts.stack`),
never copies, so streaming and the memory budget work through them.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

import tensorstore as ts

from .datatypes import KeyPath, Leaf, format_path
from .errors import StreamdiffError

OPS = ("rename", "ignore", "strip", "transpose", "moveaxis", "unstack", "stack", "tolerance", "allow_dtype")


class RulesError(StreamdiffError):
    """A rules file that cannot be read or does not make sense."""


# ------------------------------------------------------------------------------------ patterns


@dataclass(frozen=True)
class Pattern:
    """A compiled path pattern (see the module docstring for the syntax)."""

    text: str
    segments: tuple[Any, ...]  # '**' | ('**', name) | compiled regex of one segment

    @staticmethod
    def compile(text: str) -> Pattern:
        segs: list[Any] = []
        for seg in text.strip("/").split("/") if text.strip("/") else []:
            m = re.fullmatch(r"\{(\w+):\*\*\}", seg)
            if seg == "**":
                segs.append("**")
            elif m:
                segs.append(("**", m.group(1)))
            else:
                segs.append(_segment_regex(seg, text))
        return Pattern(text, tuple(segs))

    def match(self, path: KeyPath) -> dict[str, Any] | None:
        # Keys containing '/' (Haiku's 'mlp/~/linear_0') are matched as the keys they spell.
        flat = tuple(seg for key in path for seg in key.split("/")) if any("/" in k for k in path) else path
        return _match(self.segments, 0, flat, 0, {})

    @property
    def names(self) -> set[str]:
        return set(re.findall(r"\{(\w+)(?::[^}]*)?\}", self.text))


def _segment_regex(seg: str, text: str) -> re.Pattern:
    out = ""
    pos = 0
    for m in re.finditer(r"\{(\w+)(?::(int))?\}|\*", seg):
        out += re.escape(seg[pos : m.start()])
        if m.group(0) == "*":
            out += ".*"
        else:
            out += f"(?P<{m.group(1)}>{'[0-9]+' if m.group(2) else '.+'})"
        pos = m.end()
    out += re.escape(seg[pos:])
    try:
        return re.compile(out, re.DOTALL)
    except re.error as e:
        raise RulesError(f"bad pattern {text!r}: {e}") from e


def _match(segs, i, path, j, caps) -> dict[str, Any] | None:
    if i == len(segs):
        return dict(caps) if j == len(path) else None
    s = segs[i]
    if s == "**" or isinstance(s, tuple):
        lo = 0 if s == "**" else 1
        for k in range(len(path), j + lo - 1, -1):  # greedy, then backtrack
            new = dict(caps)
            if isinstance(s, tuple):
                new[s[1]] = tuple(path[j:k])
            r = _match(segs, i + 1, path, k, new)
            if r is not None:
                return r
        return None
    if j >= len(path):
        return None
    m = s.fullmatch(path[j])
    if not m:
        return None
    new = dict(caps)
    for k, v in m.groupdict().items():
        if k in new and new[k] != v:
            return None
        new[k] = v
    return _match(segs, i + 1, path, j + 1, new)


def fill(template: str, caps: dict[str, Any]) -> KeyPath:
    """Build a path from a template and captures: `{rest}` expands a multi-key capture in place."""
    out: list[str] = []
    for seg in template.strip("/").split("/") if template.strip("/") else []:
        m = re.fullmatch(r"\{(\w+)(?::[^}]*)?\}", seg)
        if m and isinstance(caps.get(m.group(1)), tuple):
            out.extend(caps[m.group(1)])
            continue

        def sub(mm: re.Match) -> str:
            v = caps.get(mm.group(1))
            if v is None:
                raise RulesError(f"{template!r} uses {{{mm.group(1)}}}, which its pattern does not capture")
            return "/".join(v) if isinstance(v, tuple) else str(v)

        out.append(re.sub(r"\{(\w+)(?::[^}]*)?\}", sub, seg))
    return tuple(out)


# --------------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class View:
    """How to see a canonical leaf through stored arrays: a tree of lazy tensorstore transforms."""

    op: str  # 'base' | 'transpose' | 'index' | 'stack'
    leaf: Leaf | None = None  # base
    children: tuple[View, ...] = ()
    axes: tuple[int, ...] = ()  # transpose: result axis k = child axis axes[k]
    axis: int = 0  # index / stack
    index: int = 0  # index

    @property
    def shape(self) -> tuple[int, ...]:
        if self.op == "base":
            return self.leaf.shape
        c = self.children[0].shape
        if self.op == "transpose":
            return tuple(c[a] for a in self.axes)
        if self.op == "index":
            return c[: self.axis] + c[self.axis + 1 :]
        return c[: self.axis] + (len(self.children),) + c[self.axis :]

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """Smallest decodable unit seen through the transform (for block planning)."""
        if self.op == "base":
            if self.leaf.source is None:
                return None
            return self.leaf.source.read_chunk_shape
        c = self.children[0].chunks
        if c is None:
            return None
        if self.op == "transpose":
            return tuple(c[a] for a in self.axes)
        if self.op == "index":
            return c[: self.axis] + c[self.axis + 1 :]
        return c[: self.axis] + (1,) + c[self.axis :]

    def open(self, context: ts.Context) -> ts.TensorStore:
        if self.op == "base":
            if self.leaf.source is None:
                import numpy as np

                return ts.array(np.asarray(self.leaf.value))
            return ts.open(self.leaf.source.spec, context=context, read=True, assume_metadata=True).result()
        if self.op == "stack":
            return ts.stack([c.open(context) for c in self.children], axis=self.axis)
        child = self.children[0].open(context)
        if self.op == "transpose":
            return child[ts.d[list(self.axes)].transpose[:]]
        return child[ts.d[self.axis][self.index]]

    def describe(self) -> str:
        if self.op == "base":
            return format_path(self.leaf.path)
        if self.op == "transpose":
            return f"transpose({self.children[0].describe()}, {list(self.axes)})"
        if self.op == "index":
            return f"{self.children[0].describe()}[axis {self.axis} = {self.index}]"
        parts = [c.describe() for c in self.children]
        inner = ", ".join(parts) if len(parts) <= 3 else f"{parts[0]}, ..., {parts[-1]}"
        return f"stack([{inner}], axis {self.axis})"


def base_view(leaf: Leaf) -> View:
    return View("base", leaf=leaf)


def view_of(leaf: Leaf) -> View:
    return leaf.view if leaf.view is not None else base_view(leaf)


def with_view(leaf: Leaf, path: KeyPath, view: View) -> Leaf:
    """A canonical leaf seen through `view` (shape follows the view; storage hidden behind it)."""
    return replace(
        leaf, path=path, shape=view.shape, view=view, source=None, value=None, source_path=leaf.source_path or leaf.path
    )


# --------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    op: str
    args: dict[str, Any]
    origin: str  # 'file.toml #3' or 'preset maxtext-linen #2'

    @property
    def pattern(self) -> Pattern:
        key = "from" if self.op in ("rename", "unstack", "stack") else "path"
        return Pattern.compile(self.args[key])

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.args.items() if k != "op")
        return f"{self.op}({shown})"


@dataclass(frozen=True)
class RuleSet:
    name: str
    rules: tuple[Rule, ...]


def parse_rules(text: str, name: str) -> RuleSet:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{name}: not valid TOML ({e})") from e
    unknown = set(doc) - {"rule", "name", "description"}
    if unknown:
        raise RulesError(f"{name}: unknown top-level key(s) {sorted(unknown)}; rules are [[rule]] tables")
    rules = []
    for k, r in enumerate(doc.get("rule", []), 1):
        origin = f"{name} rule {k}"
        if not isinstance(r, dict) or r.get("op") not in OPS:
            raise RulesError(f"{origin}: 'op' must be one of {', '.join(OPS)}")
        rules.append(Rule(r["op"], dict(r), origin))
        _validate(rules[-1])
    return RuleSet(doc.get("name", name), tuple(rules))


_REQUIRED = {
    "rename": ("from", "to"),
    "ignore": ("path",),
    "strip": ("key",),
    "transpose": ("path", "axes"),
    "moveaxis": ("path", "source", "destination"),
    "unstack": ("from", "axis", "to"),
    "stack": ("from", "axis", "to"),
    "tolerance": ("path",),
    "allow_dtype": ("path", "dtypes"),
}


def _validate(r: Rule) -> None:
    missing = [k for k in _REQUIRED[r.op] if k not in r.args]
    if missing:
        raise RulesError(f"{r.origin}: {r.op} needs {', '.join(missing)}")
    if r.op != "strip":
        pat = r.pattern
        if "to" in r.args:
            extra = Pattern.compile(r.args["to"]).names - pat.names - ({"i"} if r.op == "unstack" else set())
            if extra:
                raise RulesError(f"{r.origin}: 'to' uses {sorted(extra)} that 'from' does not capture")
    if r.op == "stack" and "i" not in Pattern.compile(r.args["from"]).names:
        raise RulesError(f"{r.origin}: stack needs an index capture {{i}} (or {{i:int}}) in 'from'")
    if r.op == "unstack" and "{i}" not in r.args["to"]:
        raise RulesError(f"{r.origin}: unstack needs {{i}} in 'to'")
    for key in ("axis", "source", "destination"):
        if key in r.args and (not isinstance(r.args[key], int) or isinstance(r.args[key], bool)):
            raise RulesError(f"{r.origin}: {key} must be an integer, got {r.args[key]!r}")
    if r.op == "transpose" and not (
        isinstance(r.args["axes"], list) and all(isinstance(a, int) and not isinstance(a, bool) for a in r.args["axes"])
    ):
        raise RulesError(f"{r.origin}: axes must be a list of integers, got {r.args['axes']!r}")
    if r.op == "strip" and not isinstance(r.args["key"], str):
        raise RulesError(f"{r.origin}: key must be a string, got {r.args['key']!r}")
    if r.op == "allow_dtype" and not (
        isinstance(r.args["dtypes"], list) and all(isinstance(d, str) for d in r.args["dtypes"])
    ):
        raise RulesError(f"{r.origin}: dtypes must be a list of dtype names, got {r.args['dtypes']!r}")
    if r.op == "tolerance":
        for k in ("atol", "rtol"):
            v = r.args.get(k, 0.0)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise RulesError(f"{r.origin}: {k} must be a finite number >= 0, got {v!r}")


def load_rules_file(path: str) -> RuleSet:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise RulesError(f"cannot read rules file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise RulesError(f"rules file {path} is not TOML text (not UTF-8 at byte {e.start})") from e
    return parse_rules(text, path)


# ------------------------------------------------------------------------------------ applying


@dataclass
class Mapped:
    """One side after its rules: canonical leaves, plus what happened to get there."""

    leaves: dict[KeyPath, Leaf]
    ignored: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    tolerances: list[tuple[Pattern, float, float]] = field(default_factory=list)
    allow_dtypes: list[tuple[Pattern, frozenset[str]]] = field(default_factory=list)


def apply_rules(leaves: dict[KeyPath, Leaf], rulesets: list[RuleSet]) -> Mapped:
    out = Mapped(dict(leaves))
    for rs in rulesets:
        for r in rs.rules:
            n = _apply(r, out)
            if n:
                out.applied.append(f"{rs.name}: {r.describe()} x{n}")
    return out


def _apply(r: Rule, m: Mapped) -> int:
    op = r.op
    if op == "tolerance":
        m.tolerances.append((r.pattern, float(r.args.get("atol", 0.0)), float(r.args.get("rtol", 0.0))))
        return 0
    if op == "allow_dtype":
        m.allow_dtypes.append((r.pattern, frozenset(r.args["dtypes"])))
        return 0
    if op == "stack":
        return _stack(r, m)
    new: dict[KeyPath, Leaf] = {}
    count = 0
    pat = None if op == "strip" else r.pattern
    for path, leaf in m.leaves.items():
        if op == "strip":
            if path and path[-1] == r.args["key"]:
                count += 1
                _put(new, path[:-1], replace(leaf, path=path[:-1], source_path=leaf.source_path or leaf.path), r)
            else:
                _put(new, path, leaf, r)
            continue
        caps = pat.match(path)
        if caps is None or (op == "ignore" and "kind" in r.args and leaf.kind != r.args["kind"]):
            _put(new, path, leaf, r)
            continue
        count += 1
        if op == "ignore":
            m.ignored.append(format_path(leaf.source_path or path))  # as stored
        elif op == "rename":
            dst = fill(r.args["to"], caps)
            _put(new, dst, replace(leaf, path=dst, source_path=leaf.source_path or leaf.path), r)
        elif op in ("transpose", "moveaxis"):
            _put(new, path, _transposed(leaf, r), r)
        elif op == "unstack":
            for dst, lf in _unstacked(leaf, r, caps):
                _put(new, dst, lf, r)
    m.leaves = new
    return count


def _put(new: dict[KeyPath, Leaf], path: KeyPath, leaf: Leaf, r: Rule) -> None:
    if path in new:
        raise RulesError(f"{r.origin}: two leaves map to {format_path(path)!r}")
    new[path] = leaf


def _array_rank(leaf: Leaf, r: Rule) -> int:
    if leaf.shape is None:
        raise RulesError(f"{r.origin}: {r.op} applies to arrays; {format_path(leaf.path)} is {leaf.kind}")
    return len(leaf.shape)


def _transposed(leaf: Leaf, r: Rule) -> Leaf:
    n = _array_rank(leaf, r)
    if r.op == "transpose":
        axes = [int(a) for a in r.args["axes"]]
    else:
        axes = list(range(n))
        src, dst = int(r.args["source"]), int(r.args["destination"])
        if not (-n <= src < n and -n <= dst < n):
            where = format_path(leaf.path)
            raise RulesError(f"{r.origin}: moveaxis {src} -> {dst} out of range for {where} of rank {n}")
        src, dst = src % n, dst % n
        axes.insert(dst, axes.pop(src))
    if sorted(axes) != list(range(n)):
        raise RulesError(f"{r.origin}: axes {axes} are not a permutation for {format_path(leaf.path)} of rank {n}")
    if axes == list(range(n)):
        return leaf
    v = View("transpose", children=(view_of(leaf),), axes=tuple(axes))
    return with_view(leaf, leaf.path, v)


def _unstacked(leaf: Leaf, r: Rule, caps: dict[str, Any]):
    n = _array_rank(leaf, r)
    axis = int(r.args["axis"])
    if not -n <= axis < n:
        raise RulesError(f"{r.origin}: axis {axis} out of range for {format_path(leaf.path)} {list(leaf.shape)}")
    axis %= n
    for i in range(leaf.shape[axis]):
        dst = fill(r.args["to"], dict(caps, i=str(i)))
        v = View("index", children=(view_of(leaf),), axis=axis, index=i)
        yield dst, with_view(leaf, dst, v)


def _stack(r: Rule, m: Mapped) -> int:
    pat = r.pattern
    groups: dict[KeyPath, dict[int, Leaf]] = {}
    rest: dict[KeyPath, Leaf] = {}
    for path, leaf in m.leaves.items():
        caps = pat.match(path)
        if caps is None or not str(caps.get("i", "")).isdigit():
            rest[path] = leaf
            continue
        dst = fill(r.args["to"], caps)
        members = groups.setdefault(dst, {})
        i = int(caps["i"])
        if i in members:  # `layers_1` and `layers_01`, or two trees onto one: never drop one silently
            raise RulesError(
                f"{r.origin}: {format_path(members[i].path)} and {format_path(path)} both stack into "
                f"{format_path(dst)} at index {i}"
            )
        members[i] = leaf
    count = 0
    for dst, members in groups.items():
        idx = sorted(members)
        parts = [members[i] for i in idx]
        if idx != list(range(len(idx))) or len({p.shape for p in parts}) != 1 or parts[0].shape is None:
            # Not a clean 0..L-1 run of equal shapes: leave the leaves as they are.
            for p in parts:
                _put(rest, p.path, p, r)
            continue
        axis = r.args["axis"]
        n = len(parts[0].shape)
        axis = int(axis) % (n + 1)
        v = View("stack", children=tuple(view_of(p) for p in parts), axis=axis)
        _put(rest, dst, with_view(parts[0], dst, v), r)
        count += len(parts)
    m.leaves = rest
    return count


def tolerance_for(path: KeyPath, mapped: list[Mapped]) -> tuple[float, float] | None:
    """The last matching tolerance rule of either side, if any."""
    found = None
    for m in mapped:
        for pat, atol, rtol in m.tolerances:
            if pat.match(path) is not None:
                found = (atol, rtol)
    return found


def dtype_allowed(path: KeyPath, a: str, b: str, mapped: list[Mapped]) -> bool:
    for m in mapped:
        for pat, allowed in m.allow_dtypes:
            if pat.match(path) is not None and {a, b} <= allowed:
                return True
    return False
