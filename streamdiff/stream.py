"""Read blocks of both sides concurrently, compare each as it arrives, and let it go.

Work is a stream of tasks with a bounded total of bytes in flight:

* a *block* task compares one box of a pair. Its tensorstore reads are issued when the task is
  submitted, so tensorstore fetches and decodes ahead while worker threads compare earlier blocks.
  When both sides store the block's chunks with the same format, the stored bytes are compared
  first (the equal-bytes shortcut) and equal chunks are settled without decoding;
* a *chunk* task handles one stored chunk larger than the block budget: it compares slabs of rows,
  stream-decoding the stored bytes (see `chunks.py`) and never holding the whole chunk.

Each task reduces to a `LeafStats`; the main thread merges them in whatever order they finish.
Merging is order-independent, so the numbers do not depend on scheduling.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import tensorstore as ts

from . import malloc
from .chunks import ItemSizes, RawStore, chunk_format, stream_chunk
from .datatypes import Leaf, Pair
from .dtypes import family
from .encoding import Encoding, audit_chunk_files, encoding_of, plausible, plausible_ends
from .plan import BlockGrid, MemoryPlan, RowsPlan, pair_grid, pair_rows, prefetch_depth, refuse_leaf, rows_hold
from .rules import view_of
from .stats import LeafStats, Policy, block_stats, layers_settled
from .storage import DEFAULT_TIMEOUT, cached_context, describe

ProgressFn = Callable[[int], None]

#: After this many chunks of a leaf in a row whose stored bytes differ (with no sizes to tell in
#: advance), stop trying the shortcut on that leaf: its values differ everywhere.
SHORTCUT_GIVE_UP = 4
#: Return freed heap memory to the OS after this many tasks (see malloc.py).
TRIM_EVERY = 8


@dataclass
class PairOutcome:
    """What streaming found for one pair: merged statistics, or the first error."""

    stats: LeafStats
    grid: BlockGrid | None = None
    rows: RowsPlan | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    shortcut: bool = False
    misses: int = 0  # consecutive shortcut misses (see SHORTCUT_GIVE_UP)
    #: A chunk stored on neither side holds the same fill value on both (plain zarr stores).
    both_missing_equal: bool = False

    def absorb(self, stats: LeafStats | None, error: str | None) -> None:
        """Fold in one task's result (from a thread or a Dask worker); the first error sticks."""
        if error is not None:
            if self.error is None:
                self.error = error
        elif stats is not None:
            self.stats.merge(stats)


@dataclass(frozen=True)
class _Task:
    pair_index: int
    start: tuple[int, ...]
    stop: tuple[int, ...]
    nbytes: int  # memory the task holds while in flight
    progress: int  # decoded bytes of both sides it accounts for
    chunk: tuple[int, ...] | None = None  # chunk tasks: index in the walked grid


