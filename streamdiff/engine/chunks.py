"""Stored chunks as bytes: keys, sizes, raw reads, and streaming decode of chunks too big to hold.

Tensorstore decodes everything that fits the budget. Two jobs need the stored bytes themselves:

* the equal-bytes shortcut: two chunks stored with the same codec, dtype and chunk shape whose
  bytes are equal hold equal values, so they are settled without decoding. Sizes come for free
  from the OCDBT B-tree (one node read lists every key with its length) or from `os.stat`, so
  chunks of different size are never even read twice;
* chunks larger than the memory budget (numpy-saved arrays are one chunk of up to 2 GiB): their
  bytes are read in ranges and run through a zstd stream decoder, a slab of rows at a time.
  zarr v2 chunks are one zstd frame (or raw); zarr v3 `sharding_indexed` shards hold an index of
  (offset, nbytes) per inner chunk at their end (or start), read first with a suffix read.
"""

from __future__ import annotations

import collections
import json
import os
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import google_crc32c
import numpy as np
import tensorstore as ts
import zstandard

from ..datatypes import ArraySource
from ..plan import PIECE_BYTES
from ..reader.formats import ocdbt
from ..reader.formats.zarr_metadata import ArrayMetadata

#: What the stored bytes of one array's chunks look like: the array's typed metadata, which has the
#: storage grid (`chunk_shape`), the read chunk (`inner_shape`), `key()`, `streamable`, `signature`,
#: the stored dtype and the shard index (formats/zarr_metadata.py). Whoever reads a chunk of either
#: side must spell its key with that side's own `key()`: signatures leave the key encoding out.
ChunkFormat = ArrayMetadata

#: A read of one stored value (or of a byte range of it) in flight.
Read = ts.Future[ts.KvStore.ReadResult]


class _Reader(Protocol):
    """What `_slabs` reads decoded bytes from: a `_RangeSource`, or zstandard's stream reader over one."""

    def readinto(self, b: memoryview) -> int: ...

    def read(self, n: int = -1) -> bytes: ...


class MissingChunk(ValueError):
    """A chunk (or a shard's inner chunk) that is not stored."""


