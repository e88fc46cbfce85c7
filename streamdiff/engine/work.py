"""The work of one task: read both sides, compare, reduce to a `LeafStats`.

`start_task` issues the task's reads at once (tensorstore fetches and decodes ahead while threads
compare earlier tasks) and returns the rest of the work as a function for a worker thread. When both
sides store the block's chunks in one format, their stored bytes are compared first (the equal-bytes
shortcut) and equal, plausible chunks are settled without decoding. A chunk task streams one big
chunk slab by slab (see chunks.stream_chunk), never holding it whole.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorstore as ts

from ..datatypes import Pair
from ..plan import MemoryPlan
from ..reader.formats.dtypes import family
from ..stats import LeafStats, Policy, block_stats, layers_settled
from .chunks import Known, RawStore, Read, stream_chunk
from .encoding import Encoding, plausible, plausible_ends
from .plans import PairOutcome
from .sides import OpenSide, dtype_of, prefetch_depth
from .tasks import Task

#: After this many chunks of a leaf in a row whose stored bytes differ (with no sizes to tell in
#: advance), stop trying the shortcut on that leaf: its values differ everywhere.
SHORTCUT_GIVE_UP = 4

#: The stored-byte reads of a block's chunks: (A's read, B's read, whether both sizes were known).
RawReads = list[tuple[Read | Known, Read | Known, bool]]
#: The decoding reads of a block, A's and B's.
Reads = tuple[ts.Future[np.ndarray], ts.Future[np.ndarray]]


@dataclass
class PairWork:
    """What the tasks of one opened pair share. `outcome` is the pair's plan; its shortcut state is
    updated under `lock` by the threads comparing the pair."""

    pair: Pair
    policy: Policy
    outcome: PairOutcome
    a: OpenSide
    b: OpenSide
    mem: MemoryPlan
    lock: threading.Lock = field(default_factory=threading.Lock)


def start_task(t: Task, w: PairWork) -> Callable[[], LeafStats]:
    """Issue the task's reads now; return what is left to do (waiting for them, comparing)."""
    chunk = t.chunk
    if chunk is not None:
        return lambda: chunk_task(t, chunk, w)
    if w.outcome.shortcut:
        # Each side's keys in its own spelling ('0.0', '0/0', 'c/0/0'...): the same chunk may be
        # named differently on the two sides, and a key of A's spelling is missing on B.
        keys = list(zip(chunk_keys(w.a, t), chunk_keys(w.b, t)))
        raw = start_raw_reads(w.a.raw, w.b.raw, keys)
        if raw is not None:
            return lambda: block_shortcut(t, w, raw)
    reads = (w.a.read(t.start, t.stop), w.b.read(t.start, t.stop))
    return lambda: block(t, w, reads)


def start_raw_reads(ra: RawStore, rb: RawStore, keys: list[tuple[str, str]]) -> RawReads | None:
    """Stored-byte reads of the block's chunks, (key on A, key on B) each, issued now like decode
    reads; None when known sizes already differ (different bytes: decode without reading twice)."""
    found = [(ra.stored(ka), rb.stored(kb)) for ka, kb in keys]  # (size, inline value) per side
    if any(x[0] is not None and y[0] is not None and x[0] != y[0] for x, y in found):
        return None
    return [(ra.read(ka, x), rb.read(kb, y), x[0] is not None) for (ka, kb), (x, y) in zip(keys, found)]


