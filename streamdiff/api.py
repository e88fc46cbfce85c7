"""`streamdiff.diff(a, b, ...) -> Report`: the whole pipeline, which the CLI only wraps.

locate -> tree -> (map) -> pair -> plan -> stream/stats -> Report.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

from . import gcpause
from .datatypes import KeyPath, Leaf, LeafResult, Pair, Report, Status, Tree, format_path, json_equal
from .errors import NotACheckpointError, UsageError
from .layouts import align, detect, load_preset
from .locate import Item, choose_items, locate
from .pair import VALUE_KINDS, pair_trees
from .plan import DEFAULT_MAX_MEMORY, check_max_memory, default_jobs, memory_plan
from .rules import Mapped, Pattern, apply_rules, dtype_allowed, load_rules_file, tolerance_for
from .stats import Policy
from .storage import DEFAULT_TIMEOUT, configure_http, io_counters
from .stream import PairOutcome, compare_values
from .tree import read_item
from .units import parse_size


class Progress(Protocol):
    """Receives the total once values start streaming, then decoded bytes as blocks finish."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


@dataclass(frozen=True)
class Mapping:
    """How the two sides were brought to one canonical tree (the `map` stage)."""

    a: Mapped
    b: Mapped
    layout_a: str | None
    layout_b: str | None
    notes_a: tuple[str, ...]
    notes_b: tuple[str, ...]


@gcpause.unfreezes
def diff(
    a: str,
    b: str,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    structure_only: bool = False,
    nan_equal: bool = True,
    step: int | None = None,
    step_a: int | None = None,
    step_b: int | None = None,
    item: str | None = None,
    rules: Sequence[str] = (),
    preset: str | None = None,
    auto: bool = True,
    layer_axis: int | None = None,
    max_memory: int | str = DEFAULT_MAX_MEMORY,
    jobs: int | None = None,
    block_bytes: int | None = None,
    shortcut: bool = True,
    io_concurrency: int | None = None,
    scheduler: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
    per_layer: bool = False,
) -> Report:
    """Compare two checkpoints leaf by leaf. Raises `StreamdiffError` for unusable input.

    `a` and `b` are paths, `file://` or `gs://` URLs of an item dir, a step dir or a
    CheckpointManager root. Values are compared as `|a - b| <= atol + rtol * |b|`.
    Before pairing, each side is mapped to a canonical tree: the preset of its detected layout
    (unless `auto` is False or `preset` names one for both sides), then the `rules` files in order,
    then alignment of scanned and unscanned layers (`layer_axis` when shapes cannot tell).
    `max_memory` bounds the process's peak memory; `block_bytes` overrides the block size the
    planner derives from it (tests use it to force many blocks per chunk). With `shortcut`, chunks
    whose stored bytes are equal on both sides are settled without decoding. `io_concurrency`
    caps parallel requests to remote storage. `scheduler` ('tcp://host:8786' or 'local:N') runs
    the value diff on Dask workers. `timeout` (seconds) bounds how long a remote request may make
    no progress and how long to wait for the Dask scheduler; a stalled store fails after about
    twice that. It takes effect at the first remote use in a process (tensorstore reads it once).
    `step` picks the step of every side that is a manager root;
    `step_a` / `step_b` pick it for one side (and require that side to be a root).
    `max_memory` takes what `--max-memory` takes ('4G', '512M') or bytes.
    `only` / `exclude` are rules' path patterns ('params/**', '**/kernel') matched against the
    canonical paths: leaves outside the selection are not read and are listed in `Report.excluded`.
    `per_layer` adds statistics per index of the layer axis of scanned leaves (`stats['layers']`).
    """
    check_tolerance(atol, rtol)
    max_memory = parse_size(max_memory, "max_memory")
    check_max_memory(max_memory)
    selection = Selection.compile(only, exclude)
    configure_http(timeout)  # validates it too, before any work
    t0 = time.perf_counter()
    io0 = io_counters()
    with gcpause.paused():
        la, lb, matched, trees_a, trees_b = _resolve(a, b, _Steps(step, step_a, step_b), item, io_concurrency, timeout)
        m, pairs = _map_and_pair(trees_a, trees_b, matched, rules, preset, auto, layer_axis)
        pairs, excluded = selection.split(pairs)

    outcomes: dict[int, PairOutcome] = {}
    policies: list[Policy | None] = [None] * len(pairs)
    remote_io = (0, 0)
    if not structure_only:
        layers = LayerAxes.of(pairs, layer_axis) if per_layer else None
        policies = [_policy(p, atol, rtol, nan_equal, m, layers) for p in pairs]
        mem = memory_plan(max_memory, jobs or default_jobs(), block_bytes)
        if progress:
            progress.start(sum(p.a.nbytes + p.b.nbytes for p in pairs if p.status == "compare"))
        ctx = (matched[0][1].dir.storage.context, matched[0][2].dir.storage.context)
        advance = progress.advance if progress else None
        outcomes, remote_io = compare_values(pairs, policies, ctx, mem, advance, shortcut, scheduler, timeout)

    with gcpause.paused():
        results = tuple(
            _result(p, outcomes.get(i), structure_only, m, policies[i], nan_equal) for i, p in enumerate(pairs)
        )
    io1 = io_counters()
    return Report(
        a=a,
        b=b,
        atol=atol,
        rtol=rtol,
        nan_equal=nan_equal,
        structure_only=structure_only,
        leaves=results,
        notes_a=_notes(la.notes, trees_a) + m.notes_a,
        notes_b=_notes(lb.notes, trees_b) + m.notes_b,
        ignored_a=tuple(m.a.ignored),
        ignored_b=tuple(m.b.ignored),
        excluded=tuple(format_path(p.path) for p in excluded),
        bytes_read=io1[0] - io0[0] + remote_io[0],
        requests=io1[1] - io0[1] + remote_io[1],
        seconds=time.perf_counter() - t0,
    )