class RawStore:
    """Stored bytes of one array: an opened kvstore under the array's prefix, plus known sizes."""

    def __init__(
        self,
        source: ArraySource,
        context: ts.Context,
        sizes: ArraySizes | None,
        kv: ts.KvStore | None = None,
        since: float | None = None,
    ):
        self.source = source
        self.format: ChunkFormat = source.metadata
        # `kv`: the array's kvstore already open (an OCDBT item's held store under the array's path).
        self.kv = kv if kv is not None else ts.KvStore.open(source.spec["kvstore"], context=context).result()
        # Reads accept what the kvstore cached since `since` (the run's start; default: now) without
        # asking again: through OCDBT, a read at the default bound (the read's own time) first reads
        # the manifest again, one more round trip in series before nearly every read. A checkpoint
        # being compared does not change under the run (the reader has read its structure already).
        self.since = time.time() if since is None else since
        self._sizes = sizes  # key -> stored size, or None when unknown
        self._local = _local_dir(source.spec["kvstore"])
        self._started: dict[tuple[int, ...], _Started] = {}  # chunks whose first reads are on their way
        # First reads go out ahead of their task on remote stores only, and only where they do not
        # wait for a shard index read first (none, or one at the shard's end).
        index = self.format.shard_index
        self._ahead = not source.is_local and (index is None or index.at_end)
        self._taken: tuple[int, ...] | None = None  # the furthest chunk (C order) a task has streamed
        self._lock = threading.Lock()

    def take_started(self, grid_index: tuple[int, ...]) -> _Started | None:
        with self._lock:
            self._taken = grid_index if self._taken is None else max(self._taken, grid_index)
            return self._started.pop(grid_index, None)

    def start_next(self, grid_index: tuple[int, ...], piece: int, depth: int) -> None:
        """On a remote store, issue the first reads of the chunk after `grid_index` (C order, the
        order chunk tasks are handed out): its shard index and, where the inner chunk must start
        its shard, its first `depth` pieces. The task that streams it then finds its round trips
        already made; a task streaming one chunk keeps the link busy for the next."""
        if not self._ahead:
            return
        shape = self.format.shape
        if not shape or len(shape) != len(grid_index):
            return
        counts = [-(-n // max(1, c)) for n, c in zip(shape, self.format.inner_shape)]
        nxt = list(grid_index)
        for d in reversed(range(len(nxt))):
            nxt[d] += 1
            if nxt[d] < counts[d]:
                break
            nxt[d] = 0
        else:
            return  # the last chunk
        key = tuple(nxt)
        with self._lock:
            if key in self._started or (self._taken is not None and key <= self._taken):
                return  # already started, or its task came first (two threads walk one array)
            while len(self._started) >= MAX_STARTED:  # chunks never streamed (settled otherwise)
                self._started.pop(next(iter(self._started)))
            self._started[key] = self._start(key, piece, depth)

    def start_now(self, grid_index: tuple[int, ...], piece: int, depth: int) -> _Started | None:
        """On a remote store, issue at once the reads `start_next` would have issued ahead for this
        chunk (its shard index and first pieces, which do not wait for the index): a chunk nobody
        started ahead (a leaf's first, or one whose task came before its neighbour's) then costs one
        round trip before its bytes flow, not two. None on local stores."""
        if not self._ahead:
            return None
        return self._start(grid_index, piece, depth)

    def _start(self, grid_index: tuple[int, ...], piece: int, depth: int) -> _Started:
        f = self.format
        if f.shard_index is None:
            key = f.key(grid_index)
            return _Started(None, _ranges(self, key, 0, self.size(key), piece, depth), self.size(key))
        per = f.inner_per_shard
        key = f.key(tuple(g // p for g, p in zip(grid_index, per)))
        index = self.fetch(key, _index_range(f))
        size = self.size(key)
        if size is None or any(p != 1 for p in per):
            return _Started(index, [], None)
        # One inner chunk per shard, index at the end: the chunk is the shard's first bytes (checked
        # against the index before the reads are used).
        stop = size - f.shard_index.nbytes
        return _Started(index, _ranges(self, key, 0, stop, piece, depth), stop)

    def fetch(self, key: str, byte_range: slice | None = None) -> Read:
        """A read of `key` (or of `byte_range` of it) that trusts what was cached since `self.since`."""
        if byte_range is None:
            return self.kv.read(key, staleness_bound=self.since)
        return self.kv.read(key, byte_range=byte_range, staleness_bound=self.since)

    def size(self, key: str) -> int | None:
        if self._sizes is not None:
            return self._sizes.get(key)
        if self._local is not None:
            try:
                return os.stat(os.path.join(self._local, key)).st_size
            except OSError:
                return None
        return None

    def stored(self, key: str) -> tuple[int | None, bytes | None]:
        """(stored size or None when unknown, the value itself when the B-tree walk kept it inline)."""
        if self._sizes is not None:
            return self._sizes.value(key)
        return self.size(key), None

    def read(self, key: str, stored: tuple[int | None, bytes | None] | None = None) -> Read | Known:
        """The stored value of `key` (`.result()` gives `.state` and `.value`): the inline value the
        B-tree walk kept when there is one (`stored`: what `stored(key)` said), else a kvstore read."""
        value = (self.stored(key) if stored is None else stored)[1]
        return self.fetch(key) if value is None else Known(value)

    def read_range(self, key: str, start: int, stop: int | None) -> bytes:
        r = self.fetch(key, slice(start, stop)).result()
        if r.state != "value":
            raise ValueError(f"chunk {key!r} is missing")
        return bytes(r.value)


@dataclass(frozen=True, slots=True)
class Known:
    """A stored value already in memory, answering like a finished kvstore read (`.result()`)."""

    value: bytes
    state: str = "value"

    def result(self) -> Known:
        return self


#: Chunks per array whose first reads may wait for their task at once.
MAX_STARTED = 4


@dataclass
class _Started:
    """Reads issued ahead for one chunk: its shard index read (sharded) and its first pieces from
    offset 0 (futures with their start offsets), which are valid when the chunk spans [0, stop)."""

    index: Read | None
    reads: list[tuple[Read, int]]
    stop: int | None


def _ranges(raw: RawStore, key: str, start: int, stop: int | None, piece: int, depth: int) -> list[tuple[Read, int]]:
    if stop is None:
        return []
    out: list[tuple[Read, int]] = []
    for off in range(start, stop, piece):
        if len(out) >= depth:
            break
        out.append((raw.fetch(key, slice(off, min(off + piece, stop))), off))
    return out


def _local_dir(kvspec: dict[str, Any]) -> str | None:
    if kvspec.get("driver") == "file":
        path: str = kvspec["path"]
        return path
    return None


class ItemSizes:
    """Stored sizes of every key of OCDBT items, from one B-tree dump per item, computed once. Each
    item's walk runs at most once, outside any lock shared with other items: `start` begins the
    walks of both sides at once (on a remote store each is two round trips), `for_source` waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_base: dict[str, Future[ocdbt.KeySizes | None]] = {}
        #: id of a leaf's base kvstore spec -> (the spec, its key): readers share one spec per item,
        #: so the key is spelled once per item, not once per leaf.
        self._base_keys: dict[int, tuple[Any, str]] = {}

    def start(self, source: ArraySource, context: ts.Context) -> None:
        """Begin the walk of `source`'s item on a thread of its own, if it has not begun."""
        self._walk(source, context, background=True)

    def for_source(self, source: ArraySource, context: ts.Context) -> ArraySizes | None:
        fut = self._walk(source, context, background=False)
        sizes = None if fut is None else fut.result()
        return None if sizes is None else ArraySizes(sizes, source.spec["kvstore"].get("path", ""))

    def _walk(self, source: ArraySource, context: ts.Context, background: bool) -> Future[ocdbt.KeySizes | None] | None:
        kv = source.spec["kvstore"]
        if kv.get("driver") != "ocdbt":
            return None
        with self._lock:
            known = self._base_keys.get(id(kv["base"]))
            if known is None:
                known = self._base_keys[id(kv["base"])] = (kv["base"], json.dumps(kv["base"], sort_keys=True))
            fut = self._by_base.get(known[1])
            if fut is not None:
                return fut
            fut = self._by_base[known[1]] = Future()
        if background:
            threading.Thread(target=_settle, args=(fut, kv["base"], context), daemon=True).start()
        else:
            _settle(fut, kv["base"], context)
        return fut


@dataclass(frozen=True)
class ArraySizes:
    """The item-wide sizes seen from one array: keys relative to the array's prefix."""

    sizes: ocdbt.KeySizes
    prefix: str

    def get(self, key: str) -> int | None:
        return self.sizes.get(self.prefix + key)

    def value(self, key: str) -> tuple[int | None, bytes | None]:
        """(stored size, inline value when the walk kept it): ocdbt.KeySizes.value."""
        return self.sizes.value(self.prefix + key)


def _settle(fut: Future[ocdbt.KeySizes | None], base: dict[str, Any], context: ts.Context) -> None:
    try:
        fut.set_result(_ocdbt_sizes(base, context))
    except BaseException as e:  # noqa: BLE001 - handed to whoever waits (an interrupt, memory)
        fut.set_exception(e)
        raise


def _ocdbt_sizes(base: dict[str, Any], context: ts.Context) -> ocdbt.KeySizes | None:
    """key -> stored value length (and inline value), from one walk of the B-tree (every level)."""
    try:
        kv = ts.KvStore.open(base, context=context).result()
        return ocdbt.sizes(kv, values=True)
    except Exception:  # noqa: BLE001 - sizes are an optimisation; without them we compare bytes
        return None


# ----------------------------------------------------------------------------------- streaming


class _RangeSource:
    """File-like reader over one stored value's byte range, keeping `depth` piece reads in flight."""

    def __init__(
        self,
        raw: RawStore,
        key: str,
        start: int,
        stop: int | None,
        piece: int,
        depth: int = 2,
        issued: Sequence[tuple[Read, int]] = (),
    ):
        self.raw = raw
        self.key = key
        self.pos = start
        self.stop = stop
        self.piece = piece
        self.eof = False
        self._data = b""
        self._off = 0
        self._ahead: collections.deque[tuple[Read, int]] = collections.deque(
            issued
        )  # (future, start) already on their way
        if issued:
            self.pos = min(issued[-1][1] + piece, stop) if stop is not None else issued[-1][1] + piece
        for _ in range(max(1, depth) - len(self._ahead)):
            f = self._fetch()
            if f is None:
                break
            self._ahead.append(f)

    def _fetch(self) -> tuple[Read, int] | None:
        if self.eof or (self.stop is not None and self.pos >= self.stop):
            return None
        start = self.pos
        end = start + self.piece if self.stop is None else min(start + self.piece, self.stop)
        self.pos = end
        return self.raw.fetch(self.key, slice(start, end)), start

    def _take_next(self) -> bytes:
        fut, start = self._ahead.popleft()
        try:
            r = fut.result()
        except Exception as e:
            if self.stop is not None or "OUT_OF_RANGE" not in str(e):
                raise
            # Unknown size and past the end: what is left is shorter than one piece.
            self.eof = True
            self._ahead.clear()
            return self.raw.read_range(self.key, start, None)
        if r.state != "value":
            raise MissingChunk(f"chunk {self.key!r} is missing")
        nxt = self._fetch()
        if nxt is not None:
            self._ahead.append(nxt)
        value: bytes = r.value  # already a bytes object: no second copy
        return value

    def read(self, n: int = -1) -> bytes:
        if self._off < len(self._data):
            out = self._data[self._off :] if n < 0 else self._data[self._off : self._off + n]
            self._off += len(out)
            return out
        if not self._ahead:
            return b""
        self._data, self._off = self._take_next(), 0
        return self.read(n)

    def readinto(self, b: memoryview) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _index_range(f: ChunkFormat) -> slice:
    """The byte range of a shard's index (sharded arrays only)."""
    index = f.shard_index
    assert index is not None  # callers ask for sharded arrays only
    return slice(-index.nbytes, None) if index.at_end else slice(0, index.nbytes)


def inner_chunk_range(
    raw: RawStore, shard_key: str, inner_index: tuple[int, ...], read: Read | None = None
) -> tuple[int, int]:
    """(offset, nbytes) of one inner chunk of a zarr3 shard, from the shard index (`read`: the
    index read, already issued)."""
    f = raw.format
    r = (read or raw.fetch(shard_key, _index_range(f))).result()
    if r.state != "value":
        raise MissingChunk(f"shard {shard_key!r} is missing")
    index = bytes(r.value)
    shard = f.shard_index
    if shard is None:
        raise ValueError(f"{shard_key!r}: not a shard (the array is not sharded)")
    if len(index) != shard.nbytes:
        raise ValueError(f"shard {shard_key!r} is shorter than its index: truncated data")
    if shard.crc and google_crc32c.value(index[:-4]) != struct.unpack_from("<I", index, len(index) - 4)[0]:
        # tensorstore refuses such a shard: a streamed read must not trust its offsets either.
        raise ValueError(f"shard {shard_key!r}: the index's crc32c checksum does not match")
    flat = int(np.ravel_multi_index(inner_index, f.inner_per_shard)) if inner_index else 0
    offset, nbytes = struct.unpack_from("<QQ", index, 16 * flat)
    if offset == 2**64 - 1:
        raise MissingChunk(f"inner chunk {inner_index} of shard {shard_key!r} is missing")
    return offset, nbytes


def stream_chunk(
    raw: RawStore,
    grid_index: tuple[int, ...],
    rows_per_slab: int,
    piece: int = PIECE_BYTES,
    depth: int = 2,
    fill: Any = None,
) -> Iterator[np.ndarray]:
    """Decode one stored (inner) chunk slab by slab along its first axis.

    `grid_index` indexes the read-chunk grid. Each slab is `rows_per_slab` full-width chunk rows
    (the last may be shorter), as stored: edge chunks keep their padding, which the caller clips.
    A chunk that is not stored raises `MissingChunk`, unless `fill` is given (stores whose writers
    skip fill-valued chunks): then its slabs hold `fill`.

    The chunk's location (a shard index read) and its first `depth` range reads are issued here,
    before the first slab is asked for: a caller streaming both sides of a pair starts both
    sides' round trips at once instead of one after the other.
    """
    try:
        key, reader = _chunk_reader(raw, grid_index, piece, depth)
    except MissingChunk:
        if fill is None:
            raise
        key, reader = None, None
    return _slabs(raw.format, key, reader, rows_per_slab, fill)


def _slabs(
    f: ChunkFormat, key: str | None, reader: _Reader | None, rows_per_slab: int, fill: Any
) -> Iterator[np.ndarray]:
    shape = f.inner_shape
    dtype = f.stored_dtype
    if dtype is None:  # planning sizes chunks by dtype first: such arrays never get here
        raise ValueError(f"chunks of dtype {f.dtype!r} cannot be streamed: numpy has no such dtype")
    row_elems = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    row_bytes = row_elems * dtype.itemsize
    total_rows = shape[0] if shape else 1
    # One buffer, reused: each slab is compared before the next is decoded into it.
    buf = np.empty((min(rows_per_slab, total_rows),) + tuple(shape[1:]), dtype=dtype)
    try:
        if reader is None:
            raise MissingChunk("not stored")
        # The first read tells whether the chunk is stored at all.
        head = reader.readinto(buf.reshape(-1).view(np.uint8).data[: min(row_bytes, buf.nbytes) or 1])
    except MissingChunk:
        if fill is None:
            raise
        buf[...] = fill
        for row in range(0, total_rows, rows_per_slab):
            yield buf[: min(rows_per_slab, total_rows - row)]
        return
    row = 0
    while row < total_rows:
        n = min(rows_per_slab, total_rows - row)
        view = buf.reshape(-1).view(np.uint8).data[: n * row_bytes]
        got = head if row == 0 else 0
        while got < len(view):
            k = reader.readinto(view[got:])
            if not k:
                raise ValueError(f"chunk {key!r} ended early: truncated data")
            got += k
        row += n
        if row >= total_rows and reader.read(1):
            # tensorstore refuses a chunk with bytes after its data (a second frame, junk): so does
            # this path, before the last slab is compared, or the pair would read as identical.
            raise ValueError(f"chunk {key!r} holds bytes after its data: corrupt chunk")
        yield buf[:n]


def _chunk_reader(raw: RawStore, grid_index: tuple[int, ...], piece: int, depth: int) -> tuple[str, _Reader]:
    """(key, file-like reader of the decoded bytes) of one (inner) chunk."""
    f = raw.format
    started = raw.take_started(grid_index) or raw.start_now(grid_index, piece, depth)
    issued: list[tuple[Read, int]] = []
    if f.shard_index is None:
        key, start, stop = f.key(grid_index), 0, None
        if started is not None and started.reads:
            stop, issued = started.stop, started.reads
    else:
        per = f.inner_per_shard
        shard = tuple(g // p for g, p in zip(grid_index, per))
        inner = tuple(g % p for g, p in zip(grid_index, per))
        key = f.key(shard)
        offset, nbytes = inner_chunk_range(raw, key, inner, started.index if started else None)
        start, stop = offset, offset + nbytes
        if started is not None and offset == 0 and stop == started.stop:
            issued = started.reads
    source = _RangeSource(raw, key, start, stop, piece, depth, issued)
    raw.start_next(grid_index, piece, depth)
    # zstandard reads any object with `.read(n)`; its stubs ask for IO[bytes]. Across frames: bytes
    # after the first frame are seen (and refused) by _slabs.
    reader: _Reader = source
    if f.compressor == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(
            source,  # type: ignore[arg-type]
            read_size=piece,
            read_across_frames=True,
        )
    return key, reader
