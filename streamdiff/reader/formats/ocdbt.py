"""An OCDBT database read as its B-tree: every key with its inline value or stored size, in a few reads.

Reading each array's `.zarray` / `zarr.json` through the ocdbt kvstore costs one B-tree lookup per key,
slow for a tree of 100k leaves; orbax keeps those small values *inline* in the B-tree
leaf nodes, so walking the nodes once yields all of them, level by level with every node read of a
level in flight at once (on GCS each is a round trip).

The manifest comes from `tensorstore.ocdbt.dump` (one small document); the B-tree nodes are read as
byte ranges of their data files and decoded here, following the format tensorstore documents
(kvstore/ocdbt/index.rst, "B+tree node format"): tensorstore 0.1.86's `ocdbt.dump` of a node leaks
every Python object it returns (about 600 bytes per key, never freed), which a checkpoint of
hundreds of thousands of keys cannot afford. A node is decoded as a stream, front to back (a node of
a million chunk keys decodes to tens of MB, mostly inline values): its columns (varint arrays) are
decoded with numpy a piece at a time into the narrowest integer type, and nothing per key is an
object; a node whose magic, length, version, checksum or columns do not add up raises `ValueError`,
and callers then read key by key through the ocdbt driver, which reports real errors.

Keys inside a node are relative to the prefix accumulated on the way down (each interior entry's
`subtree_common_prefix`); data file paths are `transitive path + base path + relative path`, the
transitive path growing by the base path at each level.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import io
import itertools
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, overload

import google_crc32c
import numpy as np
import tensorstore as ts
import zstandard

from ... import malloc

#: Kept for callers that bound a walk; decoding nodes here holds no leaked objects, so any size is walked.
MAX_WALK_KEYS = 1 << 62
BTREE_MAGIC = 0x0CDB20DE
#: Largest decoded node accepted whatever the manifest says (tensorstore's default `max_decoded_node_bytes`
#: is 8 MiB; orbax sets 100 MB). Below it, the manifest's own limit applies, as tensorstore applies it.
MAX_NODE_BYTES = 1 << 30


class TooManyKeys(Exception):
    """The database is bigger than `MAX_WALK_KEYS`: read it key by key instead."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One key of the database: its bytes when stored inline, else None, and its stored size."""

    key: str
    inline: bytes | None
    size: int


@dataclass(frozen=True, slots=True)
class _Ref:
    """Where a node is: a data file path (relative to the database root) and a byte range."""

    path: str
    offset: int
    length: int
    transitive: str  # the path prefix its children's data file paths start with
    prefix: bytes  # the key prefix of every key below it


def walk(base: ts.KvStore, keep_inline: frozenset[str] | None = None) -> list[Entry]:
    """Every key of the OCDBT database on `base` (its manifest at the root), in key order.

    `keep_inline`: last path components whose inline values are kept (e.g. {'.zarray'}); others
    report their size only, so chunk bytes inlined in the tree are not held. None keeps none.
    Raises `TooManyKeys`, `ValueError` (a node not decoded) or whatever tensorstore raises: callers
    fall back to per-key reads.
    """
    kept, every = index(base, keep_inline or frozenset())
    return [Entry(key, kept.get(key), size) for key, size in every.items()]


