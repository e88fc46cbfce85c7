"""Run tasks on a thread pool with a bounded total of bytes in flight, and merge their statistics.

Each task reduces to a `LeafStats`; the calling thread merges them in whatever order they finish.
Merging is order-independent, so the numbers do not depend on scheduling. A pair's stores are
opened when its first task is submitted and dropped when its last task has settled (tasks of a
pair are consecutive), so memory follows the pairs in flight, not the size of the tree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Protocol

import tensorstore as ts

from .. import malloc
from ..datatypes import Pair
from ..plan import MemoryPlan, Sample, fill_stagger, tasks_in_flight
from ..stats import LeafStats, Policy
from .chunks import ItemSizes
from .plans import PairOutcome, cache_bytes, plan_pairs
from .sides import STORAGE_ERRORS, ItemStores, OpenSide, Side, SideContexts, itemsize, one_line, source_of, stored_bases
from .tasks import Task, tasks
from .work import PairWork, start_task

ProgressFn = Callable[[int], None]

#: Return freed heap memory to the OS after this many tasks, when asked to (see malloc.py).
TRIM_EVERY = 8


class Opener(Protocol):
    """Opens a pair's two sides for reading, and is told when the pair's last task has settled."""

    def open(self, i: int, outcome: PairOutcome) -> tuple[OpenSide, OpenSide]: ...

    def release(self, i: int) -> None: ...


class FreshOpener:
    """Opens each pair when asked and keeps nothing after it (one run, one process). `caches`: bytes
    of the decoded-chunk cache each side shares (plans.cache_bytes)."""

    def __init__(self, pairs: list[Pair], contexts: tuple[ts.Context, ts.Context], caches: tuple[int, int] = (0, 0)):
        self.pairs = pairs
        self.contexts = SideContexts(contexts, caches)
        self.sizes = ItemSizes()  # one OCDBT B-tree dump per item for the whole run
        self.items = ItemStores()

    def open(self, i: int, outcome: PairOutcome) -> tuple[OpenSide, OpenSide]:
        a, b = self.pairs[i].both()
        (ca, cache_a), (cb, cache_b) = self.contexts.for_pair(outcome.cache_wants)
        return (
            OpenSide(Side(a), ca, self.sizes, self.items, cache_a),
            OpenSide(Side(b), cb, self.sizes, self.items, cache_b),
        )

    def release(self, i: int) -> None:
        pass

    def warm(self, plans: dict[int, PairOutcome]) -> None:
        """On remote stores, begin at once what the first tasks of the first pair reading each item
        would do one round trip after another: the B-tree walk for stored sizes (when its plan reads
        stored bytes) and the held item store's manifest and root, both sides at once."""
        seen: set[tuple[int, int]] = set()
        for i, o in plans.items():
            if o.error:
                continue
            for k, leaf in enumerate(self.pairs[i].both()):
                for base in stored_bases(leaf):
                    source = source_of(base)
                    kv = source.spec["kvstore"]
                    if source.is_local or kv.get("driver") != "ocdbt" or (k, id(kv["base"])) in seen:
                        continue
                    seen.add((k, id(kv["base"])))
                    context = self.contexts.contexts[k]
                    self.items.warm(base, context)
                    if base is leaf and (o.shortcut or o.rows is not None):
                        self.sizes.start(source, context)


def run_threads(
    pairs: list[Pair],
    policies: list[Policy],
    contexts: tuple[ts.Context, ts.Context],
    mem: MemoryPlan,
    progress: ProgressFn | None = None,
    shortcut: bool = True,
    trim_memory: bool = False,
    sample: Sample | None = None,
) -> dict[int, PairOutcome]:
    """Stream every pair the engine reads (plans.streams_values) on `mem.jobs` threads; returns the
    outcomes by pair index. `trim_memory` returns freed heap to the OS every TRIM_EVERY tasks."""
    plans = plan_pairs(pairs, policies, mem, shortcut)
    opener = FreshOpener(pairs, contexts, cache_bytes(plans))
    opener.warm(plans)
    run = ThreadRun(pairs, policies, plans, mem, opener, progress, trim_memory)
    order = largest_first(pairs, plans) if any(_remote(pairs[i]) for i in plans) else None
    run.execute(tasks(pairs, plans, mem, sample, order))
    return plans


def largest_first(pairs: list[Pair], plans: Mapping[int, PairOutcome]) -> list[int]:
    """Pair indices by decreasing block size (ties in pair order). The last tasks of a run finish
    with nothing left to read: when they are the smallest ones, the link's idle tail is short (on a
    remote store, the last chunk of a leaf of 16 MiB chunks keeps both threads busy after the last
    byte has arrived)."""

    def size(i: int) -> int:
        o = plans[i]
        if o.grid is None:
            return 0
        a, b = pairs[i].both()
        return max(o.grid.hold, math.prod(o.grid.block_shape) * (itemsize(a) + itemsize(b)))

    return sorted(plans, key=lambda i: (-size(i), i))


