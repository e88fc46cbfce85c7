"""`streamdiff.diff(a, b, ...) -> Report`: the whole pipeline, which the CLI only wraps.

locate -> tree -> (map) -> pair -> plan -> stream/stats -> Report.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from .datatypes import KeyPath, Leaf, LeafResult, Pair, Report, Tree
from .locate import Item, choose_items, locate
from .pair import pair_trees
from .plan import DEFAULT_MAX_MEMORY, default_jobs, memory_plan
from .stats import Policy
from .storage import io_counters
from .stream import PairOutcome, compare_values
from .tree import build_tree


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
    item: str | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    jobs: int | None = None,
    block_bytes: int | None = None,
    shortcut: bool = True,
    progress: Progress | None = None,
) -> Report:
    """Compare two checkpoints leaf by leaf. Raises `StreamdiffError` for unusable input.

    `a` and `b` are paths, `file://` or `gs://` URLs of an item dir, a step dir or a
    CheckpointManager root. Values are compared as `|a - b| <= atol + rtol * |b|`.
    `max_memory` bounds the process's peak memory; `block_bytes` overrides the block size the
    planner derives from it (tests use it to force many blocks per chunk). With `shortcut`, chunks
    whose stored bytes are equal on both sides are settled without decoding.
    """
    if atol < 0 or rtol < 0:
        from .errors import UsageError

        raise UsageError("--atol and --rtol must be >= 0")
    t0 = time.perf_counter()
    io0 = io_counters()
    with ThreadPoolExecutor(2) as pool:
        fa = pool.submit(locate, a, step)
        fb = pool.submit(locate, b, step)
        la, lb = fa.result(), fb.result()
    matched = choose_items(la, lb, item)
    trees_a, trees_b = _build_trees(matched)
    leaves_a = _merge_items([(prefix, t) for prefix, t in zip((m[0] for m in matched), trees_a)])
    leaves_b = _merge_items([(prefix, t) for prefix, t in zip((m[0] for m in matched), trees_b)])
    pairs = pair_trees(leaves_a, leaves_b)

    outcomes: dict[int, PairOutcome] = {}
    if not structure_only:
        policies = [_policy(p, atol, rtol, nan_equal) for p in pairs]
        mem = memory_plan(max_memory, jobs or default_jobs(), block_bytes)
        if progress:
            progress.start(sum(p.a.nbytes + p.b.nbytes for p in pairs if p.status == "compare"))
        ctx = (matched[0][1].dir.storage.context, matched[0][2].dir.storage.context)
        outcomes = compare_values(pairs, policies, ctx, mem, progress.advance if progress else None, shortcut)

    results = tuple(_result(p, outcomes.get(i), structure_only) for i, p in enumerate(pairs))
    io1 = io_counters()
    notes_a = _notes(la.notes, trees_a)
    notes_b = _notes(lb.notes, trees_b)
    return Report(
        a=a,
        b=b,
        atol=atol,
        rtol=rtol,
        nan_equal=nan_equal,
        structure_only=structure_only,
        leaves=results,
        notes_a=notes_a,
        notes_b=notes_b,
        bytes_read=io1[0] - io0[0],
        requests=io1[1] - io0[1],
        seconds=time.perf_counter() - t0,
    )


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
        fa = [pool.submit(build_tree, m[1].dir) for m in matched]
        fb = [pool.submit(build_tree, m[2].dir) for m in matched]
        return [f.result() for f in fa], [f.result() for f in fb]


def _merge_items(trees: list[tuple[str, Tree]]) -> dict[KeyPath, Leaf]:
    """Several items (matched by name on both sides) become one tree under their item names."""
    if len(trees) == 1 and not trees[0][0]:
        return trees[0][1].leaves
    out: dict[KeyPath, Leaf] = {}
    for prefix, t in trees:
        for path, leaf in t.leaves.items():
            new = (prefix,) + path
            out[new] = _with_path(leaf, new)
    return out


def _with_path(leaf: Leaf, path: KeyPath) -> Leaf:
    from dataclasses import replace

    return replace(leaf, path=path)


def _policy(p: Pair, atol: float, rtol: float, nan_equal: bool) -> Policy:
    exact = p.a is not None and p.b is not None and "scalar" in (p.a.kind, p.b.kind)
    return Policy(atol=atol, rtol=rtol, nan_equal=nan_equal, exact=exact)


def _result(p: Pair, outcome: PairOutcome | None, structure_only: bool) -> LeafResult:
    a, b = p.a, p.b
    ref = a or b
    common = dict(
        path=p.path,
        kind=ref.kind,
        shape=ref.shape,
        dtype=ref.dtype,
    )
    if b is not None and a is not None:
        if a.dtype != b.dtype and a.dtype and b.dtype:
            common["dtype_b"] = b.dtype
        if a.kind != b.kind:
            common["kind_b"] = b.kind
    if p.status in ("only_a", "only_b"):
        return LeafResult(status=p.status, **common)
    if p.status == "shape_mismatch":
        return LeafResult(status="shape_mismatch", shape_b=b.shape, message=p.message, **common)
    if p.status == "kind_mismatch":
        return LeafResult(status="different", message=p.message, **common)
    if p.status == "error":
        return LeafResult(status="error", message=p.message, **common)
    if p.status == "equal":
        return LeafResult(status="equal", **common)
    # status 'compare'
    dtype_differs = "dtype_b" in common
    if a.kind == "string":
        same = a.value == b.value
        msg = None if same else f"{_short(a.value)} vs {_short(b.value)}"
        return LeafResult(status="equal" if same else "different", message=msg, **common)
    if structure_only or outcome is None:
        return LeafResult(status="different" if dtype_differs else "equal", **common)
    if outcome.error:
        return LeafResult(status="error", message=f"reading values failed: {outcome.error}", **common)
    stats = outcome.stats.to_dict(a.shape)
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


def _short(v: object, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."
