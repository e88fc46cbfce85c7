"""Run the value diff on Dask distributed: one diff, many machines, the same answer.

The client plans every pair from metadata, as for a local run, and cuts the task stream into
batches of decoded data (every worker gets at least BATCHES_PER_WORKER of them).
Each batch is a Dask task naming spans of task indices per pair; a worker re-plans the pairs it
touches (plans are deterministic), reads straight from storage with tensorstore, and returns only
mergeable statistics, merged on the client with the same code the threads use. No array data passes
through the client or the scheduler. A worker process keeps its contexts (OCDBT B-tree caches), the
items' stored sizes and its opened stores across the batches of one run.

`--max-memory` applies per worker process. A batch that raises is retried by Dask (a worker that
dies has its tasks rescheduled). A block that still fails to read marks its leaf `error`, and the
rest of the diff completes; a bug in streamdiff raises on the client with its traceback.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .. import malloc
from ..datatypes import Leaf, Pair
from ..errors import StreamdiffError
from ..plan import MemoryPlan, Sample
from ..reader.storage import DEFAULT_TIMEOUT, configure_http, io_counters, make_context
from ..stats import LeafStats, Policy
from .chunks import ItemSizes
from .cluster import batch_error, connect, lost
from .plans import PairOutcome, cache_bytes, plan_pairs
from .sides import STORAGE_ERRORS, ItemStores, OpenSide, Side, SideContexts, stored_bases
from .tasks import Task, pair_tasks
from .threads import ProgressFn, ThreadRun

#: Decoded bytes (both sides) per Dask task at most: tens to hundreds of MB keeps scheduler overhead
#: (a few ms per task) far below the time a task spends reading.
BATCH_BYTES = 256 << 20
#: ... and at least, unless the whole diff is smaller: a batch issues its first reads at once and
#: drains its last ones alone, so a batch of a few blocks spends most of its time filling and draining.
MIN_BATCH_BYTES = 64 << 20
#: Batches per worker thread at least, so that a small diff still spreads over every worker.
BATCHES_PER_WORKER = 2
RETRIES = 2
#: Opened pairs a worker keeps between batches (a batch boundary may split a pair's tasks).
CACHED_PAIRS = 256

T = TypeVar("T")
Span = tuple[int, int, int]  # (pair index, first task, end task) in pair_tasks order


@dataclass(frozen=True)
class RunState:
    """What every worker needs for a run, scattered once to all of them."""

    run_id: str
    pairs: list[Pair]
    policies: list[Policy]
    mem: MemoryPlan
    shortcut: bool
    remote: tuple[bool, bool]
    timeout: float
    io_concurrency: int | None
    trim_memory: bool
    sample: Sample | None = None
    #: Bytes of the decoded-chunk cache per side (plans.cache_bytes); each worker builds its own.
    caches: tuple[int, int] = (0, 0)


def batches(items: Iterable[T], target: int, size: Callable[[T], int]) -> Iterator[list[T]]:
    """Consecutive items grouped until about `target` bytes (reads stay in key order); lazy."""
    cur: list[T] = []
    total = 0
    for x in items:
        cur.append(x)
        total += size(x)
        if total >= target:
            yield cur
            cur, total = [], 0
    if cur:
        yield cur


def batch_target(total: int, workers: int) -> int:
    return max(MIN_BATCH_BYTES, min(BATCH_BYTES, total // max(1, workers * BATCHES_PER_WORKER)))


def run_dask(
    pairs: list[Pair],
    policies: list[Policy],
    mem: MemoryPlan,
    progress: ProgressFn | None,
    shortcut: bool,
    scheduler: str,
    timeout: float = DEFAULT_TIMEOUT,
    io_concurrency: int | None = None,
    trim_memory: bool = False,
    sample: Sample | None = None,
) -> tuple[dict[int, PairOutcome], tuple[int, int]]:
    """Returns the outcomes by pair index and the workers' (bytes read, requests)."""
    plans = plan_pairs(pairs, policies, mem, shortcut)
    first = next((pairs[i] for i in plans), None)
    remote = (_remote(first.both()[0]), _remote(first.both()[1])) if first is not None else (False, False)
    total = sum(sum(x.nbytes for x in pairs[i].both()) for i, o in plans.items() if not o.error)
    client, cluster = connect(scheduler, mem, timeout)
    bug: BaseException | None = None
    try:
        from dask.distributed import as_completed

        workers = max(1, sum(client.nthreads().values()))
        live = (i for i in sorted(plans) if not plans[i].error)
        indexed = ((k, t) for i in live for k, t in enumerate(pair_tasks(i, pairs[i], plans[i], mem, sample)))
        before = client.run(io_counters)
        state = RunState(
            uuid.uuid4().hex,
            pairs,
            policies,
            mem,
            shortcut,
            remote,
            timeout,
            io_concurrency,
            trim_memory,
            sample,
            cache_bytes(plans),
        )
        handle = client.scatter(state, broadcast=True)
        futures = {}
        for b in batches(indexed, batch_target(total, workers), lambda x: x[1].progress):
            spans = _spans(b)
            fut = client.submit(run_batch, handle, spans, pure=False, retries=RETRIES)
            futures[fut] = (spans, sum(t.progress for _, t in b))
        for fut in as_completed(futures):
            spans, nbytes = futures[fut]
            try:
                results = fut.result()
            except Exception as e:  # noqa: BLE001 - sorted below: Dask lost it, storage, or a bug
                if not (lost(e) or isinstance(e, STORAGE_ERRORS)):
                    bug = e
                    break
                results = [(i, None, batch_error(e)) for i, _, _ in spans]
            for i, stats, error in results:
                plans[i].absorb(stats, error)
            if progress:
                progress(nbytes)
        if bug is None:
            after = client.run(io_counters)
            worker_io = tuple(sum(after[w][k] - before.get(w, (0, 0))[k] for w in after) for k in (0, 1))
    except Exception as e:  # noqa: BLE001 - the scheduler or the cluster itself failed mid-run
        raise StreamdiffError(f"the Dask run failed: {batch_error(e)}") from e
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
    if bug is not None:
        raise bug
    return plans, worker_io


