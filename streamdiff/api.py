"""`streamdiff.diff(a, b, ...) -> Report`: the whole pipeline, which the CLI only wraps.

locate -> tree -> (map) -> pair -> plan -> engine/stats -> Report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

from . import gcpause, malloc
from .datatypes import (
    KeyPath,
    Kind,
    LeafResult,
    Pair,
    PairStatus,
    Report,
    Status,
    Tree,
    ValueStats,
    format_path,
    json_equal,
)
from .engine.dask import run_dask
from .engine.plans import PairOutcome
from .engine.threads import run_threads
from .errors import NotACheckpointError, UsageError
from .mapping.layouts import LayerAxes
from .mapping.patterns import Pattern
from .mapping.stage import MapResult, map_trees
from .mapping.views import moved_source, source_of
from .options import Budget, DiffOptions, MapOptions, Steps, Tolerance
from .pair import VALUE_KINDS, pair_trees
from .plan import DEFAULT_MAX_MEMORY, DEFAULT_SAMPLE_SEED, Sample, default_jobs, memory_plan
from .reader.locate import Item, Located, choose_items, locate
from .reader.storage import DEFAULT_TIMEOUT, configure_http, io_counters
from .reader.tree import read_item
from .stats import Policy
from .units import parse_size


class Progress(Protocol):
    """Receives the total once values start streaming, then decoded bytes as blocks finish."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


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
    sample: float | None = None,
    sample_seed: int = DEFAULT_SAMPLE_SEED,
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
    `per_layer` adds statistics per index of the layer axis of scanned leaves (`LeafResult.stats.layers`).
    `sample` (a fraction in (0, 1]) compares only that share of each leaf's blocks, at least one,
    picked by `sample_seed` (see `plan.Sample`); 1 compares everything, as without it.

    The keyword arguments become one `options.DiffOptions` (validated as it is built); `compare` takes it.
    """
    options = DiffOptions(
        tolerance=Tolerance(atol, rtol, nan_equal),
        steps=Steps(step, step_a, step_b),
        item=item,
        mapping=MapOptions(tuple(rules), preset, auto, layer_axis),
        budget=Budget(parse_size(max_memory, "max_memory"), jobs, block_bytes, io_concurrency, timeout),
        structure_only=structure_only,
        shortcut=shortcut,
        scheduler=scheduler,
        only=only,
        exclude=exclude,
        per_layer=per_layer,
        sample=sample,
        sample_seed=sample_seed,
    )
    return compare(a, b, options, progress)


@gcpause.unfreezes
def compare(a: str, b: str, o: DiffOptions, progress: Progress | None = None) -> Report:
    """The pipeline behind `diff`, for callers that hold a `DiffOptions` already (the CLI)."""
    sampling = _sampling(o.sample, o.sample_seed, o.structure_only)
    selection = Selection.compile(o.only, o.exclude)
    configure_http(o.budget.timeout)  # validates it too, before any work
    t0 = time.perf_counter()
    io0 = io_counters()
    with gcpause.paused():
        la, lb, matched, trees_a, trees_b = _resolve(a, b, o.steps, o.item, o.budget.io_concurrency, o.budget.timeout)
        m, pairs = _map_and_pair(trees_a, trees_b, matched, o.mapping)
        pairs, excluded = selection.split(pairs)

    outcomes: dict[int, PairOutcome] = {}
    policies: list[Policy] = []  # one per pair once values are compared; none with --structure-only
    remote_io = (0, 0)
    tol = o.tolerance
    if not o.structure_only:
        layers = LayerAxes.of(pairs, o.mapping.layer_axis) if o.per_layer else None
        policies = [_policy(p, tol, m, layers) for p in pairs]
        mem = memory_plan(o.budget.max_memory, o.budget.jobs or default_jobs(), o.budget.block_bytes)
        if progress:  # sampled: about that share (a leaf's one block may be more)
            total = sum(sum(x.nbytes for x in p.both()) for p in pairs if p.status == PairStatus.COMPARE)
            progress.start(int(total * sampling.fraction) if sampling else total)
        ctx = (matched[0][1].dir.storage.context, matched[0][2].dir.storage.context)
        advance = progress.advance if progress else None
        trim = malloc.trim_enabled()  # the CLI's choice; library calls leave the allocator alone
        if o.scheduler:
            budget = o.budget
            outcomes, remote_io = run_dask(
                pairs,
                policies,
                mem,
                advance,
                o.shortcut,
                o.scheduler,
                budget.timeout,
                budget.io_concurrency,
                trim,
                sampling,
            )
        else:
            outcomes = run_threads(pairs, policies, ctx, mem, advance, o.shortcut, trim, sampling)

    with gcpause.paused():
        results = tuple(
            _result(p, outcomes.get(i), o.structure_only, m, policies[i] if policies else None, tol.nan_equal, sampling)
            for i, p in enumerate(pairs)
        )
    io1 = io_counters()
    return Report(
        a=a,
        b=b,
        atol=tol.atol,
        rtol=tol.rtol,
        nan_equal=tol.nan_equal,
        structure_only=o.structure_only,
        leaves=results,
        notes_a=_notes(la.notes, trees_a) + m.notes_a,
        notes_b=_notes(lb.notes, trees_b) + m.notes_b,
        ignored_a=tuple(m.a.ignored),
        ignored_b=tuple(m.b.ignored),
        excluded=tuple(format_path(p.path) for p in excluded),
        bytes_read=io1[0] - io0[0] + remote_io[0],
        requests=io1[1] - io0[1] + remote_io[1],
        seconds=time.perf_counter() - t0,
        sample=sampling.fraction if sampling else None,
        sample_seed=sampling.seed if sampling else None,
    )


def _sampling(sample: float | None, seed: int, structure_only: bool) -> Sample | None:
    """The `Sample` to plan with, or None: no `sample`, or 1 (every block: an ordinary diff)."""
    if sample is None:
        return None
    if structure_only:
        raise UsageError("--sample compares a share of the values; --structure-only reads none: drop one")
    s = Sample(sample, seed)  # validates both
    return None if s.fraction == 1 else s


def explain(a: str, b: str, o: DiffOptions) -> tuple[MapResult, list[tuple[KeyPath, str | None, str | None]]]:
    """Metadata only: each canonical path with the stored path(s) and transform behind it per side
    (the steps, item, mapping and remote I/O limits of `o`; nothing about values is read)."""
    configure_http(o.budget.timeout)
    _, _, matched, trees_a, trees_b = _resolve(a, b, o.steps, o.item, o.budget.io_concurrency, o.budget.timeout)
    m, pairs = _map_and_pair(trees_a, trees_b, matched, o.mapping)
    return m, [(p.path, source_of(p.a), source_of(p.b)) for p in pairs]


def _map_and_pair(
    trees_a: list[Tree], trees_b: list[Tree], matched: list[tuple[str, Item, Item]], mo: MapOptions
) -> tuple[MapResult, list[Pair]]:
    m = map_trees(trees_a, trees_b, [x[0] for x in matched], mo.rules, mo.preset, mo.auto, mo.layer_axis)
    return m, pair_trees(m.a.leaves, m.b.leaves)


def _resolve(
    a: str, b: str, steps: Steps, item: str | None, io_concurrency: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[Located, Located, list[tuple[str, Item, Item]], list[Tree], list[Tree]]:
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
        la, lb = _note_items_left(la, item), _note_items_left(lb, item)
    trees_a, trees_b = _build_trees(matched)
    for side, url, trees in (("A", a, trees_a), ("B", b, trees_b)):
        if not any(leaf.kind != Kind.EMPTY for t in trees for leaf in t.leaves.values()):
            where = ", ".join(t.location for t in trees) or url
            raise NotACheckpointError(f"no arrays or values found in {side} ({where}): nothing to compare")
    if [i.display for _, i, _ in matched] == [i.display for _, _, i in matched]:
        same = ", ".join(i.display for _, i, _ in matched)
        la = replace(la, notes=(f"A and B are the same directory ({same})",) + la.notes)
    return la, lb, matched, trees_a, trees_b


def _note_items_left(loc: Located, item: str) -> Located:
    """`loc` with a note naming the items of its step that `--item` leaves out, if any."""
    left = sorted(i.name for i in loc.items if i.name and i.name != item)
    if not left:
        return loc
    return replace(loc, notes=loc.notes + (f"--item {item}: other items not compared: {', '.join(left)}",))


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
        try:
            return [f.result() for f in fa], [f.result() for f in fb]
        finally:
            # Remote listings were kept from locating for the tree reads (each a round trip or more).
            for m in matched:
                m[1].dir.storage.forget_listings()
                m[2].dir.storage.forget_listings()


def _policy(p: Pair, tol: Tolerance, m: MapResult, layers: LayerAxes | None = None) -> Policy:
    """`tol`, unless a rules file's tolerance matches the pair's path."""
    exact = p.a is not None and p.b is not None and Kind.SCALAR in (p.a.kind, p.b.kind)
    atol, rtol = m.tolerance_for(p.path) or (tol.atol, tol.rtol)
    layer = layers.axis(p) if layers is not None else None
    return Policy(atol=atol, rtol=rtol, nan_equal=tol.nan_equal, exact=exact, layer_axis=layer)


@dataclass(frozen=True)
class Selection:
    """`--only` / `--exclude`: which canonical paths are compared. Patterns are the rules' language."""

    only: tuple[Pattern, ...] = ()
    exclude: tuple[Pattern, ...] = ()

    @staticmethod
    def compile(only: Sequence[str], exclude: Sequence[str]) -> Selection:
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
    m: MapResult,
    policy: Policy | None = None,
    nan_equal: bool = True,
    sample: Sample | None = None,
) -> LeafResult:
    a, b = p.a, p.b
    if structure_only and p.status is PairStatus.COMPARE and a is not None and b is not None:
        if (
            a.kind is b.kind
            and a.dtype == b.dtype
            and a.kind not in VALUE_KINDS
            and a.view is None
            and b.view is None
            and (a.source_path is None or a.source_path == a.path)
            and (b.source_path is None or b.source_path == b.path)
        ):  # unmoved: `moved_source` gives None for both
            # The common pair, as decided below in fewer steps: same kind and dtype, nothing to report.
            return LeafResult(p.path, Status.EQUAL, a.kind, a.shape, dtype=a.dtype)
    ref = p.ref
    source_a, source_b = moved_source(a), moved_source(b)
    dtype_b: str | None = None
    dtype_allowed = False
    kind_b: Kind | None = None
    if b is not None and a is not None:
        if a.dtype != b.dtype and a.dtype and b.dtype:
            dtype_b = b.dtype
            dtype_allowed = m.dtype_allowed(p.path, a.dtype, b.dtype)
        if a.kind != b.kind:
            kind_b = b.kind

    def out(
        status: Status,
        message: str | None = None,
        stats: ValueStats | None = None,
        shape_b: tuple[int, ...] | None = None,
    ) -> LeafResult:
        return LeafResult(
            path=p.path,
            status=status,
            kind=ref.kind,
            shape=ref.shape,
            shape_b=shape_b,
            dtype=ref.dtype,
            dtype_b=dtype_b,
            kind_b=kind_b,
            dtype_allowed=dtype_allowed,
            source_a=source_a,
            source_b=source_b,
            stats=stats,
            message=message,
        )

    if p.status in (PairStatus.ONLY_A, PairStatus.ONLY_B):
        return out(Status(p.status))
    if p.status is PairStatus.NOT_COMPARED:
        return out(Status.NOT_COMPARED, p.message)
    if p.status is PairStatus.SHAPE_MISMATCH:
        return out(Status.SHAPE_MISMATCH, p.message, shape_b=p.both()[1].shape)
    if p.status is PairStatus.KIND_MISMATCH:
        return out(Status.DIFFERENT, p.message)
    if p.status is PairStatus.ERROR:
        return out(Status.ERROR, p.message)
    if p.status is PairStatus.EQUAL:
        return out(Status.EQUAL)
    # PairStatus.COMPARE
    a, b = p.both()
    dtype_differs = dtype_b is not None and not dtype_allowed
    if a.kind in VALUE_KINDS:
        # Non-numeric arrays (strings, datetimes) compare by value; a dtype no rule allows still differs.
        same = json_equal(a.value, b.value, nan_equal)
        msg = None if same else f"{_short(a.value)} vs {_short(b.value)}"
        if dtype_differs:
            msg = "; ".join(x for x in (f"dtype {a.dtype} vs {b.dtype}", msg) if x)
        return out(Status.EQUAL if same and not dtype_differs else Status.DIFFERENT, msg)
    if structure_only:
        return out(Status.DIFFERENT if dtype_differs else Status.EQUAL)
    if outcome is None:
        # A pair the value stage did not stream: never vouch for values nobody looked at.
        return out(Status.NOT_COMPARED, "values were not read")
    if outcome.error:
        return out(Status.ERROR, f"reading values failed: {outcome.error}")
    acc = outcome.stats
    found: dict[str, object] = {"streamed": outcome.rows is not None}
    if policy is not None and acc.max_abs_values is not None:
        found["max_abs_diff_allowed"] = _allowed(policy, acc.max_abs_values[1])
    if outcome.grid is not None:
        found["blocks"] = outcome.grid.count
        if sample is not None:  # the blocks read and compared; `count` is their elements
            found["sampled_count"] = sample.count(outcome.grid.count)
        amp = max(outcome.grid.amplification_a, outcome.grid.amplification_b)
        if amp > 1.0:
            found["read_amplification"] = amp
    # A leaf without a shape is a scalar: `result` reads no shape as () either way.
    stats = acc.result(a.shape or (), **found)
    differs = stats.mismatches > 0 or dtype_differs
    msg = "; ".join(outcome.warnings) or None
    return out(Status.DIFFERENT if differs else Status.EQUAL, msg, stats)


def _allowed(policy: Policy, b: float | complex | str) -> float:
    """What the tolerance allowed at one position: atol + rtol * |b| (0 for exact comparisons)."""
    if policy.exact or isinstance(b, (bool, int)):
        return 0.0
    if isinstance(b, str):  # complex, written as text
        b = complex(b)
    return policy.atol + policy.rtol * abs(b)


def _short(v: object, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."