class _Side:
    """One side of a pair, as a tensorstore: the stored array, a lazy view (rules), or an
    in-memory value (legacy aggregated leaves) wrapped by `ts.array`."""

    def __init__(self, leaf: Leaf, context: ts.Context, sizes: ItemSizes):
        self.leaf = leaf
        self.context = context
        self._raw: RawStore | None = None
        self._sizes = sizes
        self._lock = threading.Lock()
        stored = leaf.view is None and leaf.source is not None
        self.format = chunk_format(leaf.source) if stored else None
        self.encoding = encoding_of(leaf.source, leaf.dtype) if stored else None
        for base in _stored_bases(leaf):
            audit_chunk_files(base.source, encoding_of(base.source, base.dtype))
        if stored:
            # opened asynchronously: every leaf's open is in flight at once
            self.future = ts.open(leaf.source.spec, context=context, read=True, assume_metadata=True)
        else:
            self.future = _Ready(view_of(leaf).open(context))

    def cache(self, context: ts.Context) -> None:
        """Read through `context`'s decoded-chunk cache from now on (crossed chunk grids)."""
        stored = self.leaf.view is None and self.leaf.source is not None
        spec = self.leaf.source.spec if stored else None
        self.future = (
            ts.open(spec, context=context, read=True, assume_metadata=True)
            if stored
            else _Ready(view_of(self.leaf).open(context))
        )

    def read(self, start: tuple[int, ...], stop: tuple[int, ...]) -> ts.Future:
        box = tuple(slice(s, e) for s, e in zip(start, stop))
        store = self.future.result()
        return store[box].read() if box else store.read()

    @property
    def raw(self) -> RawStore:
        with self._lock:
            if self._raw is None:
                sizes = self._sizes.for_source(self.leaf.source, self.context)
                self._raw = RawStore(self.leaf.source, self.context, sizes)
            return self._raw

    @property
    def fill(self) -> np.ndarray | None:
        """What a chunk that is not stored holds: the fill value where the store's writer skips
        fill-valued chunks (plain zarr / n5), None where a missing chunk is lost data (Orbax)."""
        if not self.leaf.source.spec.get("fill_missing_data_reads", True):
            return None
        value = self.future.result().fill_value
        return np.zeros((), self.leaf.dtype) if value is None else np.asarray(value)

    @property
    def chunks(self) -> tuple[int, ...] | None:
        if self.leaf.view is not None:
            return self.leaf.view.chunks
        return self.leaf.source.read_chunk_shape if self.leaf.source else None

    @property
    def streamable(self) -> bool:
        return self.format is not None and self.format.streamable

    def whole_decode_bytes(self, big: bool) -> int:
        """Decoded bytes of one stored chunk that tensorstore will decode whole: a big chunk that
        cannot stream, or any chunk behind a view (views are read through tensorstore only)."""
        if self.leaf.view is not None:
            bases = _stored_bases(self.leaf)
            return max((math.prod(b.source.read_chunk_shape) * _itemsize(b) for b in bases), default=0)
        return self.chunk_bytes() if big and not self.streamable else 0

    def row_bytes(self) -> int:
        """Decoded bytes of one row (first-axis index) of a chunk: what streaming holds at least."""
        return math.prod(self.chunks[1:]) * np.dtype(self.leaf.dtype).itemsize

    def chunk_bytes(self) -> int:
        if self.leaf.source is None:
            return 0  # in-memory values and views: never stream-decoded from stored bytes
        return math.prod(self.chunks) * np.dtype(self.leaf.dtype).itemsize


class _Ready:
    """An already opened store behind the same `.result()` interface as a tensorstore future."""

    def __init__(self, store: ts.TensorStore):
        self.store = store

    def result(self) -> ts.TensorStore:
        return self.store