def _spans(batch: list[tuple[int, Task]]) -> tuple[Span, ...]:
    """(pair, first task, end task) per pair of a batch of (task index, task), in order."""
    out: list[Span] = []
    for i, group in itertools.groupby(batch, key=lambda x: x[1].pair_index):
        ks = [k for k, _ in group]
        out.append((i, ks[0], ks[-1] + 1))
    return tuple(out)


def _remote(leaf: Leaf) -> bool:
    return any(base.source is not None and not base.source.is_local for base in stored_bases(leaf))


class WorkerCache:
    """Per worker process, for one run at a time: contexts, stored sizes and opened pairs."""

    def __init__(self, state: RunState):
        self.state = state
        a, b = state.remote
        self.contexts = (make_context(a, state.io_concurrency), make_context(b, state.io_concurrency))
        # Built here, in the worker process: a tensorstore context (and its cache) is not shipped.
        self.sides = SideContexts(self.contexts, state.caches)
        self.sizes = ItemSizes()
        self.items = ItemStores()
        self.opened: OrderedDict[int, tuple[OpenSide, OpenSide]] = OrderedDict()
        self.lock = threading.Lock()  # workers with several threads run batches side by side

    def open(self, i: int, outcome: PairOutcome) -> tuple[OpenSide, OpenSide]:
        with self.lock:
            return self._open(i, outcome)

    def _open(self, i: int, outcome: PairOutcome) -> tuple[OpenSide, OpenSide]:
        if i in self.opened:
            self.opened.move_to_end(i)
            return self.opened[i]
        a, b = self.state.pairs[i].both()
        (ca, cache_a), (cb, cache_b) = self.sides.for_pair(outcome.cache_wants)
        sides = (
            OpenSide(Side(a), ca, self.sizes, self.items, cache_a),
            OpenSide(Side(b), cb, self.sizes, self.items, cache_b),
        )
        self.opened[i] = sides
        while len(self.opened) > CACHED_PAIRS:
            self.opened.popitem(last=False)
        return sides

    def release(self, i: int) -> None:
        pass  # kept for the next batch, which may hold the rest of the pair's tasks


_cache: list[WorkerCache] = []
_cache_lock = threading.Lock()


def _worker_cache(state: RunState) -> WorkerCache:
    with _cache_lock:
        if not _cache or _cache[0].state.run_id != state.run_id:
            if any(state.remote):
                configure_http(state.timeout)  # before this worker's first remote request
            malloc.reuse_freed_buffers()  # the nanny's MALLOC_TRIM_THRESHOLD_ makes every buffer fault in
            _cache[:] = [WorkerCache(state)]
        return _cache[0]


def worker_cache() -> WorkerCache | None:
    """This worker process's cache (None before its first batch): what it holds for the current run."""
    return _cache[0] if _cache else None


def run_batch(state: RunState, spans: tuple[Span, ...]) -> list[tuple[int, LeafStats | None, str | None]]:
    """On a worker: plan the batch's pairs, run its tasks with local threads, return statistics."""
    cache = _worker_cache(state)
    pairs, mem = state.pairs, state.mem
    # Planned as the client did; pairs of one metadata in the batch are planned once (plans.plan_key).
    plans = plan_pairs(pairs, state.policies, mem, state.shortcut, only=(i for i, _, _ in spans))
    todo = (t for i, k0, k1 in spans for t in pair_tasks(i, pairs[i], plans[i], mem, state.sample, k0, k1))
    ThreadRun(pairs, state.policies, plans, mem, cache, trim_memory=state.trim_memory).execute(todo)
    return [(i, None if plans[i].error else plans[i].stats, plans[i].error) for i in plans]
