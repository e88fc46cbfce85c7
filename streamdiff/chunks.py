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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorstore as ts
import zstandard

from .datatypes import ArraySource
from .formats import ocdbt

#: Bytes fetched per range read when streaming a chunk.
PIECE_BYTES = 8 << 20


@dataclass(frozen=True)
class ChunkFormat:
    """What the stored bytes of one array's chunks look like."""

    zarr_format: int
    dtype: np.dtype  # with the stored byte order
    chunk_shape: tuple[int, ...]  # storage grid (zarr3: shard shape)
    inner_shape: tuple[int, ...]  # inner chunk shape (== chunk_shape for zarr2)
    compressor: str | None  # 'zstd' or 'raw'; None when the codec chain cannot be streamed
    shard_index_at_end: bool | None  # None: not sharded
    shard_index_crc: bool
    separator: str  # chunk key separator
    prefix: str  # 'c' + separator for zarr3 default keys, '' otherwise
    #: Equal signatures => equal stored bytes mean equal values. The key encoding is deliberately
    #: not part of it: it names chunks, it does not change their bytes. Whoever reads a chunk of
    #: either side must spell its key with that side's own `key()`.
    signature: str

    def key(self, grid_index: tuple[int, ...]) -> str:
        if not grid_index:
            return "c" if self.prefix else "0"
        return self.prefix + self.separator.join(str(i) for i in grid_index)

    @property
    def inner_per_shard(self) -> tuple[int, ...]:
        return tuple(c // i for c, i in zip(self.chunk_shape, self.inner_shape))

    @property
    def streamable(self) -> bool:
        return self.compressor is not None


class MissingChunk(ValueError):
    """A chunk (or a shard's inner chunk) that is not stored."""


def chunk_format(source: ArraySource) -> ChunkFormat:
    md = source.spec["metadata"]
    if source.spec.get("driver") == "n5":
        # n5 chunks carry a header of their own: neither streamed nor compared as bytes (signature '').
        shape = source.chunk_shape
        return ChunkFormat(0, np.dtype(md["dataType"]), shape, shape, None, None, False, "/", "", "")
    if source.zarr_format == 2:
        dtype = np.dtype(md["dtype"])
        comp = md.get("compressor")
        ok = not md.get("filters") and md.get("order", "C") == "C"
        compressor = None
        if ok and comp is None:
            compressor = "raw"
        elif ok and comp.get("id") == "zstd":
            compressor = "zstd"
        sep = md.get("dimension_separator", ".")
        signature = json.dumps([2, md["dtype"], md["chunks"], comp, md.get("filters"), md.get("order")])
        shape = source.chunk_shape
        return ChunkFormat(2, dtype, shape, shape, compressor, None, False, sep, "", signature)
    codecs = md.get("codecs", [])
    enc = md.get("chunk_key_encoding", {"name": "default"})
    sep = (enc.get("configuration") or {}).get("separator", "/" if enc.get("name") == "default" else ".")
    prefix = "c" + sep if enc.get("name") == "default" else ""  # 'c/0/0', or 'c.0.0' with separator '.'
    signature = json.dumps([3, md["data_type"], source.chunk_shape, codecs], sort_keys=True)
    at_end, crc, inner = None, False, codecs
    if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
        conf = codecs[0]["configuration"]
        at_end = conf.get("index_location", "end") == "end"
        crc = any(c.get("name") == "crc32c" for c in conf.get("index_codecs", []))
        inner = conf.get("codecs", [])
    compressor, endian = _zarr3_chain(inner)
    dtype = np.dtype(md["data_type"]).newbyteorder("<" if endian != "big" else ">")
    if dtype.itemsize == 1:
        dtype = np.dtype(md["data_type"])
    return ChunkFormat(
        3, dtype, source.chunk_shape, source.read_chunk_shape, compressor, at_end, crc, sep, prefix, signature
    )


def _zarr3_chain(codecs: list[dict]) -> tuple[str | None, str]:
    """('zstd' | 'raw' | None, endian) for a bytes[+zstd] chain; anything else cannot stream."""
    names = [c.get("name") for c in codecs]
    endian = "little"
    if names and names[0] == "bytes":
        endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    if names == ["bytes"]:
        return "raw", endian
    if names == ["bytes", "zstd"]:
        return "zstd", endian
    return None, endian


class RawStore:
    """Stored bytes of one array: an opened kvstore under the array's prefix, plus known sizes."""

    def __init__(self, source: ArraySource, context: ts.Context, sizes: ArraySizes | None):
        self.source = source
        self.format = chunk_format(source)
        self.kv = ts.KvStore.open(source.spec["kvstore"], context=context).result()
        self._sizes = sizes  # key -> stored size, or None when unknown
        self._local = _local_dir(source.spec["kvstore"])

    def size(self, key: str) -> int | None:
        if self._sizes is not None:
            return self._sizes.get(key)
        if self._local is not None:
            try:
                return os.stat(os.path.join(self._local, key)).st_size
            except OSError:
                return None
        return None

    def read(self, key: str) -> ts.Future:
        return self.kv.read(key)

    def read_range(self, key: str, start: int, stop: int | None) -> bytes:
        r = self.kv.read(key, byte_range=slice(start, stop)).result()
        if r.state != "value":
            raise ValueError(f"chunk {key!r} is missing")
        return bytes(r.value)


def _local_dir(kvspec: dict[str, Any]) -> str | None:
    if kvspec.get("driver") == "file":
        return kvspec["path"]
    return None


class ItemSizes:
    """Stored sizes of every key of OCDBT items, from one B-tree dump per item, computed once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_base: dict[str, ocdbt.KeySizes | None] = {}
        #: id of a leaf's base kvstore spec -> (the spec, its key): readers share one spec per item,
        #: so the key is spelled once per item, not once per leaf.
        self._base_keys: dict[int, tuple[Any, str]] = {}

    def for_source(self, source: ArraySource, context: ts.Context) -> ArraySizes | None:
        kv = source.spec["kvstore"]
        if kv.get("driver") != "ocdbt":
            return None
        with self._lock:
            known = self._base_keys.get(id(kv["base"]))
            if known is None:
                known = self._base_keys[id(kv["base"])] = (kv["base"], json.dumps(kv["base"], sort_keys=True))
            base_key = known[1]
            if base_key not in self._by_base:
                self._by_base[base_key] = _ocdbt_sizes(kv["base"], context)
            sizes = self._by_base[base_key]
        return None if sizes is None else ArraySizes(sizes, kv.get("path", ""))


@dataclass(frozen=True)
class ArraySizes:
    """The item-wide sizes seen from one array: keys relative to the array's prefix."""

    sizes: ocdbt.KeySizes
    prefix: str

    def get(self, key: str) -> int | None:
        return self.sizes.get(self.prefix + key)


def _ocdbt_sizes(base: dict[str, Any], context: ts.Context) -> ocdbt.KeySizes | None:
    """key -> stored value length, from one walk of the B-tree (every level)."""
    try:
        kv = ts.KvStore.open(base, context=context).result()
        return ocdbt.sizes(kv)
    except Exception:  # noqa: BLE001 - sizes are an optimisation; without them we compare bytes
        return None


# ----------------------------------------------------------------------------------- streaming


class _RangeSource:
    """File-like reader over one stored value's byte range, keeping `depth` piece reads in flight."""

    def __init__(self, raw: RawStore, key: str, start: int, stop: int | None, piece: int, depth: int = 2):
        self.raw = raw
        self.key = key
        self.pos = start
        self.stop = stop
        self.piece = piece
        self.eof = False
        self._data = b""
        self._off = 0
        self._ahead: collections.deque = collections.deque()
        for _ in range(max(1, depth)):
            f = self._fetch()
            if f is None:
                break
            self._ahead.append(f)

    def _fetch(self):
        if self.eof or (self.stop is not None and self.pos >= self.stop):
            return None
        start = self.pos
        end = start + self.piece if self.stop is None else min(start + self.piece, self.stop)
        self.pos = end
        return self.raw.kv.read(self.key, byte_range=slice(start, end)), start

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
        return r.value  # already a bytes object: no second copy

    def read(self, n: int = -1) -> bytes:
        if self._off < len(self._data):
            out = self._data[self._off :] if n < 0 else self._data[self._off : self._off + n]
            self._off += len(out)
            return out
        if not self._ahead:
            return b""
        self._data, self._off = self._take_next(), 0
        return self.read(n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def inner_chunk_range(raw: RawStore, shard_key: str, inner_index: tuple[int, ...]) -> tuple[int, int]:
    """(offset, nbytes) of one inner chunk of a zarr3 shard, from the shard index."""
    f = raw.format
    n = int(np.prod(f.inner_per_shard)) if f.inner_per_shard else 1
    index_bytes = 16 * n + (4 if f.shard_index_crc else 0)
    rng = slice(-index_bytes, None) if f.shard_index_at_end else slice(0, index_bytes)
    r = raw.kv.read(shard_key, byte_range=rng).result()
    if r.state != "value":
        raise MissingChunk(f"shard {shard_key!r} is missing")
    flat = int(np.ravel_multi_index(inner_index, f.inner_per_shard)) if inner_index else 0
    offset, nbytes = struct.unpack_from("<QQ", bytes(r.value), 16 * flat)
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
    """
    f = raw.format
    shape = f.inner_shape
    row_elems = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    row_bytes = row_elems * f.dtype.itemsize
    total_rows = shape[0] if shape else 1
    # One buffer, reused: each slab is compared before the next is decoded into it.
    buf = np.empty((min(rows_per_slab, total_rows),) + tuple(shape[1:]), dtype=f.dtype)
    try:
        key, reader = _chunk_reader(raw, grid_index, piece, depth)
        # The first read tells whether the chunk is stored at all.
        head = reader.readinto(memoryview(buf.reshape(-1).view(np.uint8))[: min(row_bytes, buf.nbytes) or 1])
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
        view = memoryview(buf.reshape(-1).view(np.uint8))[: n * row_bytes]
        got = head if row == 0 else 0
        while got < len(view):
            k = reader.readinto(view[got:])
            if not k:
                raise ValueError(f"chunk {key!r} ended early: truncated data")
            got += k
        yield buf[:n]
        row += n


def _chunk_reader(raw: RawStore, grid_index: tuple[int, ...], piece: int, depth: int):
    """(key, file-like reader of the decoded bytes) of one (inner) chunk."""
    f = raw.format
    if f.shard_index_at_end is None:
        key, start, stop = f.key(grid_index), 0, None
    else:
        per = f.inner_per_shard
        shard = tuple(g // p for g, p in zip(grid_index, per))
        inner = tuple(g % p for g, p in zip(grid_index, per))
        key = f.key(shard)
        offset, nbytes = inner_chunk_range(raw, key, inner)
        start, stop = offset, offset + nbytes
    source = _RangeSource(raw, key, start, stop, piece, depth)
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_size=piece) if f.compressor == "zstd" else source
    return key, reader