@gcpause.unfreezes
def explain(
    a: str,
    b: str,
    *,
    step: int | None = None,
    step_a: int | None = None,
    step_b: int | None = None,
    item: str | None = None,
    rules: Sequence[str] = (),
    preset: str | None = None,
    auto: bool = True,
    layer_axis: int | None = None,
) -> tuple[Mapping, list[tuple[KeyPath, str | None, str | None]]]:
    """Metadata only: each canonical path with the stored path(s) and transform behind it per side."""
    with gcpause.paused():
        _, _, matched, trees_a, trees_b = _resolve(a, b, _Steps(step, step_a, step_b), item)
        m, pairs = _map_and_pair(trees_a, trees_b, matched, rules, preset, auto, layer_axis)
    return m, [(p.path, _source(p.a), _source(p.b)) for p in pairs]


def _map_and_pair(trees_a, trees_b, matched, rules, preset, auto, layer_axis) -> tuple[Mapping, list[Pair]]:
    m = map_trees(trees_a, trees_b, [x[0] for x in matched], rules, preset, auto, layer_axis)
    return m, pair_trees(m.a.leaves, m.b.leaves)


def _moved(leaf: Leaf | None) -> str | None:
    """The stored path (or view) behind a leaf that rules moved; None when it is where it was."""
    if leaf is None or (leaf.view is None and (leaf.source_path is None or leaf.source_path == leaf.path)):
        return None
    return _source(leaf)


def _source(leaf: Leaf | None) -> str | None:
    if leaf is None:
        return None
    return leaf.view.describe() if leaf.view is not None else format_path(leaf.source_path or leaf.path)


