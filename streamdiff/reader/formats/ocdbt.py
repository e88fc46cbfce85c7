"""An OCDBT database read as its B-tree: every key with its inline value or stored size, in a few reads.

Reading each array's `.zarray` / `zarr.json` through the ocdbt kvstore costs one B-tree lookup per key,
slow for a tree of 100k leaves; orbax keeps those small values *inline* in the B-tree
leaf nodes, so walking the nodes once yields all of them, level by level with every node read of a
level in flight at once (on GCS each is a round trip).

The manifest comes from `tensorstore.ocdbt.dump` (one small document); the B-tree nodes are read as
byte ranges of their data files and decoded here, following the format tensorstore documents
(kvstore/ocdbt/index.rst, "B+tree node format"): tensorstore 0.1.86's `ocdbt.dump` of a node leaks
every Python object it returns (about 600 bytes per key, never freed), which a checkpoint of
hundreds of thousands of keys cannot afford. The columns of a node (varint arrays) are decoded with
numpy; a node whose magic, length, version, checksum or columns do not add up raises `ValueError`,
and callers then read key by key through the ocdbt driver, which reports real errors.

Keys inside a node are relative to the prefix accumulated on the way down (each interior entry's
`subtree_common_prefix`); data file paths are `transitive path + base path + relative path`, the
transitive path growing by the base path at each level.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, overload

import google_crc32c
import numpy as np
import tensorstore as ts
import zstandard

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
    offsets and sizes (a dict of a million chunk keys would hold ~150 MB for the whole run), and
    the keys' CRC-32s sorted for lookups, each confirmed against the key itself."""

    def __init__(
        self, keys: bytes, ends: np.ndarray, sizes: np.ndarray, values: bytes = b"", value_at: np.ndarray | None = None
    ):
        self._keys = keys
        #: Inline values kept (see `index(values=True)`): key i's bytes are values[value_at[i]:][:sizes[i]]
        #: when value_at[i] >= 0. Reading them here spares a B-tree lookup per chunk through the ocdbt
        #: driver, which costs more the bigger the leaf node (a node holds up to a million keys).
        self._values = values
        self._value_at = None if value_at is None else value_at.astype(np.int64 if len(values) >= 1 << 31 else np.int32)
        self._ends = ends.astype(np.int64 if len(keys) >= 1 << 31 else np.int32)  # key i is keys[ends[i-1]:ends[i]]
        self._sizes = sizes.astype(np.int64 if len(sizes) and int(sizes.max()) >= 1 << 31 else np.int32)
        # crc32, not hash(): the same in every process (a Dask worker may get these pickled).
        hashes = np.fromiter((zlib.crc32(k) for k in self._raw_keys()), np.int64, len(sizes))
        self._order = np.argsort(hashes, kind="stable").astype(np.int32)
        self._hashes = hashes[self._order]

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[str]:
        """Every key, in order."""
        for k in self._raw_keys():
            yield k.decode()

    def _raw_keys(self) -> Iterator[bytes]:
        """Every key's bytes, in order (offsets turned into Python ints a piece at a time)."""
        for lo in range(0, len(self._ends), _PIECE):
            start = int(self._ends[lo - 1]) if lo else 0
            for end in self._ends[lo : lo + _PIECE].tolist():
                yield self._keys[start:end]
                start = end

    def _key(self, i: int) -> bytes:
        return self._keys[(int(self._ends[i - 1]) if i else 0) : int(self._ends[i])]

    def _find(self, key: str) -> int:
        """The index of `key`, or -1."""
        raw = key.encode()
        h = zlib.crc32(raw)
        # memoryviews: Python ints per probe, without numpy's per-call overhead on a single value.
        hashes, order, ends = self._hashes.data, self._order.data, self._ends.data
        at = bisect.bisect_left(hashes, h)
        while at < len(hashes) and hashes[at] == h:
            i = order[at]
            if self._keys[(ends[i - 1] if i else 0) : ends[i]] == raw:
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
        if self._value_at is None or self._value_at[i] < 0:
            return size, None
        at = int(self._value_at[i])
        return size, self._values[at : at + size]

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
    ends: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    store = bytearray()  # inline values kept, node after node
    value_at: list[np.ndarray] = []
    ordered = True
    wanted = tuple(("/" + name).encode() for name in keep_inline)
    bare = {len(name.encode()) for name in keep_inline}  # a key that is the name itself (a root array)
    last = (0, 0)  # the previous node's last key, as offsets in blob
    for node_ends, node_lengths, starts, body in _leaf_nodes(base, blob):
        if not len(node_ends):
            continue
        first = last[1]
        if last[1] and blob[last[0] : last[1]] >= blob[first : int(node_ends[0])]:
            ordered = False  # this node's first key is not after the previous node's last
        last = (int(node_ends[-2]) if len(node_ends) > 1 else first, int(node_ends[-1]))
        if wanted:
            begin = first
            for lo in range(0, len(node_ends), _PIECE):
                piece = zip(*(c[lo : lo + _PIECE].tolist() for c in (node_ends, starts, node_lengths)))
                for end, start, size in piece:
                    if start >= 0 and (
                        blob.endswith(wanted, begin, end)
                        or (end - begin in bare and blob[begin:end].decode() in keep_inline)
                    ):
                        kept[blob[begin:end].decode()] = body[start : start + size]
                    begin = end
        ends.append(node_ends)
        lengths.append(node_lengths.astype(np.int64))
        if values:
            value_at.append(_keep_values(store, starts, node_lengths, body))
    all_ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
    all_sizes = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    all_at = (np.concatenate(value_at) if value_at else np.zeros(0, np.int64)) if values else None
    if not ordered:  # nodes came out of key order: sort once
        starts = np.concatenate(([0], all_ends[:-1])) if len(all_ends) else all_ends
        keys = [bytes(blob[s:e]) for s, e in zip(starts.tolist(), all_ends.tolist())]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        keys = [keys[i] for i in order]
        all_sizes = all_sizes[order]
        if all_at is not None:
            all_at = all_at[order]
        all_ends = np.cumsum([len(k) for k in keys], dtype=np.int64)
        blob = bytearray(b"".join(keys))
    return kept, KeySizes(bytes(blob), all_ends, all_sizes, bytes(store), all_at)


