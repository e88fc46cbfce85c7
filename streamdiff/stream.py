"""Read blocks of both sides concurrently, compare each as it arrives, and let it go.

A bounded number of blocks is in flight (read ahead or being compared); each worker thread reads
its block from both sides at once (tensorstore releases the GIL while it fetches and decodes) and
reduces it to a `LeafStats`. The main thread merges the results in whatever order they finish:
merging is order-independent, so the numbers do not depend on scheduling.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import tensorstore as ts

from .datatypes import Block, Leaf, Pair
from .plan import BlockGrid, MemoryPlan, block_grid
from .stats import LeafStats, Policy, block_stats

ProgressFn = Callable[[int], None]


@dataclass
class PairOutcome:
    """What streaming found for one pair: merged statistics, or the first error."""

    stats: LeafStats
    grid: BlockGrid | None = None
    error: str | None = None


class _Side:
    """One side of a pair: an opened tensorstore, or an in-memory value (legacy aggregated leaves)."""

    def __init__(self, leaf: Leaf, context: ts.Context):
        self.leaf = leaf
        self.value = leaf.value if leaf.source is None else None
        self.future = None
        if leaf.source is not None:
            self.future = ts.open(leaf.source.spec, context=context, read=True, assume_metadata=True)

    def read(self, start: tuple[int, ...], stop: tuple[int, ...]) -> ts.Future | np.ndarray:
        box = tuple(slice(s, e) for s, e in zip(start, stop))
        if self.value is not None:
            return np.asarray(self.value)[box] if box else np.asarray(self.value)
        store = self.future.result()
        return store[box].read() if box else store.read()

    @property
    def chunks(self) -> tuple[int, ...] | None:
        return self.leaf.source.read_chunk_shape if self.leaf.source else None


def compare_values(
    pairs: list[Pair],
    policies: list[Policy],
    contexts: tuple[ts.Context, ts.Context],
    mem: MemoryPlan,
    progress: ProgressFn | None = None,
) -> dict[int, PairOutcome]:
    """Stream every pair with status 'compare' whose kinds are numeric; returns outcomes by index."""
    outcomes: dict[int, PairOutcome] = {}
    sides: dict[int, tuple[_Side, _Side]] = {}
    for i, p in enumerate(pairs):
        if p.status != "compare" or p.a.kind == "string":
            continue
        try:
            sides[i] = (_Side(p.a, contexts[0]), _Side(p.b, contexts[1]))
        except Exception as e:  # noqa: BLE001 - reported per leaf
            outcomes[i] = PairOutcome(LeafStats(), error=_one_line(e))
            continue
        bpe = _itemsize(p.a) + _itemsize(p.b)
        grid = block_grid(p.a.shape, sides[i][0].chunks, sides[i][1].chunks, bpe, mem.block_bytes)
        outcomes[i] = PairOutcome(LeafStats(), grid)

    def blocks() -> Iterator[Block]:
        for i in sides:
            o = outcomes[i]
            if o.error:
                continue
            p = pairs[i]
            bpe = _itemsize(p.a) + _itemsize(p.b)
            for k, (start, stop) in enumerate(o.grid.boxes()):
                n = 1
                for s, e in zip(start, stop):
                    n *= e - s
                yield Block(i, k, start, stop, n * bpe)

    lock = threading.Lock()

    def start_reads(blk: Block) -> tuple:
        """Issued from the main thread at submit time, so tensorstore fetches and decodes the
        blocks ahead while the worker threads compare earlier ones."""
        sa, sb = sides[blk.pair_index]
        return sa.read(blk.start, blk.stop), sb.read(blk.start, blk.stop)

    def run(blk: Block, reads: tuple) -> LeafStats:
        fa, fb = reads
        a = fa if isinstance(fa, np.ndarray) else fa.result()
        b = fb if isinstance(fb, np.ndarray) else fb.result()
        return block_stats(a, b, policies[blk.pair_index], blk.start, pairs[blk.pair_index].a.shape, mem.tile)

    def settle(fut: Future, blk: Block) -> None:
        o = outcomes[blk.pair_index]
        try:
            st = fut.result()
        except Exception as e:  # noqa: BLE001 - a read or decode failure marks the leaf, not the run
            with lock:
                if o.error is None:
                    o.error = _one_line(e)
        else:
            o.stats.merge(st)
        if progress:
            progress(blk.nbytes)

    pending: dict[Future, Block] = {}
    in_flight_bytes = 0
    with ThreadPoolExecutor(max_workers=mem.jobs, thread_name_prefix="streamdiff") as pool:
        for blk in blocks():
            if outcomes[blk.pair_index].error:
                if progress:
                    progress(blk.nbytes)
                continue
            while pending and (len(pending) >= mem.in_flight or in_flight_bytes + blk.nbytes > mem.in_flight_bytes):
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    b = pending.pop(fut)
                    in_flight_bytes -= b.nbytes
                    settle(fut, b)
            try:
                reads = start_reads(blk)
            except Exception as e:  # noqa: BLE001 - e.g. the store failed to open
                fut: Future = Future()
                fut.set_exception(e)
                pending[fut] = blk
            else:
                pending[pool.submit(run, blk, reads)] = blk
            in_flight_bytes += blk.nbytes
        for fut in list(pending):
            fut.exception()
            settle(fut, pending.pop(fut))
    return outcomes


def _itemsize(leaf: Leaf) -> int:
    return np.dtype(leaf.dtype).itemsize


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