def _remote(p: Pair) -> bool:
    """Whether either side of `p` (a pair the engine reads: both sides exist) reads a store that is
    not on local disk."""
    return any(b.source is not None and not b.source.is_local for leaf in p.both() for b in stored_bases(leaf))


class ThreadRun:
    """One execution of a stream of tasks over planned pairs; results are merged into `plans`."""

    def __init__(
        self,
        pairs: list[Pair],
        policies: list[Policy],
        plans: dict[int, PairOutcome],
        mem: MemoryPlan,
        opener: Opener,
        progress: ProgressFn | None = None,
        trim_memory: bool = False,
    ):
        self.pairs = pairs
        self.policies = policies
        self.plans = plans
        self.mem = mem
        self.opener = opener
        self.progress = progress
        self.trim_memory = trim_memory
        self.opened: dict[int, PairWork] = {}
        self.pending_of: dict[int, int] = {}  # tasks submitted and not settled, per opened pair
        self.current: int | None = None  # the pair whose tasks are being submitted
        self.settled = 0
        self._remote: tuple[int, bool] = (-1, False)  # (pair, whether it reads a remote store)

    def execute(self, todo: Iterable[Task]) -> None:
        """Run `todo` with bounded bytes in flight; merge each result into its pair's outcome."""
        pending: dict[Future[LeafStats], Task] = {}
        held = 0
        with ThreadPoolExecutor(max_workers=self.mem.jobs, thread_name_prefix="streamdiff") as pool:
            for t in todo:
                self._enter(t.pair_index)
                if self.plans[t.pair_index].error:
                    self._advance(t)
                    continue
                most = self._most(t)
                while pending and (len(pending) >= most or held + t.nbytes > self.mem.in_flight_bytes):
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        d = pending.pop(fut)
                        held -= d.nbytes
                        self._settle(fut, d)
                if pending and not self.settled:
                    stagger = fill_stagger(self._remote[1], t.nbytes)
                    if stagger:
                        time.sleep(stagger)  # plan.REMOTE_STAGGER_SECONDS: large remote reads end apart
                submitted = self._submit(pool, t)
                if submitted is None:
                    self._advance(t)
                    continue
                pending[submitted] = t
                held += t.nbytes
            self._enter(None)
            for fut in list(pending):
                self._settle(fut, pending.pop(fut))
        for i in list(self.opened):
            self._drop(i)

    def _most(self, t: Task) -> int:
        """Tasks in flight at most while `t` is submitted (plan.tasks_in_flight)."""
        if self._remote[0] != t.pair_index:
            self._remote = (t.pair_index, _remote(self.pairs[t.pair_index]))
        return tasks_in_flight(self.mem, self._remote[1], t.nbytes)

    def _enter(self, i: int | None) -> None:
        """Tasks of pair `i` start (None: no more tasks): the pair before it gets no more tasks."""
        if i != self.current:
            before, self.current = self.current, i
            if before is not None and not self.pending_of.get(before):
                self._drop(before)

    def _submit(self, pool: ThreadPoolExecutor, t: Task) -> Future[LeafStats] | None:
        """Open the pair at its first task, issue the task's reads, hand the rest to the pool. A
        storage failure marks the pair (its later tasks are skipped); None when nothing was submitted."""
        i = t.pair_index
        try:
            w = self.opened.get(i)
            if w is None:
                a, b = self.opener.open(i, self.plans[i])
                w = self.opened[i] = PairWork(self.pairs[i], self.policies[i], self.plans[i], a, b, self.mem)
            rest = start_task(t, w)
        except STORAGE_ERRORS as e:  # e.g. the store failed to open, a chunk file is corrupt
            self.plans[i].absorb(None, one_line(e))
            return None
        self.pending_of[i] = self.pending_of.get(i, 0) + 1
        return pool.submit(rest)

    def _settle(self, fut: Future[LeafStats], t: Task) -> None:
        i = t.pair_index
        self.settled += 1
        if self.trim_memory and self.settled % TRIM_EVERY == 0:
            malloc.trim()  # keep RSS at live memory, whatever the checkpoint size
        try:
            stats = fut.result()
        except STORAGE_ERRORS as e:  # a read or decode failure marks the leaf, not the run
            self.plans[i].absorb(None, one_line(e))
        else:
            self.plans[i].absorb(stats, None)
        self.pending_of[i] -= 1
        if not self.pending_of[i] and i != self.current:
            self._drop(i)
        self._advance(t)

    def _drop(self, i: int) -> None:
        self.pending_of.pop(i, None)
        if self.opened.pop(i, None) is not None:
            self.opener.release(i)

    def _advance(self, t: Task) -> None:
        if self.progress:
            self.progress(t.progress)