class KeySizes:
    """Stored size of every key of a database, compact: the sorted keys in one buffer with numpy
    offsets and sizes (a dict of a million chunk keys would hold ~150 MB for the whole run). Lookups
    by key go through the keys' CRC-32s, sorted, each hit confirmed against the key itself; that
    table is built at the first lookup, so a caller that only iterates (the reader's audit of
    unreferenced keys) never holds it."""

    def __init__(
        self,
        keys: bytes | bytearray,
        key_lengths: np.ndarray,
        sizes: np.ndarray,
        values: bytes | bytearray = b"",
        value_at: np.ndarray | None = None,
        dense_values: bool = False,
    ):
        self._keys = keys
        #: Inline values kept (see `index(values=True)`): key i's bytes are values[value_at[i]:][:sizes[i]]
        #: when value_at[i] >= 0. Reading them here spares a B-tree lookup per chunk through the ocdbt
        #: driver, which costs more the bigger the leaf node (a node holds up to a million keys).
        self._values = values
        self._key_at = _Offsets(key_lengths)  # key i is keys[start(i):][:size(i)], keys back to back
        top = int(sizes.max()) if len(sizes) else 0
        self._sizes = sizes.astype(next(t for t in _SIZE_TYPES if top <= np.iinfo(t).max), copy=False)
        # Where each kept value starts in `values`: when every key's value is kept, back to back in
        # key order (a checkpoint of a million tiny chunks), the sizes already say it.
        self._value_at: np.ndarray | _Offsets | None = None
        if dense_values:  # every key's value kept, back to back in key order
            self._value_at = _Offsets(self._sizes)
        elif value_at is not None:
            self._value_at = value_at.astype(_offsets(len(values)), copy=False)
        self._lookup: np.ndarray | None = None  # see _build_table

    def _table(self) -> np.ndarray:
        """The lookup table, built once: the engine's threads all look up at once, and a table built
        by each would hold its transient arrays once per thread (one lock for every index of the
        process: a KeySizes is pickled to Dask workers, a lock of its own would not be)."""
        table = self._lookup
        if table is not None:
            return table
        with _TABLE_LOCK:
            if self._lookup is None:
                self._lookup = self._build_table()
            return self._lookup

    def _build_table(self) -> np.ndarray:
        """(CRC-32 << 32 | key index) of every key, sorted in place: the table is the one array it
        is built in (crc32, not hash(): the same in every process, as a Dask worker may get it pickled)."""
        n = len(self._sizes)
        if n >= 1 << 32:
            raise ValueError("too many keys for a lookup table")
        table = np.fromiter((zlib.crc32(k) for k in self._raw_keys()), np.uint64, n)
        table <<= np.uint64(32)
        for lo in range(0, n, _PIECE):
            table[lo : lo + _PIECE] |= np.arange(lo, min(lo + _PIECE, n), dtype=np.uint64)
        table.sort()
        return table

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[str]:
        """Every key, in order."""
        for k in self._raw_keys():
            yield k.decode()

    def strings(self) -> list[str]:
        """Every key, in order, as a list: when the keys are ASCII (orbax's are), one decode of the
        buffer, each key then sliced by its length (its characters are its bytes)."""
        if not self._keys.isascii():
            return list(self)
        text = self._keys.decode("ascii")
        out = []
        start = 0
        for end in itertools.accumulate(self._key_at.lengths.tolist()):
            out.append(text[start:end])
            start = end
        return out

    def _raw_keys(self) -> Iterator[bytes | bytearray]:
        """Every key's bytes, in order (lengths turned into Python ints a piece at a time)."""
        start = 0
        lengths = self._key_at.lengths
        for lo in range(0, len(lengths), _PIECE):
            for length in lengths[lo : lo + _PIECE].tolist():
                yield self._keys[start : start + length]
                start += length

    def _key(self, i: int) -> bytes | bytearray:
        start = self._key_at.start(i)
        return self._keys[start : start + int(self._key_at.lengths[i])]

    def _find(self, key: str) -> int:
        """The index of `key`, or -1."""
        raw = key.encode()
        h = zlib.crc32(raw)
        # memoryviews: Python ints per probe, without numpy's per-call overhead on a single value.
        table, key_at = self._table().data, self._key_at
        at = bisect.bisect_left(table, h << 32)
        while at < len(table) and table[at] >> 32 == h:
            i = table[at] & 0xFFFFFFFF
            start = key_at.start(i)
            if self._keys[start : start + key_at.size(i)] == raw:
                return i
            at += 1
        return -1

    def get(self, key: str) -> int | None:
        i = self._find(key)
        return None if i < 0 else int(self._sizes[i])

    def value(self, key: str) -> tuple[int | None, bytes | None]:
        """(stored size or None when the key is not here, its inline value when kept, else None)."""
        i = self._find(key)
        if i < 0:
            return None, None
        size = int(self._sizes[i])
        value_at = self._value_at
        if value_at is None:
            return size, None
        if isinstance(value_at, _Offsets):
            at = value_at.start(i)
        elif value_at[i] < 0:
            return size, None
        else:
            at = int(value_at[i])
        return size, bytes(self._values[at : at + size])

    def items(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of the keys starting with `prefix`, in key order."""
        raw = prefix.encode()
        lo, hi = 0, len(self._sizes)
        while lo < hi:  # the first key >= prefix
            mid = (lo + hi) // 2
            if self._key(mid) < raw:
                lo = mid + 1
            else:
                hi = mid
        for i in range(lo, len(self._sizes)):
            k = self._key(i)
            if not k.startswith(raw):
                return
            yield k.decode(), int(self._sizes[i])


_TABLE_LOCK = threading.Lock()


class _Offsets:
    """Where each of many back-to-back items starts, from their lengths (held in a narrow type) and
    the start of every 16th: a fraction of an offset per item, for a few Python additions a lookup."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = lengths
        self._sizes = lengths.data
        n = len(lengths)
        blocks = np.zeros(-(-n // _BLOCK) + 1, np.int64)
        if n:
            np.cumsum(np.add.reduceat(lengths, np.arange(0, n, _BLOCK), dtype=np.int64), out=blocks[1:])
        self._blocks = blocks.data

    def start(self, i: int) -> int:
        b = i // _BLOCK
        return int(self._blocks[b] + sum(self._sizes[b * _BLOCK : i]))

    def size(self, i: int) -> int:
        return int(self._sizes[i])


_BLOCK = 16


#: Stored sizes are held in the narrowest of these that fits the largest.
_SIZE_TYPES = (np.uint8, np.uint16, np.uint32, np.int64)


def _offsets(extent: int) -> type[np.signedinteger[Any]]:
    """The integer type offsets into a buffer of `extent` bytes are held in."""
    return np.int64 if extent >= 1 << 31 else np.int32


#: Inline values `sizes(values=True)` keeps at most, over all nodes (orbax inlines values of up to
#: a few hundred bytes: a million chunk keys keep about 13 MB).
MAX_KEPT_VALUES = 128 << 20


def sizes(base: ts.KvStore, values: bool = False) -> KeySizes:
    """`KeySizes` of the database on `base`, without an object per key beyond one node at a time;
    with `values`, also the inline values (up to MAX_KEPT_VALUES bytes in all)."""
    return index(base, values=values)[1]


def index(
    base: ts.KvStore, keep_inline: frozenset[str] = frozenset(), values: bool = False
) -> tuple[dict[str, bytes], KeySizes]:
    """(inline value of every key whose last path component is in `keep_inline`, `KeySizes` of every
    key): `walk` without an object per key, for databases of a million chunk keys. With `values`,
    the `KeySizes` keeps every inline value too, in one buffer (see `KeySizes.value`)."""
    kept: dict[str, bytes] = {}
    blob = bytearray()
    key_sizes: list[np.ndarray] = []  # per node: its keys' lengths
    lengths: list[np.ndarray] = []
    store = bytearray()  # inline values kept, node after node
    value_at: list[np.ndarray | int] = []  # per node: offsets in `store`, or where its values start there when all are
    ordered = True
    wanted = tuple(("/" + name).encode() for name in keep_inline)
    last = (0, 0)  # the previous node's last key, as offsets in blob
    for key_lengths, node_lengths, where, total, body in _leaf_nodes(base, blob):
        if not len(key_lengths):
            continue
        first = last[1]
        stop = len(blob)  # this node's keys are blob[first:stop]
        if last[1] and blob[last[0] : last[1]] >= blob[first : first + int(key_lengths[0])]:
            ordered = False  # this node's first key is not after the previous node's last
        last = (stop - int(key_lengths[-1]), stop)
        node_ends = _ends_of(key_lengths, first, len(blob)) if keep_inline else np.zeros(0, np.int64)
        named = _named(blob, first, node_ends, wanted, keep_inline) if keep_inline else []
        if where is not None:
            named = [i for i in named if where[i] >= 0]  # inline ones only
        starts = [int(where[i]) for i in named] if where is not None else _starts_of(node_lengths, named)
        keep = values and len(store) + total <= MAX_KEPT_VALUES
        if keep:  # the node's inline values lie back to back: one slice
            at = len(store)
            body.append_to(store, total)
            for i, start in zip(named, starts):
                kept[_key_at(blob, first, node_ends, i)] = bytes(store[at + start :][: int(node_lengths[i])])
            if where is None:
                value_at.append(at)  # every value of the node inline: the sizes say where each starts
            else:
                where = where.astype(_offsets(MAX_KEPT_VALUES), copy=False)
                np.add(where, at, out=where, where=where >= 0)  # offsets in `store`
                value_at.append(where)
        else:
            if values:
                value_at.append(np.full(len(node_lengths), -1, _offsets(MAX_KEPT_VALUES)))
            got = body.pick(total, [(start, int(node_lengths[i])) for i, start in zip(named, starts)])
            for i, value in zip(named, got):
                kept[_key_at(blob, first, node_ends, i)] = value
        key_sizes.append(key_lengths)
        lengths.append(node_lengths)
        del (
            key_lengths,
            node_ends,
            node_lengths,
            where,
            body,
        )  # the next node's are decoded before the loop rebinds these
    all_keys, all_sizes = _joined(key_sizes), _joined(lengths)
    dense = values and ordered and all(isinstance(v, int) for v in value_at)
    all_at = None
    if values and not dense:
        all_at = _joined([_value_offsets(v, n) for v, n in zip(value_at, lengths)])
    if not ordered:  # nodes came out of key order: sort once
        all_ends = np.cumsum(all_keys, dtype=np.int64)
        key_starts = np.concatenate(([0], all_ends[:-1])) if len(all_ends) else all_ends
        keys = [bytes(blob[s:e]) for s, e in zip(key_starts.tolist(), all_ends.tolist())]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        keys = [keys[i] for i in order]
        all_sizes = all_sizes[order]
        if all_at is not None:
            all_at = all_at[order]
        all_keys = _narrowest([np.array([len(k) for k in keys], np.uint64)])
        blob = bytearray(b"".join(keys))
    out = KeySizes(blob, all_keys, all_sizes, store, all_at, dense_values=dense)
    if len(all_sizes) >= TRIM_AFTER_KEYS and malloc.trim_enabled():
        malloc.trim()  # the walk's columns, freed, would stay resident in holes of the heap
    return kept, out


#: A walk of at least this many keys hands the memory it freed back to the OS (when the program allows).
TRIM_AFTER_KEYS = 1 << 16


def _ends_of(lengths: np.ndarray, first: int, extent: int) -> np.ndarray:
    """End offsets of back-to-back items of these lengths starting at `first`, in the offset type of
    a buffer of `extent` bytes, summed a piece at a time."""
    out = np.empty(len(lengths), _offsets(extent))
    total = first
    for lo in range(0, len(lengths), _PIECE):
        sums = np.cumsum(lengths[lo : lo + _PIECE], dtype=np.int64)
        sums += total
        out[lo : lo + len(sums)] = sums
        total = int(sums[-1])
    return out


def _starts_of(lengths: np.ndarray, indices: list[int]) -> list[int]:
    """Where items `indices` (sorted) start among back-to-back items of these lengths, summed a piece
    at a time."""
    out: list[int] = []
    total = 0
    j = 0
    for lo in range(0, len(lengths), _PIECE):
        if j == len(indices):
            break
        sums = np.cumsum(lengths[lo : lo + _PIECE], dtype=np.int64)
        while j < len(indices) and indices[j] < lo + len(sums):
            k = indices[j] - lo
            out.append(total + (int(sums[k - 1]) if k else 0))
            j += 1
        total += int(sums[-1])
    return out


def _value_offsets(at: np.ndarray | int, sizes: np.ndarray) -> np.ndarray:
    """A node's value offsets in the store: as kept, or, for a node whose values all start at `at`
    back to back, from their sizes."""
    if not isinstance(at, int):
        return at
    starts = np.cumsum(sizes, dtype=np.int64)
    starts -= sizes
    starts += at
    out: np.ndarray = starts.astype(_offsets(MAX_KEPT_VALUES))
    return out


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The nodes' columns end to end (a database of one big node: that node's, not a copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _key_at(blob: bytearray, first: int, ends: np.ndarray, i: int) -> str:
    """Key i of a leaf node whose keys are blob[first:ends[-1]]."""
    return blob[(int(ends[i - 1]) if i else first) : int(ends[i])].decode()


def _named(
    blob: bytearray, first: int, ends: np.ndarray, wanted: tuple[bytes, ...], names: frozenset[str]
) -> list[int]:
    """The keys of a leaf node (keys blob[first:ends[-1]]) whose last path component is in `names`
    (`wanted`: each as '/name'), in key order. Found by searching the keys' bytes for the names, not
    key by key: a node may hold a million chunk keys and a handful of metadata files."""
    hits: set[int] = set()
    stop = int(ends[-1])
    for w in wanted:  # '/name' at the end of a key
        found = []
        at = blob.find(w, first, stop)
        while at != -1:
            found.append(at)
            at = blob.find(w, at + 1, stop)
        if not found:
            continue
        starts = np.array(found, ends.dtype)  # of `ends`' type: other types would cast all of `ends`
        stops = starts + len(w)
        keys = np.searchsorted(ends, stops)  # the key each occurrence ends in or before
        inside = keys < len(ends)
        starts, stops, keys = starts[inside], stops[inside], keys[inside]
        begins = np.where(keys > 0, ends[np.maximum(keys - 1, 0)], first)  # each key's first byte
        hits.update(keys[(ends[keys] == stops) & (starts >= begins)].tolist())  # the name ends the key, inside it
    bare = np.array(sorted({len(n.encode()) for n in names}), np.int64)  # a key that is the name itself
    for lo in range(0, len(ends), _PIECE):  # key lengths a piece at a time
        piece = ends[lo : lo + _PIECE]
        lengths = np.diff(piece, prepend=int(ends[lo - 1]) if lo else first)
        for i in (lo + np.flatnonzero(np.isin(lengths, bare))).tolist():
            if blob[(int(ends[i - 1]) if i else first) : int(ends[i])].decode(errors="replace") in names:
                hits.add(i)
    return sorted(hits)


def _leaf_nodes(
    base: ts.KvStore, blob: bytearray
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, int, _Body]]:
    """(key lengths (each key appended to `blob`), value lengths, offset of each inline value among the node's inline
    values or -1, their total length, the node body positioned at them) of every leaf node, level by
    level with every read of a level in flight at once; each full key is appended to `blob`."""
    manifest = ts.ocdbt.dump(base).result()
    versions = manifest.get("versions") or []
    if not versions or "location" not in versions[-1].get("root", {}):
        return  # an empty database
    keys = versions[-1]["root"].get("statistics", {}).get("num_keys", 0)
    if keys > MAX_WALK_KEYS:
        raise TooManyKeys(f"{keys} keys")
    if keys >= TRIM_AFTER_KEYS and malloc.trim_enabled():
        malloc.trim()  # what earlier phases freed, so this walk's columns do not pile on top of it
    cap = node_limit(manifest.get("config") or {})
    level = [_root_ref(str(versions[-1]["root"]["location"]))]
    while level:
        if any(r.length > cap + cap // 128 + 1024 for r in level):  # zstd's worst-case growth
            raise ValueError("B-tree node larger than the database's max_decoded_node_bytes")
        futures = collections.deque(
            (base.read(r.path, byte_range=slice(r.offset, r.offset + r.length)), r) for r in level
        )
        level = []
        while futures:
            fut, ref = futures.popleft()  # a node read is not held past its turn
            got = fut.result()
            del fut
            if got.state != "value" or len(got.value) != ref.length:
                raise ValueError(f"B-tree node {ref.path}@{ref.offset} not found")
            with _BIG_NODE if ref.length > BIG_NODE_BYTES else contextlib.nullcontext():
                height, body, files = _open_node(bytes(got.value), cap)
                del got
                if height > 0:
                    level.extend(_interior(body, files, ref))
                else:
                    yield (*_leaf(body, (blob, ref.prefix)), body)
                del body


#: Stored B-tree nodes larger than this are decoded one at a time in a process (the two sides' trees
#: are read on two threads): a node of a million chunk keys decodes to tens of MB, and its walk holds
#: columns of its length.
BIG_NODE_BYTES = 256 << 10
_BIG_NODE = threading.Lock()


def node_limit(config: dict[str, Any]) -> int:
    """Decoded bytes a node of a database with this manifest `config` may hold: its own
    `max_decoded_node_bytes` (0 or absent: no limit of its own), never more than MAX_NODE_BYTES. A
    hostile node of a few KB decompressing to a GB must not be inflated past what tensorstore accepts."""
    own = config.get("max_decoded_node_bytes")
    return min(own, MAX_NODE_BYTES) if isinstance(own, int) and own > 0 else MAX_NODE_BYTES


def _root_ref(location: str) -> _Ref:
    """'btreenode::d/<file>:<offset>:<length>' as `ocdbt.dump` spells the root's location."""
    path, offset, length = location.removeprefix("btreenode::").rsplit(":", 2)
    return _Ref(path, int(offset), int(length), "", b"")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def varints(buf: bytes, pos: int, n: int) -> tuple[np.ndarray, int]:
    """`n` consecutive varints from `pos`, as uint32 when every one fits (else uint64), and the
    position after them. Decoded `_PIECE` at a time: the offsets of a whole column of a million-key
    node would take several int64 arrays of the column's length at once."""
    if n > len(buf) - pos:  # each varint takes a byte at least (and n may be a hostile 2**60)
        raise ValueError("truncated varint column")
    out = np.zeros(n, np.uint32)
    got = 0
    while got < n:
        k = min(n - got, _PIECE)
        # Each varint takes at most 10 bytes: k of them lie in the next 10k bytes, or the column is bad.
        window = np.frombuffer(buf, np.uint8, count=max(min(len(buf) - pos, 10 * k), 0), offset=min(pos, len(buf)))
        ends = np.flatnonzero(window < 0x80)[:k]
        if len(ends) < k:
            raise ValueError("truncated varint column")
        starts = np.empty(k, np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        widths = ends - starts + 1
        values = window[ends].astype(np.uint64) if widths.max() == 1 else _multi_byte(window, starts, widths)
        if out.dtype == np.uint32 and int(values.max()) >= 1 << 32:
            out = out.astype(np.uint64)
        out[got : got + k] = values
        got += k
        pos += int(ends[-1]) + 1
    return out, pos


def _multi_byte(window: np.ndarray, starts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    if widths.max() > 10:
        raise ValueError("varint longer than 10 bytes")
    values = np.zeros(len(starts), np.uint64)
    for j in range(int(widths.max())):
        sel = widths > j
        values[sel] |= (window[starts[sel] + j].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * j)
    return values


class _Body:
    """A node's decoded body, read front to back without holding it whole: a node of a million chunk
    keys decodes to tens of MB, most of it inline values nobody keeps. Its columns lie one after
    another, so a window of the next bytes is all a walk needs. `size` is the whole body's length
    (known before any of it is used, as the checks against hostile nodes want)."""

    def __init__(self, raw: bytes, start: int, stop: int, compressed: bool, cap: int):
        if compressed:
            data = memoryview(raw)[start:stop]
            self.size = _unzstd_size(data, cap)
            self._src: Any = zstandard.ZstdDecompressor().stream_reader(data)
        else:
            self.size = stop - start
            self._src = io.BytesIO(memoryview(raw)[start:stop])
        if not self.size or self.size > cap:
            raise ValueError("B-tree node body empty or larger than max_decoded_node_bytes")
        self._buf = b""
        self._at = 0  # position in _buf
        self._fed = 0  # body bytes read from the source so far

    @property
    def pos(self) -> int:
        """Body bytes consumed so far."""
        return self._fed - (len(self._buf) - self._at)

    def _need(self, k: int) -> None:
        """At least `k` bytes from the current position in the window, or what the body has left."""
        have = len(self._buf) - self._at
        if have >= k:
            return
        parts = [self._buf[self._at :]]
        want = min(max(k - have, _WINDOW), self.size - self._fed)
        while want > 0:
            got = self._src.read(want)
            if not got:
                break
            parts.append(got)
            self._fed += len(got)
            want -= len(got)
        self._buf = b"".join(parts)
        self._at = 0

    def byte(self) -> int:
        self._need(1)
        if self._at >= len(self._buf):
            raise ValueError("truncated B-tree node")
        self._at += 1
        return self._buf[self._at - 1]

    def varint(self) -> int:
        self._need(10)
        value, end = _varint(self._buf, self._at)
        self._at = end
        return value

    def varints(self, n: int) -> np.ndarray:
        """`n` consecutive varints (see `varints`), read a window at a time."""
        if n > self.size - self.pos:  # each varint takes a byte at least (and n may be a hostile 2**60)
            raise ValueError("truncated varint column")
        parts = []
        for lo in range(0, n, _PIECE):
            k = min(n - lo, _PIECE)
            self._need(10 * k)
            got, self._at = varints(self._buf, self._at, k)
            parts.append(got)
        return _narrowest(parts)

    def take(self, n: int) -> bytes:
        """The next `n` bytes."""
        if n > self.size - self.pos:
            raise ValueError("truncated B-tree node")
        self._need(n)
        out = self._buf[self._at : self._at + n]
        self._at += n
        return out

    def append_to(self, out: bytearray, n: int) -> None:
        """The next `n` bytes appended to `out`, a window at a time (not a copy of them all first)."""
        if n > self.size - self.pos:
            raise ValueError("truncated B-tree node")
        write = len(out)
        out += bytes(n)  # grown once, exactly (zeros come from calloc: no page touched until written)
        while n > 0:
            self._need(min(n, _WINDOW))
            step = min(n, len(self._buf) - self._at)
            out[write : write + step] = memoryview(self._buf)[self._at : self._at + step]
            write += step
            self._at += step
            n -= step

    def pick(self, n: int, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The given (offset, length) ranges of the next `n` bytes, in the order given (sorted by
        offset), reading through the rest a window at a time."""
        if n > self.size - self.pos:
            raise ValueError("truncated B-tree node")
        out = []
        base = self.pos
        for off, length in ranges:
            gap = base + off - self.pos
            if 0 <= gap and gap + length <= len(self._buf) - self._at:  # within the window: slice it
                self._at += gap
                out.append(self._buf[self._at : self._at + length])
                self._at += length
            else:
                self.skip(gap)
                out.append(self.take(length))
        self.skip(base + n - self.pos)
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            self._need(min(n, _WINDOW))
            step = min(n, len(self._buf) - self._at)
            if step <= 0:
                raise ValueError("truncated B-tree node")
            self._at += step
            n -= step


#: Bytes of a node body decoded at once (a window a column's piece of varints always fits in).
_WINDOW = 1 << 20


def _narrowest(parts: list[np.ndarray]) -> np.ndarray:
    """The pieces of a column end to end, in the narrowest unsigned type that holds its largest."""
    top = max((int(p.max()) for p in parts if len(p)), default=0)
    kind = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max)
    if len(parts) == 1:
        return parts[0].astype(kind, copy=False)
    out = np.empty(sum(len(p) for p in parts), kind)
    at = 0
    for p in parts:
        out[at : at + len(p)] = p
        at += len(p)
    return out


def _open_node(raw: bytes, cap: int = MAX_NODE_BYTES) -> tuple[int, _Body, list[tuple[str, str]]]:
    """Checks the envelope; returns (height, the body positioned after the data file table, table)."""
    if len(raw) < 16 or struct.unpack_from(">I", raw)[0] != BTREE_MAGIC:
        raise ValueError("not an OCDBT B-tree node")
    (length,) = struct.unpack_from("<Q", raw, 4)
    if length != len(raw):
        raise ValueError("B-tree node length mismatch")
    if google_crc32c.value(raw[:-4]) != struct.unpack_from("<I", raw, len(raw) - 4)[0]:
        raise ValueError("B-tree node checksum mismatch")
    version, pos = _varint(raw, 12)
    compression, pos = _varint(raw, pos)
    if version != 0 or compression not in (0, 1):
        raise ValueError(f"B-tree node version {version} / compression {compression} not known")
    body = _Body(raw, pos, len(raw) - 4, compression == 1, cap)
    height = body.byte()
    files = _data_files(body)
    return height, body, files


def _unzstd_size(data: memoryview, cap: int) -> int:
    """The decoded length of a zstd frame, decoded and dropped a piece at a time (a first pass, so
    the walk knows the body's length before using any of it); more than `cap` is refused as soon as
    it is seen: a hostile node of a few KB may inflate to a GB."""
    total = 0
    try:
        for piece in zstandard.ZstdDecompressor().read_to_iter(data):
            total += len(piece)
            if total > cap:
                raise ValueError("B-tree node decodes to more than max_decoded_node_bytes")
    except zstandard.ZstdError as e:
        raise ValueError(f"B-tree node does not decompress: {e}") from e
    return total


def _data_files(body: _Body) -> list[tuple[str, str]]:
    """The node's data file table: (base path, relative path) per file."""
    n = body.varint()
    prefix = body.varints(max(n - 1, 0))
    suffix = body.varints(n)
    base = body.varints(n)
    out: list[tuple[str, str]] = []
    prev = b""
    for i in range(n):
        keep = int(prefix[i - 1]) if i else 0
        path = prev[:keep] + body.take(int(suffix[i]))
        prev = path
        cut = int(base[i])
        if cut > len(path):
            raise ValueError("bad data file table")
        out.append((path[:cut].decode(), path[cut:].decode()))
    return out


@overload
def _keys(body: _Body, n: int, common: bool, sink: None = None) -> tuple[list[bytes], np.ndarray | None]: ...


@overload
def _keys(body: _Body, n: int, common: bool, sink: tuple[bytearray, bytes]) -> tuple[np.ndarray, np.ndarray | None]: ...


def _keys(
    body: _Body, n: int, common: bool, sink: tuple[bytearray, bytes] | None = None
) -> tuple[list[bytes] | np.ndarray, np.ndarray | None]:
    """The prefix-compressed relative keys of a node (and, for interior nodes, each subtree's common
    prefix length). With `sink` (a buffer, a key prefix), each full key is appended to the buffer
    and its length returned (in the narrowest type) in place of the key, so a node of a million keys
    makes no object per key; the columns are checked and turned into Python ints `_PIECE` keys at a time, so nothing of
    the node's length is held beyond the (narrow) columns and the returned offsets."""
    shared = body.varints(max(n - 1, 0))
    suffix = body.varints(n)
    subtree = body.varints(n) if common else None
    spelled = int(suffix.sum(dtype=np.uint64))  # each suffix is at most the body: no overflow
    if n and int(suffix.max()) > body.size:
        raise ValueError("truncated keys")
    if n > 1 and int(shared.max()) > KEY_EXPANSION * body.size + (1 << 20):  # before any sum or cast can wrap
        raise ValueError("a key shares more than the key before it holds")
    if spelled + float(shared.sum(dtype=np.float64)) > KEY_EXPANSION * body.size + (1 << 20):  # float: cannot wrap
        # Prefix compression lets n keys of one byte each spell n*n/2 bytes: a hostile 1 MB node
        # would decode to 500 GB of keys.
        raise ValueError("B-tree node keys expand past any real database's")
    raw = body.take(spelled)
    keys: list[bytes] = []
    out, head = sink if sink is not None else (bytearray(), b"")
    write = len(out)  # with `sink`: where the next key goes in it
    longest = 0
    for lo in range(0, n, _PIECE):  # first pass: the longest key, for the type of the lengths returned
        keep = shared[max(lo - 1, 0) : lo + _PIECE - 1].astype(np.int64)
        suf = suffix[lo : lo + _PIECE].astype(np.int64)
        suf[1 if lo == 0 else 0 :] += keep
        longest = max(longest, int(suf.max()))
    got = np.empty(n if sink is not None else 0, _narrowest([np.array([longest + len(head)], np.uint64)]).dtype)
    if sink is not None:  # grown once (zeros come from calloc: no page touched until written)
        out += bytes(n * len(head) + spelled + int(shared.sum(dtype=np.uint64)))
    prev = b""
    start = 0  # where the next key's suffix starts in `raw`
    for lo in range(0, n, _PIECE):
        hi = min(lo + _PIECE, n)
        suf = suffix[lo:hi].astype(np.int64)
        keep = np.zeros(hi - lo, np.int64)  # what each key shares with the one before (the first: nothing)
        keep[1 if lo == 0 else 0 :] = shared[max(lo - 1, 0) : hi - 1]
        before = np.empty(hi - lo, np.int64)  # the length of the key before each
        before[0] = len(prev)
        before[1:] = (keep + suf)[:-1]
        if bool((keep > before).any()):
            raise ValueError("a key shares more than the key before it holds")
        ends = start + np.cumsum(suf)
        for k, end in zip(keep.tolist(), ends.tolist()):
            prev = prev[:k] + raw[start:end]
            if sink is None:
                keys.append(prev)
            else:
                stop = write + len(head) + len(prev)
                out[write:stop] = head + prev
                write = stop
            start = end
        if sink is not None:
            got[lo:hi] = keep + suf + len(head)
    return (got if sink is not None else keys), subtree


#: Full key bytes a node may decode to per byte of node: prefix compression of real keys (paths that
#: share all but their last few bytes) stays far below it.
KEY_EXPANSION = 64

#: Column entries turned into Python objects at once (a node may hold a million keys).
_PIECE = 1 << 16


def _leaf(body: _Body, sink: tuple[bytearray, bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """(key lengths, the keys appended to the sink's buffer (see `_keys`), value lengths, offset of each inline value
    in the node's inline values or -1 (None: every value is inline), their total length) of a leaf
    node; `body` is left at its inline values."""
    n = body.varint()
    keys, _ = _keys(body, n, False, sink)
    lengths = body.varints(n)
    kinds = body.varints(n)
    if n and int(kinds.max()) > 1:
        raise ValueError("unknown value kind")
    direct = kinds == 0
    del kinds
    indirect = n - int(np.count_nonzero(direct))
    body.varints(indirect)  # data file ids
    offsets = body.varints(indirect)
    # tensorstore refuses offset + length past 2**63; a size there would wrap in int64 (and int32).
    if n and max(int(lengths.max()), int(offsets.max()) if indirect else 0) >= 1 << 62:
        raise ValueError("value offset or length out of range")
    inline = lengths[direct] if indirect else lengths
    if len(inline) and int(inline.max()) > body.size:
        raise ValueError("truncated inline values")
    total = int(inline.sum(dtype=np.uint64))  # each at most the body's length: no overflow
    if total > body.size - body.pos:
        raise ValueError("truncated inline values")
    if not indirect:
        return keys, lengths, None, total  # every value inline, back to back: the lengths say where
    ends = np.cumsum(inline, dtype=np.int32)  # a node body is at most MAX_NODE_BYTES < 2**31
    np.subtract(ends, inline, out=ends, casting="unsafe")  # each inline length fits: checked above
    where = np.full(n, -1, np.int32)
    where[direct] = ends
    return keys, lengths, where, total


def _interior(body: _Body, files: list[tuple[str, str]], parent: _Ref) -> list[_Ref]:
    n = body.varint()
    keys, subtree = _keys(body, n, True)
    if subtree is None:  # `_keys` reads the subtree column whenever `common` is set
        raise ValueError("interior node without subtree prefix lengths")
    ids = body.varints(n)
    offsets = body.varints(n)
    lengths = body.varints(n)
    out = []
    for key, common, fid, off, size in zip(keys, subtree.tolist(), ids.tolist(), offsets.tolist(), lengths.tolist()):
        if fid >= len(files) or common > len(key):
            raise ValueError("bad interior entry")
        base, rel = files[fid]
        at = parent.transitive + base
        out.append(_Ref(at + rel, off, size, at, parent.prefix + key[:common]))
    return out