class _Engine:
    """Plans every pair, then runs its tasks on a thread pool (or, on a Dask worker, a subset).

    `only` restricts opening and planning to some pair indices (a Dask worker's batch); plans
    are deterministic, so a worker plans a pair exactly as the client did.
    """

    def __init__(
        self,
        pairs,
        policies,
        contexts,
        mem: MemoryPlan,
        shortcut: bool,
        progress: ProgressFn | None,
        only: set[int] | None = None,
    ):
        self.pairs = pairs
        self.policies = policies
        self.mem = mem
        self.progress = progress
        self.sizes = ItemSizes()
        self.sides: dict[int, tuple[_Side, _Side]] = {}
        self.outcomes: dict[int, PairOutcome] = {}
        self.lock = threading.Lock()
        self.settled = 0
        for i, p in enumerate(pairs):
            if p.status != "compare" or p.a.kind in ("string", "json") or (only is not None and i not in only):
                continue
            try:
                sa, sb = _Side(p.a, contexts[0], self.sizes), _Side(p.b, contexts[1], self.sizes)
            except Exception as e:  # noqa: BLE001 - reported per leaf
                self.outcomes[i] = PairOutcome(LeafStats(), error=_one_line(e))
                continue
            self.sides[i] = (sa, sb)
            self.outcomes[i] = self._plan(i, p, sa, sb, shortcut)
        self._share_caches(contexts)

    def _share_caches(self, contexts) -> None:
        """One decoded-chunk cache per side, as large as the largest any plan asked for (plan.pair_grid):
        a cache per leaf would keep every finished leaf's chunks until the end of the run."""
        for k in (0, 1):
            wants = {i: (o.grid.cache_a, o.grid.cache_b)[k] for i, o in self.outcomes.items() if o.grid and not o.error}
            if max(wants.values(), default=0):
                ctx = cached_context(contexts[k], max(wants.values()))
                for i, n in wants.items():
                    if n:
                        self.sides[i][k].cache(ctx)

    # -------------------------------------------------------------------------------- planning

    def _plan(self, i: int, p: Pair, sa: _Side, sb: _Side, shortcut: bool) -> PairOutcome:
        sizes = (_itemsize(p.a), _itemsize(p.b))
        # A chunk bigger than a whole block is streamed; smaller ones are decoded by tensorstore.
        limit = self.mem.block_bytes
        big_a, big_b = sa.chunk_bytes() > limit, sb.chunk_bytes() > limit
        out = PairOutcome(LeafStats())
        whole = tuple(s.whole_decode_bytes(big) for s, big in ((sa, big_a), (sb, big_b)))
        rows = tuple(s.row_bytes() if big and s.streamable else 0 for s, big in ((sa, big_a), (sb, big_b)))
        codecs = tuple(x.source.codec if x.source else "-" for x in (p.a, p.b))
        out.error = refuse_leaf(p.a.shape, (sa.chunks, sb.chunks), whole, codecs, self.mem, rows)
        if out.error:
            return out
        out.shortcut = shortcut and self._shortcut_ok(p, sa, sb, i)
        out.both_missing_equal = out.shortcut and _same_fill(p.a, p.b)
        if p.a.shape and 0 not in p.a.shape and (big_a or big_b):
            can_a = not big_a or sa.streamable
            can_b = not big_b or sb.streamable
            if can_a and can_b:
                out.rows = pair_rows(p.a.shape, sa.chunks, sb.chunks, big_a, big_b, sizes, self.mem)
                out.grid = out.rows.grid
                return out
            for side, leaf, s, can in (("A", p.a, sa, can_a), ("B", p.b, sb, can_b)):
                if not can:
                    need = s.chunk_bytes() >> 20
                    out.warnings.append(
                        f"checkpoint {side}: codec {leaf.source.codec} cannot be streamed; "
                        f"decoding whole {need} MiB chunks (over the block size, within --max-memory)"
                    )
        out.grid = pair_grid(p.a.shape, sa.chunks, sb.chunks, sizes, self.mem)
        return out

    def _shortcut_ok(self, p: Pair, sa: _Side, sb: _Side, i: int) -> bool:
        """Equal stored bytes imply equal values only for the same format, chunk for chunk."""
        fa, fb = sa.format, sb.format
        if fa is None or fb is None or not fa.signature or fa.signature != fb.signature or p.a.dtype != p.b.dtype:
            return False
        if fa.chunk_shape != fa.inner_shape or fb.chunk_shape != fb.inner_shape:
            return False  # multi-chunk shards: decoded per inner chunk instead
        if family(p.a.dtype) in ("float", "complex") and not self.policies[i].nan_equal:
            return False  # NaN == NaN bytes would hide --nan-unequal mismatches
        return True

    def tasks(self) -> Iterator[_Task]:
        for i in self.sides:
            o = self.outcomes[i]
            if o.error:
                continue
            bpe = _itemsize(self.pairs[i].a) + _itemsize(self.pairs[i].b)
            if o.rows is not None:
                counts = [-(-n // c) for n, c in zip(o.grid.shape, o.grid.block_shape)]
                hold = max(o.grid.hold, rows_hold(o.rows, bpe, self.mem, _prefetch_depth(self.sides[i][0])))
                for idx in itertools.product(*[range(c) for c in counts]):
                    start = tuple(k * c for k, c in zip(idx, o.grid.block_shape))
                    stop = tuple(min(s + c, n) for s, c, n in zip(start, o.grid.block_shape, o.grid.shape))
                    yield _Task(i, start, stop, hold, math.prod(e - s for s, e in zip(start, stop)) * bpe, idx)
            else:
                for start, stop in o.grid.boxes():
                    n = math.prod(e - s for s, e in zip(start, stop)) * bpe
                    yield _Task(i, start, stop, max(n, o.grid.hold), n)

    # ------------------------------------------------------------------------------- execution

    def submit(self, pool: ThreadPoolExecutor, t: _Task) -> Future:
        o = self.outcomes[t.pair_index]
        sa, sb = self.sides[t.pair_index]
        if t.chunk is not None:
            return pool.submit(self._chunk_task, t, sa, sb, o)
        if o.shortcut:
            # Each side's keys in its own spelling ('0.0', '0/0', 'c/0/0'...): the same chunk may be
            # named differently on the two sides, and a key of A's spelling is missing on B.
            keys = list(zip(self._chunk_keys(sa, t), self._chunk_keys(sb, t)))
            raw = self._start_raw_reads(o, sa, sb, keys)
            if raw is not None:
                return pool.submit(self._block_shortcut, t, sa, sb, o, raw)
        reads = (sa.read(t.start, t.stop), sb.read(t.start, t.stop))
        return pool.submit(self._block, t, reads)

    def _start_raw_reads(self, o: PairOutcome, sa: _Side, sb: _Side, keys: list[tuple[str, str]]) -> list | None:
        """Stored-byte reads of the block's chunks, (key on A, key on B) each, issued at submit time
        like decode reads; None when known sizes already differ (different bytes: decode without
        reading them twice)."""
        ra, rb = sa.raw, sb.raw
        for ka, kb in keys:
            x, y = ra.size(ka), rb.size(kb)
            if x is not None and y is not None and x != y:
                return None
        return [(ra.read(ka), rb.read(kb), ra.size(ka) is not None) for ka, kb in keys]

    def _block(self, t: _Task, reads) -> LeafStats:
        a, b = reads[0].result(), reads[1].result()
        return block_stats(a, b, self.policies[t.pair_index], t.start, self.pairs[t.pair_index].a.shape, self.mem.tile)

    def _chunk_keys(self, side: _Side, t: _Task) -> list[str]:
        """The stored keys of the chunks a block covers, spelled as this side's store spells them."""
        c = side.format.chunk_shape
        ranges = [range(s // k, -(-e // k)) for s, e, k in zip(t.start, t.stop, c)]
        return [side.format.key(idx) for idx in itertools.product(*ranges)]

    def _block_shortcut(self, t: _Task, sa: _Side, sb: _Side, o: PairOutcome, raw: list) -> LeafStats:
        settled = self._compare_raw(o, raw, sa.encoding)
        if settled is not None:
            return self._settled(t, settled)
        return self._block(t, (sa.read(t.start, t.stop), sb.read(t.start, t.stop)))

    def _compare_raw(self, o: PairOutcome, raw: list, enc: Encoding) -> tuple[int, int] | None:
        """(chunks, bytes of both sides) when every chunk's stored bytes are equal and plausible
        (see encoding.py); else None."""
        total = 0
        for fa, fb, sized in raw:
            ra, rb = fa.result(), fb.result()
            if ra.state != "value" and rb.state != "value" and o.both_missing_equal:
                continue  # fill value on both sides
            va, vb = ra.value, rb.value  # each .value access copies the bytes: take them once
            same = ra.state == "value" and rb.state == "value" and va == vb
            if same and not plausible(va, enc):
                return None  # equal bytes vouch only for a valid encoding: let the decoder judge
            if not same:
                if not sized:
                    with self.lock:  # no sizes to tell in advance: give up after a few misses
                        o.misses += 1
                        if o.misses >= SHORTCUT_GIVE_UP:
                            o.shortcut = False
                return None
            total += 2 * len(va)
        with self.lock:
            o.misses = 0
        return len(raw), total

    def _compare_raw_streaming(
        self, o: PairOutcome, ra: RawStore, rb: RawStore, key_a: str, key_b: str, enc: Encoding
    ) -> tuple[int, int] | None:
        """Big chunks: compare stored bytes piece by piece, never holding a whole chunk. Each side
        reads its own key (the two stores may spell the chunk's key differently)."""
        x, y = ra.size(key_a), rb.size(key_b)
        if x is None or y is None or x != y:
            return None  # unknown sizes: decoding is the only bounded-memory way to know
        piece = self.mem.piece_bytes

        def fetch(off: int):
            rng = slice(off, min(off + piece, x))
            return ra.kv.read(key_a, byte_range=rng), rb.kv.read(key_b, byte_range=rng)

        nxt = fetch(0)
        head = prev = va = b""
        for off in range(0, x, piece):
            fa, fb = nxt
            if off + piece < x:
                nxt = fetch(off + piece)  # the next pieces are on their way while these compare
            prev, va = va, fa.result().value
            if va != fb.result().value:
                return None
            head = head or va
        # Equal bytes vouch only for a plausible encoding (encoding.py); else decode.
        return (1, 2 * x) if plausible_ends(head, prev + va, x, enc) else None

    def _piece(self) -> int:
        """Bytes per range read when streaming a chunk: large enough to amortise a round trip."""
        return self.mem.piece_bytes

    def _settled(self, t: _Task, settled: tuple[int, int]) -> LeafStats:
        chunks, stored_bytes = settled
        n = math.prod(e - s for s, e in zip(t.start, t.stop))
        a = self.pairs[t.pair_index].a
        out = LeafStats(
            count=n,
            n_defined=n,
            identical=True,
            shortcut_chunks=chunks,
            shortcut_bytes=stored_bytes,
            nan_unknown=family(a.dtype) in ("float", "complex"),
        )
        axis = self.policies[t.pair_index].layer_axis
        if axis is not None and 0 <= axis < len(t.start):
            extent = t.stop[axis] - t.start[axis]
            out.layers = layers_settled(extent, t.start[axis], n // extent if extent else 0)
        return out

    def _chunk_task(self, t: _Task, sa: _Side, sb: _Side, o: PairOutcome) -> LeafStats:
        """One big chunk, slab by slab; the stored bytes compared first when the shortcut applies."""
        rows = o.rows
        if o.shortcut and rows.stream_a and rows.stream_b:
            keys = sa.format.key(t.chunk), sb.format.key(t.chunk)
            settled = self._compare_raw_streaming(o, sa.raw, sb.raw, *keys, sa.encoding)
            if settled is not None:
                return self._settled(t, settled)
        policy = self.policies[t.pair_index]
        shape = self.pairs[t.pair_index].a.shape
        extent = tuple(e - s for s, e in zip(t.start, t.stop))
        piece = self._piece()
        ita = itb = None
        if rows.stream_a:
            ita = stream_chunk(sa.raw, t.chunk, rows.slab_rows, piece, _prefetch_depth(sa), sa.fill)
        if rows.stream_b:
            itb = stream_chunk(sb.raw, t.chunk, rows.slab_rows, piece, _prefetch_depth(sb), sb.fill)
        acc = LeafStats()
        for r0 in range(0, extent[0], rows.slab_rows):
            r1 = min(r0 + rows.slab_rows, extent[0])
            start = (t.start[0] + r0,) + t.start[1:]
            stop = (t.start[0] + r1,) + t.stop[1:]
            clip = (slice(0, r1 - r0),) + tuple(slice(0, e) for e in extent[1:])
            a = next(ita)[clip] if ita else None
            b = next(itb)[clip] if itb else None
            if a is None:
                a = sa.read(start, stop).result()
            if b is None:
                b = sb.read(start, stop).result()
            acc.merge(block_stats(a, b, policy, start, shape, self.mem.tile))
            del a, b
        return acc

    def run(self, tasks: list[_Task] | None = None) -> dict[int, PairOutcome]:
        """Run `tasks` (default: all of them) with bounded bytes in flight; merge into outcomes."""
        pending: dict[Future, _Task] = {}
        held = 0
        with ThreadPoolExecutor(max_workers=self.mem.jobs, thread_name_prefix="streamdiff") as pool:
            for t in self.tasks() if tasks is None else tasks:
                if self.outcomes[t.pair_index].error:
                    self._advance(t)
                    continue
                while pending and (len(pending) >= self.mem.in_flight or held + t.nbytes > self.mem.in_flight_bytes):
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        d = pending.pop(fut)
                        held -= d.nbytes
                        self._settle(fut, d)
                try:
                    fut = self.submit(pool, t)
                except Exception as e:  # noqa: BLE001 - e.g. the store failed to open
                    fut = Future()
                    fut.set_exception(e)
                pending[fut] = t
                held += t.nbytes
            for fut in list(pending):
                self._settle(fut, pending.pop(fut))
        return self.outcomes

    def _settle(self, fut: Future, t: _Task) -> None:
        self.settled += 1
        if self.settled % TRIM_EVERY == 0:
            malloc.trim()  # keep RSS at live memory, whatever the checkpoint size
        try:
            self.outcomes[t.pair_index].absorb(fut.result(), None)
        except Exception as e:  # noqa: BLE001 - a read or decode failure marks the leaf, not the run
            self.outcomes[t.pair_index].absorb(None, _one_line(e))
        self._advance(t)

    def _advance(self, t: _Task) -> None:
        if self.progress:
            self.progress(t.progress)


def compare_values(
    pairs: list[Pair],
    policies: list[Policy],
    contexts: tuple[ts.Context, ts.Context],
    mem: MemoryPlan,
    progress: ProgressFn | None = None,
    shortcut: bool = True,
    scheduler: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[dict[int, PairOutcome], tuple[int, int]]:
    """Stream every pair with status 'compare' whose kinds are numeric.

    Returns the outcomes by pair index, and the (bytes, requests) that other processes read.
    With `scheduler` ('tcp://host:port' or 'local:N') the tasks run on Dask workers instead of
    local threads; the statistics, merged the same way, are the same.
    """
    if scheduler:
        from .distributed import compare_on_dask

        return compare_on_dask(pairs, policies, contexts, mem, progress, shortcut, scheduler, timeout)
    return _Engine(pairs, policies, contexts, mem, shortcut, progress).run(), (0, 0)


def _same_fill(a: Leaf, b: Leaf) -> bool:
    """Both stores read a chunk they do not hold as their fill value, and it is the same value
    (same dtype: the caller checked). Orbax sources refuse missing chunks: never equal."""
    sa, sb = a.source.spec, b.source.spec
    if not (sa.get("fill_missing_data_reads", True) and sb.get("fill_missing_data_reads", True)):
        return False
    fa, fb = sa["metadata"].get("fill_value"), sb["metadata"].get("fill_value")
    return fa is not None and json.dumps(fa) == json.dumps(fb)


def _prefetch_depth(side: _Side) -> int:
    """Range reads kept in flight per streamed chunk (plan.prefetch_depth)."""
    return prefetch_depth(side.leaf.source is None or side.leaf.source.is_local)


def _stored_bases(leaf: Leaf) -> list[Leaf]:
    """The stored leaves a leaf reads: itself, or every base of its view."""
    if leaf.view is None:
        return [leaf] if leaf.source is not None else []
    out, stack = [], [leaf.view]
    while stack:
        v = stack.pop()
        if v.op == "base" and v.leaf is not None and v.leaf.source is not None:
            out.append(v.leaf)
        stack.extend(v.children)
    return out


def _itemsize(leaf: Leaf) -> int:
    return np.dtype(leaf.dtype).itemsize


def _one_line(e: BaseException) -> str:
    """A task's failure as one line: storage statuses in words (see storage.describe), anything
    else by its first line, and a bare exception (no text) by its type rather than nothing."""
    return describe(e, with_object=True)
