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

A top-level `include = ["maxtext-linen"]` runs the rules of those presets (files of the presets
directory, by name, themselves expanded) before the file's own, so a preset that extends another
does not repeat it. Paths are written in the pattern language of `patterns.py`. Transposes and
stacks are lazy views (`views.py`), never copies.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from ..datatypes import KeyPath, Leaf, format_path
from ..options import is_tolerance
from .patterns import Pattern, RulesError, fill
from .views import View, move_axis, stacked, transposed, view_of, with_view

OPS = ("rename", "ignore", "strip", "transpose", "moveaxis", "unstack", "stack", "tolerance", "allow_dtype")
#: Where presets live, and where `include` names are looked up (the wheel ships them as package data).
PRESET_DIR: Traversable = resources.files("streamdiff.mapping").joinpath("presets")


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


def parse_rules(text: str, name: str, presets: Traversable = PRESET_DIR, chain: tuple[str, ...] = ()) -> RuleSet:
    """A rules file's text as a RuleSet named `name`, its `include`s read from `presets` and
    expanded in front of its own rules. `chain` holds the presets being expanded (cycle check)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{name}: not valid TOML ({e})") from e
    unknown = set(doc) - {"rule", "name", "description", "include"}
    if unknown:
        raise RulesError(f"{name}: unknown top-level key(s) {sorted(unknown)}; rules are [[rule]] tables")
    include = doc.get("include", [])
    if not (isinstance(include, list) and all(isinstance(x, str) for x in include)):
        raise RulesError(f"{name}: include must be a list of preset names, got {include!r}")
    rules = [r for inc in include for r in _included(inc, name, presets, chain).rules]
    tables = doc.get("rule", [])
    if not isinstance(tables, list):
        raise RulesError(f"{name}: 'rule' must be [[rule]] tables, got {tables!r}")
    for k, r in enumerate(tables, 1):
        origin = f"{name} rule {k}"
        if not isinstance(r, dict) or r.get("op") not in OPS:
            raise RulesError(f"{origin}: 'op' must be one of {', '.join(OPS)}")
        rules.append(Rule(r["op"], dict(r), origin))
        _validate(rules[-1])
    return RuleSet(doc.get("name", name), tuple(rules))


def read_preset(name: str, presets: Traversable = PRESET_DIR, chain: tuple[str, ...] = ()) -> RuleSet:
    """The preset `<presets>/<name>.toml`, its includes expanded. The caller checks the name."""
    text = presets.joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return parse_rules(text, f"preset {name}", presets, chain + (name,))


def _included(name: str, by: str, presets: Traversable, chain: tuple[str, ...]) -> RuleSet:
    if name in chain:
        raise RulesError(f"{by}: include cycle {' -> '.join(chain + (name,))}")
    if not re.fullmatch(r"[\w-]+", name) or not presets.joinpath(f"{name}.toml").is_file():
        known = sorted(f.name[: -len(".toml")] for f in presets.iterdir() if f.name.endswith(".toml"))
        raise RulesError(f"{by}: include {name!r} is not a preset (presets: {', '.join(known)})")
    return read_preset(name, presets, chain)


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
            if not is_tolerance(v):
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
class MappedSide:
    """One side after its rules: canonical leaves, plus what happened to get there (rules
    applied, paths ignored) and the per-path tolerances and allowed dtypes its rules declared."""

    leaves: dict[KeyPath, Leaf]
    ignored: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    tolerances: list[tuple[Pattern, float, float]] = field(default_factory=list)
    allow_dtypes: list[tuple[Pattern, frozenset[str]]] = field(default_factory=list)


def apply_rules(leaves: dict[KeyPath, Leaf], rulesets: list[RuleSet]) -> MappedSide:
    out = MappedSide(dict(leaves))
    for rs in rulesets:
        for r in rs.rules:
            n = _apply(r, out)
            if n:
                out.applied.append(f"{rs.name}: {r.describe()} x{n}")
    return out


def _apply(r: Rule, m: MappedSide) -> int:
    op = r.op
    if op == "tolerance":
        m.tolerances.append((r.pattern, float(r.args.get("atol", 0.0)), float(r.args.get("rtol", 0.0))))
        return 0
    if op == "allow_dtype":
        m.allow_dtypes.append((r.pattern, frozenset(r.args["dtypes"])))
        return 0
    if op == "stack":
        return _stack(r, m)
    if op == "strip":
        return _strip(r, m)
    new: dict[KeyPath, Leaf] = {}
    count = 0
    pat = r.pattern
    for path, leaf in m.leaves.items():
        caps = pat.match(path)
        if caps is None or (op == "ignore" and "kind" in r.args and leaf.kind != r.args["kind"]):
            _put(new, path, leaf, r)
            continue
        count += 1
        if op == "ignore":
            m.ignored.append(format_path(leaf.source_path or path))  # as stored
        elif op == "rename":
            dst = fill(r.args["to"], caps)
            _put(new, dst, _moved(leaf, dst), r)
        elif op in ("transpose", "moveaxis"):
            _put(new, path, _transposed(leaf, r), r)
        elif op == "unstack":
            for dst, lf in _unstacked(leaf, r, caps):
                _put(new, dst, lf, r)
    m.leaves = new
    return count


def _strip(r: Rule, m: MappedSide) -> int:
    """`strip`: drop the last key of the paths that end in `key` (it has no pattern)."""
    new: dict[KeyPath, Leaf] = {}
    count = 0
    for path, leaf in m.leaves.items():
        if path and path[-1] == r.args["key"]:
            count += 1
            _put(new, path[:-1], _moved(leaf, path[:-1]), r)
        else:
            _put(new, path, leaf, r)
    m.leaves = new
    return count


def _moved(leaf: Leaf, path: KeyPath) -> Leaf:
    """`leaf` at `path`, remembering where it was stored (the first move records it)."""
    return replace(leaf, path=path, source_path=leaf.source_path or leaf.path)


def _put(new: dict[KeyPath, Leaf], path: KeyPath, leaf: Leaf, r: Rule) -> None:
    if path in new:
        raise RulesError(f"{r.origin}: two leaves map to {format_path(path)!r}")
    new[path] = leaf


def _array_shape(leaf: Leaf, r: Rule) -> tuple[int, ...]:
    if leaf.shape is None:
        raise RulesError(f"{r.origin}: {r.op} applies to arrays; {format_path(leaf.path)} is {leaf.kind}")
    return leaf.shape


def _transposed(leaf: Leaf, r: Rule) -> Leaf:
    n = len(_array_shape(leaf, r))
    if r.op == "transpose":
        axes = [int(a) for a in r.args["axes"]]
    else:
        src, dst = int(r.args["source"]), int(r.args["destination"])
        if not (-n <= src < n and -n <= dst < n):
            where = format_path(leaf.path)
            raise RulesError(f"{r.origin}: moveaxis {src} -> {dst} out of range for {where} of rank {n}")
        axes = list(move_axis(n, src % n, dst % n))
    if sorted(axes) != list(range(n)):
        raise RulesError(f"{r.origin}: axes {axes} are not a permutation for {format_path(leaf.path)} of rank {n}")
    return transposed(leaf, tuple(axes))


def _unstacked(leaf: Leaf, r: Rule, caps: dict[str, Any]) -> Iterator[tuple[KeyPath, Leaf]]:
    shape = _array_shape(leaf, r)
    n = len(shape)
    axis = int(r.args["axis"])
    if not -n <= axis < n:
        raise RulesError(f"{r.origin}: axis {axis} out of range for {format_path(leaf.path)} {list(shape)}")
    axis %= n
    for i in range(shape[axis]):
        dst = fill(r.args["to"], dict(caps, i=str(i)))
        v = View("index", children=(view_of(leaf),), axis=axis, index=i)
        yield dst, with_view(leaf, dst, v)


def _stack(r: Rule, m: MappedSide) -> int:
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
    axis = int(r.args["axis"])
    count = 0
    for dst, members in groups.items():
        stack = stacked(members, dst, lambda shape, _count: axis % (len(shape) + 1))
        if stack is None:  # not a clean 0..L-1 run of equal shapes: leave the leaves as they are
            for i in sorted(members):
                _put(rest, members[i].path, members[i], r)
            continue
        _put(rest, dst, stack, r)
        count += len(members)
    m.leaves = rest
    return count