def _keep_values(store: bytearray, starts: np.ndarray, lengths: np.ndarray, body: bytes) -> np.ndarray:
    """Appends a leaf node's inline values to `store` (one slice: they lie back to back in the node)
    and returns each key's offset in `store`, -1 where not inline or over MAX_KEPT_VALUES."""
    at = np.full(len(starts), -1, np.int64)
    inline = starts >= 0
    if not inline.any():
        return at
    first = int(starts[inline][0])
    last = int(starts[inline][-1]) + int(lengths[inline][-1])
    if len(store) + last - first > MAX_KEPT_VALUES:
        return at
    at[inline] = starts[inline] - first + len(store)
    store += body[first:last]
    return at


def _leaf_nodes(base: ts.KvStore, blob: bytearray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, bytes]]:
    """(key end offsets in `blob`, value lengths, inline value offsets or -1, node body)
    of every leaf node, level by level with every read of a level in flight at once; each full key
    is appended to `blob`."""
    manifest = ts.ocdbt.dump(base).result()
    versions = manifest.get("versions") or []
    if not versions or "location" not in versions[-1].get("root", {}):
        return  # an empty database
    keys = versions[-1]["root"].get("statistics", {}).get("num_keys", 0)
    if keys > MAX_WALK_KEYS:
        raise TooManyKeys(f"{keys} keys")
    cap = node_limit(manifest.get("config") or {})
    level = [_root_ref(str(versions[-1]["root"]["location"]))]
    while level:
        if any(r.length > cap + cap // 128 + 1024 for r in level):  # zstd's worst-case growth
            raise ValueError("B-tree node larger than the database's max_decoded_node_bytes")
        futures = [(base.read(r.path, byte_range=slice(r.offset, r.offset + r.length)), r) for r in level]
        level = []
        for fut, ref in futures:
            got = fut.result()
            if got.state != "value" or len(got.value) != ref.length:
                raise ValueError(f"B-tree node {ref.path}@{ref.offset} not found")
            height, body, pos, files = _open_node(bytes(got.value), cap)
            if height > 0:
                level.extend(_interior(body, pos, files, ref))
            else:
                yield (*_leaf(body, pos, (blob, ref.prefix)), body)


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
    """`n` consecutive varints from `pos`, as uint64, and the position after them."""
    if n == 0:
        return np.zeros(0, np.uint64), pos
    window = np.frombuffer(buf, np.uint8, count=min(len(buf) - pos, 10 * n), offset=pos)
    ends = _terminators(window, n)
    starts = np.empty(n, np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    widths = ends - starts + 1
    values = window[ends].astype(np.uint64) if widths.max() == 1 else _multi_byte(window, starts, widths)
    return values, pos + int(ends[-1]) + 1


def _terminators(window: np.ndarray, n: int) -> np.ndarray:
    """Offsets of the first `n` bytes below 0x80 (each ends a varint) in `window`, looked for a
    piece at a time: indices of every such byte of a window of 10n bytes would take 80n bytes."""
    found: list[np.ndarray] = []
    got = off = 0
    while got < n and off < len(window):
        piece = window[off : off + max(n - got, 1 << 16)]
        hits = np.flatnonzero(piece < 0x80)[: n - got]
        found.append(hits + off)
        got += len(hits)
        off += len(piece)
    if got < n:
        raise ValueError("truncated varint column")
    return found[0] if len(found) == 1 else np.concatenate(found)


def _multi_byte(window: np.ndarray, starts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    if widths.max() > 10:
        raise ValueError("varint longer than 10 bytes")
    values = np.zeros(len(starts), np.uint64)
    for j in range(int(widths.max())):
        sel = widths > j
        values[sel] |= (window[starts[sel] + j].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * j)
    return values


def _open_node(raw: bytes, cap: int = MAX_NODE_BYTES) -> tuple[int, bytes, int, list[tuple[str, str]]]:
    """Checks the envelope; returns (height, decoded body, position after the data file table, table)."""
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
    body = raw[pos:-4]
    if compression == 1:
        body = _unzstd(body, cap)
    if not body or len(body) > cap:
        raise ValueError("B-tree node body empty or larger than max_decoded_node_bytes")
    height = body[0]
    files, pos = _data_files(body, 1)
    return height, body, pos, files


def _unzstd(data: bytes, cap: int) -> bytes:
    """Decompressed in pieces: `decompress(max_output_size=...)` would allocate the whole cap up front."""
    parts = []
    total = 0
    for piece in zstandard.ZstdDecompressor().read_to_iter(data):
        total += len(piece)
        if total > cap:
            raise ValueError("B-tree node decodes to more than max_decoded_node_bytes")
        parts.append(piece)
    return b"".join(parts)


def _data_files(buf: bytes, pos: int) -> tuple[list[tuple[str, str]], int]:
    """The node's data file table: (base path, relative path) per file."""
    n, pos = _varint(buf, pos)
    prefix, pos = varints(buf, pos, max(n - 1, 0))
    suffix, pos = varints(buf, pos, n)
    base, pos = varints(buf, pos, n)
    out: list[tuple[str, str]] = []
    prev = b""
    for i in range(n):
        keep = int(prefix[i - 1]) if i else 0
        end = pos + int(suffix[i])
        path = prev[:keep] + buf[pos:end]
        pos, prev = end, path
        cut = int(base[i])
        if end > len(buf) or cut > len(path):
            raise ValueError("bad data file table")
        out.append((path[:cut].decode(), path[cut:].decode()))
    return out, pos


@overload
def _keys(
    buf: bytes, pos: int, n: int, common: bool, sink: None = None
) -> tuple[list[bytes], np.ndarray | None, int]: ...


@overload
def _keys(
    buf: bytes, pos: int, n: int, common: bool, sink: tuple[bytearray, bytes]
) -> tuple[np.ndarray, np.ndarray | None, int]: ...


def _keys(
    buf: bytes, pos: int, n: int, common: bool, sink: tuple[bytearray, bytes] | None = None
) -> tuple[list[bytes] | np.ndarray, np.ndarray | None, int]:
    """The prefix-compressed relative keys of a node (and, for interior nodes, each subtree's common
    prefix length). With `sink` (a buffer, a key prefix), each full key is appended to the buffer
    and its end offset returned in place of the key, so a node of a million keys makes no object per key."""
    shared, pos = varints(buf, pos, max(n - 1, 0))
    suffix, pos = varints(buf, pos, n)
    subtree = None
    if common:
        subtree, pos = varints(buf, pos, n)
    if n and int(suffix.max()) > len(buf):
        raise ValueError("truncated keys")
    lengths = suffix.astype(np.int64)  # each full key: what it shares with the one before, then its suffix
    lengths[1:] += shared.astype(np.int64)
    if n > 1 and bool((shared > lengths[:-1].astype(np.uint64)).any()):
        raise ValueError("a key shares more than the key before it holds")
    if n and int(lengths.sum()) > KEY_EXPANSION * len(buf) + (1 << 20):
        # Prefix compression lets n keys of one byte each spell n*n/2 bytes: a hostile 1 MB node
        # would decode to 500 GB of keys.
        raise ValueError("B-tree node keys expand past any real database's")
    ends = pos + np.cumsum(suffix, dtype=np.int64)
    if n and int(ends[-1]) > len(buf):
        raise ValueError("truncated keys")
    keys: list[bytes] = []
    parts: list[np.ndarray] = []  # with `sink`: key end offsets, a piece at a time
    prev = b""
    start = pos
    for lo in range(0, n, _PIECE):  # Python ints for a piece of the columns at a time, not the node
        keeps = shared[max(lo - 1, 0) : lo + _PIECE - 1].tolist()
        if lo == 0:
            keeps.insert(0, 0)  # the first key shares nothing
        piece_ends: list[int] = []
        for keep, end in zip(keeps, ends[lo : lo + _PIECE].tolist()):
            prev = prev[:keep] + buf[start:end]
            if sink is None:
                keys.append(prev)
            else:
                out, head = sink
                out += head
                out += prev
                piece_ends.append(len(out))
            start = end
        if sink is not None:
            parts.append(np.array(piece_ends, np.int64))
    end = int(ends[-1]) if n else pos
    if sink is not None:
        return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), subtree, end
    return keys, subtree, end


#: Full key bytes a node may decode to per byte of node: prefix compression of real keys (paths that
#: share all but their last few bytes) stays far below it.
KEY_EXPANSION = 64

#: Column entries turned into Python objects at once (a node may hold a million keys).
_PIECE = 1 << 16


def _leaf(buf: bytes, pos: int, sink: tuple[bytearray, bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key end offsets in the sink's buffer (see `_keys`), value lengths, offset in `buf` of each
    inline value or -1) of a leaf node."""
    n, pos = _varint(buf, pos)
    keys, _, pos = _keys(buf, pos, n, False, sink)
    lengths, pos = varints(buf, pos, n)
    kinds, pos = varints(buf, pos, n)
    if n and int(kinds.max()) > 1:
        raise ValueError("unknown value kind")
    indirect = int(kinds.sum())
    _, pos = varints(buf, pos, indirect)  # data file ids
    offsets, pos = varints(buf, pos, indirect)
    # tensorstore refuses offset + length past 2**63; a size there would wrap in int64 (and int32).
    if n and max(int(lengths.max()), int(offsets.max()) if indirect else 0) >= 1 << 62:
        raise ValueError("value offset or length out of range")
    direct = kinds == 0
    starts = pos + np.concatenate(([0], np.cumsum(lengths[direct], dtype=np.int64)))
    if int(starts[-1]) > len(buf):
        raise ValueError("truncated inline values")
    where = np.full(n, -1, np.int64)
    where[direct] = starts[:-1]
    return keys, lengths, where


def _interior(buf: bytes, pos: int, files: list[tuple[str, str]], parent: _Ref) -> list[_Ref]:
    n, pos = _varint(buf, pos)
    keys, subtree, pos = _keys(buf, pos, n, True)
    if subtree is None:  # `_keys` reads the subtree column whenever `common` is set
        raise ValueError("interior node without subtree prefix lengths")
    ids, pos = varints(buf, pos, n)
    offsets, pos = varints(buf, pos, n)
    lengths, pos = varints(buf, pos, n)
    out = []
    for key, common, fid, off, size in zip(keys, subtree.tolist(), ids.tolist(), offsets.tolist(), lengths.tolist()):
        if fid >= len(files) or common > len(key):
            raise ValueError("bad interior entry")
        base, rel = files[fid]
        at = parent.transitive + base
        out.append(_Ref(at + rel, off, size, at, parent.prefix + key[:common]))
    return out
