"""The work of a run as a deterministic, lazy stream of tasks, pair after pair.

A *block* task compares one box of a pair; a *chunk* task compares one stored chunk larger than the
block budget, slab by slab. Tasks of a pair are consecutive, so an executor can open a pair's stores
at its first task and drop them after its last. Nothing here holds a per-chunk list: a checkpoint of
a million chunks is generated block by block.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from ..datatypes import Pair, format_path
from ..plan import MemoryPlan, Sample, rows_hold
from .plans import PairOutcome
from .sides import itemsize, prefetch_depth


@dataclass(frozen=True)
class Task:
    pair_index: int
    start: tuple[int, ...]
    stop: tuple[int, ...]
    nbytes: int  # memory the task holds while in flight
    progress: int  # decoded bytes of both sides it accounts for
    chunk: tuple[int, ...] | None = None  # chunk tasks: index in the walked grid


def tasks(
    pairs: list[Pair],
    plans: Mapping[int, PairOutcome],
    mem: MemoryPlan,
    sample: Sample | None = None,
    order: Iterable[int] | None = None,
) -> Iterator[Task]:
    """Every task of every planned pair without an error, in pair order (or in `order`, pair
    indices of `plans`), then in block order."""
    for i in sorted(plans) if order is None else order:
        if not plans[i].error:
            yield from pair_tasks(i, pairs[i], plans[i], mem, sample)


def pair_tasks(
    i: int,
    p: Pair,
    o: PairOutcome,
    mem: MemoryPlan,
    sample: Sample | None = None,
    first: int = 0,
    end: int | None = None,
) -> Iterator[Task]:
    """The tasks of one pair, in C order of its blocks (reads walk the chunks in key order); with a
    `sample`, only the blocks it picks (the same in every process: a Dask worker re-derives them).
    Only tasks `first` to `end` (exclusive) of that order when given: task k is block k (or the k-th
    pick), so a Dask batch starting mid-pair builds no task before its own."""
    a, b = p.both()
    grid = o.planned_grid
    bpe = itemsize(a) + itemsize(b)
    if sample is None:
        picks: Iterable[int] = range(first, grid.count if end is None else min(end, grid.count))
    else:  # each pick is drawn after the ones before it: drawn, not built into tasks
        picks = itertools.islice(sample.picks(grid.count, format_path(p.path)), first, end)
    if o.rows is None:
        for start, stop in grid.boxes(picks):
            n = math.prod(e - s for s, e in zip(start, stop)) * bpe
            yield Task(i, start, stop, max(n, grid.hold), n)
        return
    hold = max(grid.hold, rows_hold(o.rows, bpe, mem, prefetch_depth(a)))
    for idx, start, stop in grid.cells(picks):
        yield Task(i, start, stop, hold, math.prod(e - s for s, e in zip(start, stop)) * bpe, idx)