def check_tolerance(atol: float, rtol: float) -> None:
    """NaN passes `atol < 0` and makes every comparison true: refuse it, and infinities, here."""
    for name, v in (("atol", atol), ("rtol", rtol)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise UsageError(f"--{name} must be a finite number >= 0, got {v!r}")


@dataclass(frozen=True)
class _Steps:
    """`step` for every side that is a manager root; `a` / `b` for one side only."""

    both: int | None = None
    a: int | None = None
    b: int | None = None

    def __post_init__(self) -> None:
        for name, v in (("step", self.both), ("step_a", self.a), ("step_b", self.b)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise UsageError(f"{name} must be a step number (an int >= 0), got {v!r}")

    def side(self, which: str) -> int | None:
        own = self.a if which == "A" else self.b
        return own if own is not None else self.both


def _resolve(
    a: str, b: str, steps: _Steps, item: str | None, io_concurrency: int | None = None, timeout: float = DEFAULT_TIMEOUT
):
    with ThreadPoolExecutor(2) as pool:
        fa = pool.submit(locate, a, steps.side("A"), io_concurrency, timeout)
        fb = pool.submit(locate, b, steps.side("B"), io_concurrency, timeout)
        la, lb = fa.result(), fb.result()
    if steps.both is not None and not (la.is_root or lb.is_root):
        raise UsageError(f"--step applies to a CheckpointManager root; neither {a} nor {b} is one")
    for side, url, own, loc in (("A", a, steps.a, la), ("B", b, steps.b, lb)):
        if own is not None and not loc.is_root:
            raise UsageError(f"{side}'s step ({own}) applies to a CheckpointManager root; {url} is not one")
    matched = choose_items(la, lb, item)
    if item is not None:  # the other items of the step are left out at the user's word: say which
        for side in ("a", "b"):
            loc = la if side == "a" else lb
            left = sorted(i.name for i in loc.items if i.name and i.name != item)
            if left:
                note = f"--item {item}: other items not compared: {', '.join(left)}"
                if side == "a":
                    la = replace(la, notes=la.notes + (note,))
                else:
                    lb = replace(lb, notes=lb.notes + (note,))
    trees_a, trees_b = _build_trees(matched)
    for side, url, trees in (("A", a, trees_a), ("B", b, trees_b)):
        if not any(leaf.kind != "empty" for t in trees for leaf in t.leaves.values()):
            where = ", ".join(t.location for t in trees) or url
            raise NotACheckpointError(f"no arrays or values found in {side} ({where}): nothing to compare")
    if [i.display for _, i, _ in matched] == [i.display for _, _, i in matched]:
        same = ", ".join(i.display for _, i, _ in matched)
        la = replace(la, notes=(f"A and B are the same directory ({same})",) + la.notes)
    return la, lb, matched, trees_a, trees_b


def map_trees(
    trees_a: list[Tree],
    trees_b: list[Tree],
    prefixes: list[str],
    rules: Sequence[str],
    preset: str | None,
    auto: bool,
    layer_axis: int | None,
) -> Mapping:
    """The `map` stage: presets and rules per side, then alignment of the two sides."""
    leaves_a = _merge_items(list(zip(prefixes, trees_a)))
    leaves_b = _merge_items(list(zip(prefixes, trees_b)))
    user = [load_rules_file(f) for f in rules]
    detected = [detect(list(x)) if auto else None for x in (leaves_a, leaves_b)]
    # Presets rename to the canonical form; needed only when the two layouts differ, so a diff of
    # two checkpoints in one layout keeps their own paths.
    layouts = [preset, preset] if preset else (detected if detected[0] != detected[1] else [None, None])
    out = []
    for leaves, layout in zip((leaves_a, leaves_b), layouts):
        sets = ([load_preset(layout)] if layout else []) + user
        out.append((layout, apply_rules(leaves, sets)))
    (layout_a, ma), (layout_b, mb) = out
    aligned = align(ma, mb, layer_axis) if auto or layer_axis is not None else ([], [])
    notes = []
    for layout, found, m in ((layout_a, detected[0], ma), (layout_b, detected[1], mb)):
        n = []
        if layout:
            n.append(f"layout {layout} ({'preset' if preset else 'detected'}): mapped to the canonical form")
        elif found:
            n.append(f"layout {found} (detected, same on both sides: paths kept as stored)")
        if rules:
            n.append("rules: " + ", ".join(rules))
        if m.ignored:
            n.append(f"{len(m.ignored)} path(s) ignored by rules")
        notes.append(n)
    notes[0] += aligned[0]
    notes[1] += aligned[1]
    return Mapping(ma, mb, layout_a, layout_b, tuple(notes[0]), tuple(notes[1]))


def _notes(located: tuple[str, ...], trees: list[Tree]) -> tuple[str, ...]:
    """What was decided for the user: step picked, item dirs read, their layout, any caveats."""
    out = list(located)
    for t in trees:
        out.append(f"{t.layout}: {t.location}")
        out.extend(t.notes)
    return tuple(out)


def _build_trees(matched: list[tuple[str, Item, Item]]) -> tuple[list[Tree], list[Tree]]:
    """Both sides' metadata at once: on remote storage this halves the wall time."""
    with ThreadPoolExecutor(max(2, 2 * len(matched))) as pool:
        fa = [pool.submit(read_item, m[1]) for m in matched]
        fb = [pool.submit(read_item, m[2]) for m in matched]
        return [f.result() for f in fa], [f.result() for f in fb]


def _merge_items(trees: list[tuple[str, Tree]]) -> dict[KeyPath, Leaf]:
    """One tree for a side: several items (matched by name) go under their item names. Every leaf
    remembers its path as it was, so the report can say where rules moved it from."""
    out: dict[KeyPath, Leaf] = {}
    for prefix, t in trees:
        for path, leaf in t.leaves.items():
            # A root-level leaf (a single array, a JSON item holding one value, an item not read)
            # keeps the empty path: named after its directory, two sides named differently would
            # never pair.
            new = (prefix,) + path if prefix else path
            # A leaf still at its stored path needs no copy: `source_path` None means "where it was"
            # (rules that move a leaf record where from).
            same = new == leaf.path and leaf.source_path in (None, new)
            out[new] = leaf if same else replace(leaf, path=new, source_path=new)
    return out


def _policy(p: Pair, atol: float, rtol: float, nan_equal: bool, m: Mapping, layers: LayerAxes | None = None) -> Policy:
    exact = p.a is not None and p.b is not None and "scalar" in (p.a.kind, p.b.kind)
    tol = tolerance_for(p.path, [m.a, m.b])
    if tol is not None:
        atol, rtol = tol
    layer = layers.axis(p) if layers is not None else None
    return Policy(atol=atol, rtol=rtol, nan_equal=nan_equal, exact=exact, layer_axis=layer)


@dataclass(frozen=True)
class LayerAxes:
    """Where the stacked layer axis of each scanned leaf is, for `per_layer`.

    A scanned leaf is an array under a `layers` key (MaxText's and nn.scan's name for the stack).
    Its layer axis is `forced` (--layer-axis) when given; else the axis on which alignment stacked
    unscanned layers; else the axis holding the layer count: the count is the size most scanned
    leaves have on axis 1 (MaxText's param_scan_axis), and a leaf whose axis 1 is not that size
    (a vector, a PRNG key stacked on axis 0) uses its first axis of that size."""

    forced: int | None
    count: int | None

    @staticmethod
    def of(pairs: list[Pair], forced: int | None) -> LayerAxes:
        scanned = [p for p in pairs if _scanned(p)]
        if forced is not None and scanned and not any(forced < len(p.a.shape) for p in scanned):
            # Every scanned leaf would be left without per-layer statistics: a silent "no layer
            # differs" next to differing leaves. Say what is wrong instead.
            most = max(len(p.a.shape) for p in scanned)
            raise UsageError(f"--layer-axis {forced}: no scanned leaf has that axis (they have at most {most} axes)")
        sizes = Counter(p.a.shape[1] for p in scanned if len(p.a.shape) >= 2 and p.a.kind == "array")
        return LayerAxes(forced, sizes.most_common(1)[0][0] if sizes else None)

    def axis(self, p: Pair) -> int | None:
        if not _scanned(p):
            return None
        shape = p.a.shape
        if self.forced is not None:
            return self.forced if self.forced < len(shape) else None
        for leaf in (p.a, p.b):
            if leaf.view is not None and leaf.view.op == "stack":
                return leaf.view.axis
        if self.count is None:
            return 1 if len(shape) >= 2 else 0
        if len(shape) >= 2 and shape[1] == self.count and p.a.kind == "array":
            return 1
        return next((k for k, n in enumerate(shape) if n == self.count), None)


def _scanned(p: Pair) -> bool:
    return (
        p.status == "compare"
        and p.a is not None
        and bool(p.a.shape)
        and p.a.kind in ("array", "prng_key")
        and "layers" in p.path
    )


@dataclass(frozen=True)
class Selection:
    """`--only` / `--exclude`: which canonical paths are compared. Patterns are the rules' language."""

    only: tuple[Pattern, ...] = ()
    exclude: tuple[Pattern, ...] = ()

    @staticmethod
    def compile(only: Sequence[str], exclude: Sequence[str]) -> Selection:
        if isinstance(only, str) or isinstance(exclude, str):
            raise UsageError("only / exclude take a list of patterns, not a string")
        return Selection(tuple(Pattern.compile(x) for x in only), tuple(Pattern.compile(x) for x in exclude))

    def wants(self, path: KeyPath) -> bool:
        if self.only and not any(p.match(path) is not None for p in self.only):
            return False
        return not any(p.match(path) is not None for p in self.exclude)

    def split(self, pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
        """(selected, excluded), both in tree order."""
        if not self.only and not self.exclude:
            return pairs, []
        keep: list[Pair] = []
        left: list[Pair] = []
        for p in pairs:
            (keep if self.wants(p.path) else left).append(p)
        return keep, left


def _result(
    p: Pair,
    outcome: PairOutcome | None,
    structure_only: bool,
    m: Mapping,
    policy: Policy | None = None,
    nan_equal: bool = True,
) -> LeafResult:
    a, b = p.a, p.b
    ref = a or b
    common = dict(
        path=p.path,
        kind=ref.kind,
        shape=ref.shape,
        dtype=ref.dtype,
        source_a=_moved(a),
        source_b=_moved(b),
    )
    if b is not None and a is not None:
        if a.dtype != b.dtype and a.dtype and b.dtype:
            common["dtype_b"] = b.dtype
            common["dtype_allowed"] = dtype_allowed(p.path, a.dtype, b.dtype, [m.a, m.b])
        if a.kind != b.kind:
            common["kind_b"] = b.kind
    if p.status in ("only_a", "only_b"):
        return LeafResult(status=Status(p.status), **common)
    if p.status == "not_compared":
        return LeafResult(status=Status.NOT_COMPARED, message=p.message, **common)
    if p.status == "shape_mismatch":
        return LeafResult(status="shape_mismatch", shape_b=b.shape, message=p.message, **common)
    if p.status == "kind_mismatch":
        return LeafResult(status="different", message=p.message, **common)
    if p.status == "error":
        return LeafResult(status="error", message=p.message, **common)
    if p.status == "equal":
        return LeafResult(status="equal", **common)
    # status 'compare'
    dtype_differs = "dtype_b" in common and not common["dtype_allowed"]
    if a.kind in VALUE_KINDS:
        # Non-numeric arrays (strings, datetimes) compare by value; a dtype no rule allows still differs.
        same = json_equal(a.value, b.value, nan_equal)
        msg = None if same else f"{_short(a.value)} vs {_short(b.value)}"
        if dtype_differs:
            msg = "; ".join(x for x in (f"dtype {a.dtype} vs {b.dtype}", msg) if x)
        return LeafResult(status="equal" if same and not dtype_differs else "different", message=msg, **common)
    if structure_only:
        return LeafResult(status="different" if dtype_differs else "equal", **common)
    if outcome is None:
        # A pair the value stage did not stream: never vouch for values nobody looked at.
        return LeafResult(status=Status.NOT_COMPARED, message="values were not read", **common)
    if outcome.error:
        return LeafResult(status="error", message=f"reading values failed: {outcome.error}", **common)
    stats = outcome.stats.to_dict(a.shape)
    if policy is not None and stats.get("max_abs_diff_values") is not None:
        stats["max_abs_diff_allowed"] = _allowed(policy, stats["max_abs_diff_values"][1])
    if outcome.rows is not None:
        stats["streamed"] = True
    if outcome.grid is not None:
        stats["blocks"] = outcome.grid.count
        amp = max(outcome.grid.amplification_a, outcome.grid.amplification_b)
        if amp > 1.0:
            stats["read_amplification"] = amp
    differs = stats["mismatches"] > 0 or dtype_differs
    msg = "; ".join(outcome.warnings) or None
    return LeafResult(status="different" if differs else "equal", stats=stats, message=msg, **common)


def _allowed(policy: Policy, b: object) -> float:
    """What the tolerance allowed at one position: atol + rtol * |b| (0 for exact comparisons)."""
    if policy.exact or isinstance(b, (bool, int)):
        return 0.0
    if isinstance(b, str):  # complex, written as text
        b = complex(b)
    return policy.atol + policy.rtol * abs(b)


def _short(v: object, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."