def chunk_keys(side: OpenSide, t: Task) -> list[str]:
    """The stored keys of the chunks a block covers, spelled as this side's store spells them."""
    f = side.stored_format
    ranges = [range(s // k, -(-e // k)) for s, e, k in zip(t.start, t.stop, f.chunk_shape)]
    return [f.key(idx) for idx in itertools.product(*ranges)]


def block(t: Task, w: PairWork, reads: Reads) -> LeafStats:
    a, b = reads[0].result(), reads[1].result()
    return block_stats(a, b, w.policy, t.start, w.a.leaf.shape, w.mem.tile)


def block_shortcut(t: Task, w: PairWork, raw: RawReads) -> LeafStats:
    done = compare_raw(w, raw, w.a.stored_encoding)
    if done is not None:
        return settled(t, w, done)
    values = values_from_raw(t, w, raw)
    if values is not None:
        return block_stats(values[0], values[1], w.policy, t.start, w.a.leaf.shape, w.mem.tile)
    return block(t, w, (w.a.read(t.start, t.stop), w.b.read(t.start, t.stop)))


def values_from_raw(t: Task, w: PairWork, raw: RawReads) -> tuple[np.ndarray, np.ndarray] | None:
    """Both sides' values of a one-chunk block from the stored bytes the shortcut already fetched,
    where those bytes are the values themselves: uncompressed, C order, unsharded, no checksum, in
    the leaf's dtype and native byte order (else None: tensorstore decodes, reading them again)."""
    if len(raw) != 1:
        return None
    out = []
    for side, fut in ((w.a, raw[0][0]), (w.b, raw[0][1])):
        f = side.format
        if f is None or f.compressor != "raw" or f.shard_index is not None or f.chunk_crc:
            return None
        dt = f.stored_dtype
        if dt is None or not dt.isnative or dt.name != side.leaf.dtype:
            return None
        r = fut.result()
        shape = f.read_chunk_shape
        if r.state != "value" or f.chunk_shape != shape:
            return None  # a missing chunk reads as the fill value (or an error): tensorstore knows which
        value = r.value
        if len(value) != math.prod(shape) * dt.itemsize:
            return None  # not a whole chunk: let the decoder judge
        chunk = np.frombuffer(value, dt).reshape(shape)
        box = tuple(slice(s - s // c * c, e - s // c * c) for s, e, c in zip(t.start, t.stop, shape))
        out.append(chunk[box] if box else chunk)
    return out[0], out[1]


def compare_raw(w: PairWork, raw: RawReads, enc: Encoding) -> tuple[int, int] | None:
    """(chunks, bytes of both sides) when every chunk's stored bytes are equal and plausible
    (see encoding.py); else None."""
    o = w.outcome
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
                with w.lock:  # no sizes to tell in advance: give up after a few misses
                    o.misses += 1
                    if o.misses >= SHORTCUT_GIVE_UP:
                        o.shortcut = False
            return None
        total += 2 * len(va)
    with w.lock:
        o.misses = 0
    return len(raw), total


def compare_raw_streaming(w: PairWork, key_a: str, key_b: str) -> tuple[int, int] | None:
    """Big chunks: compare stored bytes piece by piece, never holding a whole chunk. Each side
    reads its own key (the two stores may spell the chunk's key differently)."""
    ra, rb = w.a.raw, w.b.raw
    x, y = ra.size(key_a), rb.size(key_b)
    if x is None or y is None or x != y:
        return None  # unknown sizes: decoding is the only bounded-memory way to know
    piece = w.mem.piece_bytes

    def fetch(off: int) -> tuple[Read, Read]:
        rng = slice(off, min(off + piece, x))
        return ra.fetch(key_a, rng), rb.fetch(key_b, rng)

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
    return (1, 2 * x) if plausible_ends(head, prev + va, x, w.a.stored_encoding) else None


def settled(t: Task, w: PairWork, done: tuple[int, int]) -> LeafStats:
    """The statistics of a block settled by equal stored bytes: every value equal, NaNs unknown."""
    chunks, stored_bytes = done
    n = math.prod(e - s for s, e in zip(t.start, t.stop))
    out = LeafStats(
        count=n,
        n_defined=n,
        identical=True,
        shortcut_chunks=chunks,
        shortcut_bytes=stored_bytes,
        nan_unknown=family(dtype_of(w.a.leaf)) in ("float", "complex"),
    )
    axis = w.policy.layer_axis
    if axis is not None and 0 <= axis < len(t.start):
        extent = t.stop[axis] - t.start[axis]
        out.layers = layers_settled(extent, t.start[axis], n // extent if extent else 0)
    return out


def chunk_task(t: Task, chunk: tuple[int, ...], w: PairWork) -> LeafStats:
    """One big chunk (`chunk`: its index, t.chunk), slab by slab; the stored bytes compared first
    when the shortcut applies."""
    rows = w.outcome.planned_rows
    sa, sb = w.a, w.b
    if w.outcome.shortcut and rows.stream_a and rows.stream_b:
        done = compare_raw_streaming(w, sa.stored_format.key(chunk), sb.stored_format.key(chunk))
        if done is not None:
            return settled(t, w, done)
    extent = tuple(e - s for s, e in zip(t.start, t.stop))
    piece = w.mem.piece_bytes
    ita: Iterator[np.ndarray] | None = None
    itb: Iterator[np.ndarray] | None = None
    if rows.stream_a:
        ita = stream_chunk(sa.raw, chunk, rows.slab_rows, piece, prefetch_depth(sa.leaf), sa.fill)
    if rows.stream_b:
        itb = stream_chunk(sb.raw, chunk, rows.slab_rows, piece, prefetch_depth(sb.leaf), sb.fill)
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
        acc.merge(block_stats(a, b, w.policy, start, w.a.leaf.shape, w.mem.tile))
        del a, b
    return acc
