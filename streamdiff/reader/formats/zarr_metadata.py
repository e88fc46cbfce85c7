"""One array's zarr v2 / v3 or n5 metadata as a frozen typed object, parsed once from its document.

Modelled on zarr-python 3's `zarr.core.metadata` (`ArrayV2Metadata`, `ArrayV3Metadata`): the stored
fields are parsed at the edge, and everything derived from them (the storage grid, the read chunk,
how chunk keys are spelled, whether the codec chain can be streamed, where a shard keeps its index)
is a field or property of `ArrayMetadata`, worked out here and nowhere else. The reader, the chunk
streamer and the plausibility checks all ask this object instead of re-reading the JSON.

Leaves of one model share a handful of distinct documents: the readers parse each distinct document
once and hand the same object to every leaf using it, so a tree of 100k leaves holds a few of these.

Documents are validated before they get here (`validate.check_zarray` / `check_zarr_json` for Orbax
and T5X, zarr-python for plain stores); the parser still raises `KeyError` / `TypeError` /
`ValueError` on a field it needs and cannot read, which the readers turn into an error leaf.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from ...errors import StreamdiffError
from . import dtypes

#: Metadata file name -> zarr format: the files that define an array (.zgroup / .zattrs do not).
METADATA_FILES = {".zarray": 2, "zarr.json": 3}
METADATA_FILE = {fmt: name for name, fmt in METADATA_FILES.items()}
#: numpy kinds tensorstore's zarr drivers read as numbers (ml_dtypes are kind 'V' and named below).
NUMERIC_KINDS = "biufc"
ML_DTYPES = frozenset(
    "bfloat16 int2 int4 uint2 uint4 float4_e2m1fn float8_e3m4 float8_e4m3 float8_e4m3b11fnuz float8_e4m3fn "
    "float8_e4m3fnuz float8_e5m2 float8_e5m2fnuz float8_e8m0fnu".split()
)
#: Compressors whose stored frames `encoding.plausible` can check without decoding.
CHECKED_CODECS = ("raw", "zstd", "blosc", "zlib", "gzip")
SHARDING = "sharding_indexed"


class Driver(StrEnum):
    """The tensorstore driver that reads the array; also says which format the document is."""

    ZARR = "zarr"
    ZARR3 = "zarr3"
    N5 = "n5"


@dataclass(frozen=True, slots=True)
class ChunkKeyEncoding:
    """How a cell of the storage grid is named: zarr v3 `chunk_key_encoding`, zarr v2
    `dimension_separator`, n5's '/'-joined indices."""

    separator: str  # '/' or '.'
    prefix: str  # 'c' for zarr v3's default encoding ('c/0/1'), '' otherwise
    #: The one key of a rank-0 array ('c' or '0'); None for n5, which spells it as a 1-d index.
    rank0: str | None

    def key(self, index: tuple[int, ...]) -> str:
        if not index:
            return self.rank0 or "0"
        head = self.prefix + self.separator if self.prefix else ""
        return head + self.separator.join(str(i) for i in index)

    def parse(self, key: str, ndim: int) -> tuple[int, ...] | None:
        """The grid index a key spells for an array of `ndim` dimensions, or None when it spells none."""
        if ndim == 0 and self.rank0 is not None:
            return () if key == self.rank0 else None
        head = self.prefix + self.separator if self.prefix else ""
        if not key.startswith(head):
            return None
        parts = key[len(head) :].split(self.separator)
        if len(parts) != max(ndim, 1) or not all(p.isascii() and p.isdigit() for p in parts):
            return None
        return tuple(int(p) for p in parts)

    @property
    def spelled(self) -> str:
        """For people: 'c/a/b' (zarr v3 default), 'a.b' (zarr v2 default), 'a/b' (nested, n5)."""
        return self.key((0, 1)).replace("0", "a").replace("1", "b")


@dataclass(frozen=True, slots=True)
class ShardIndex:
    """Where a zarr v3 `sharding_indexed` shard keeps its (offset, nbytes) pair per inner chunk."""

    at_end: bool  # index_location 'end' (the default) or 'start'
    crc: bool  # the index is followed by a crc32c checksum
    entries: int  # inner chunks per shard

    @property
    def nbytes(self) -> int:
        return 16 * self.entries + 4 * self.crc


@dataclass(frozen=True, slots=True)
class ArrayMetadata:
    """What one array's metadata says, with every fact derived from it (module doc)."""

    driver: Driver
    #: The document as tensorstore gets it (a spec's `metadata`); shared, never mutated.
    document: dict[str, Any] = field(compare=False, repr=False)
    shape: tuple[int, ...]
    dtype: str  # numpy / ml_dtypes name ('float32', 'bfloat16'), or the stored name numpy lacks
    #: The dtype of the stored (decoded) bytes, byte order included; None when numpy has none.
    stored_dtype: np.dtype | None
    chunk_shape: tuple[int, ...]  # the storage grid: one key per cell (zarr v3 sharded: the shard)
    read_chunk_shape: tuple[int, ...]  # the smallest decodable unit (sharded: the inner chunk)
    key_encoding: ChunkKeyEncoding
    codec: str  # the codec chain for people: 'zstd(level=1)', 'shard[zstd(level=3)]', 'blosc(lz4)'
    #: How a stored (inner) chunk can be streamed: 'zstd' or 'raw'; None when the chain cannot be.
    compressor: str | None
    codec_family: str  # the compressor as `encoding.plausible` knows it: CHECKED_CODECS or 'other'
    filtered: bool  # zarr v2 filters run before the compressor
    chunk_crc: bool  # a zarr v3 crc32c codec ends each (inner) chunk
    shard_index: ShardIndex | None  # None: not sharded
    fill_value: Any = field(hash=False)
    #: Equal signatures => equal stored bytes mean equal values. The key encoding is deliberately not
    #: part of it: it names chunks, it does not change their bytes ('' : never compared as bytes).
    signature: str

    @property
    def zarr_format(self) -> int:
        """2 or 3; 0 for n5."""
        return {Driver.ZARR: 2, Driver.ZARR3: 3}.get(self.driver, 0)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def inner_shape(self) -> tuple[int, ...]:
        """The read chunk, under the name the chunk streamer uses."""
        return self.read_chunk_shape

    @property
    def inner_per_shard(self) -> tuple[int, ...]:
        return tuple(c // i for c, i in zip(self.chunk_shape, self.read_chunk_shape))

    @property
    def streamable(self) -> bool:
        return self.compressor is not None

    @property
    def numeric(self) -> bool:
        """Read by tensorstore as numbers (else: strings, objects, datetimes...)."""
        try:
            kind = np.dtype(self.dtype).kind
        except TypeError:
            return False
        return kind in NUMERIC_KINDS or self.dtype in ML_DTYPES

    @property
    def grid(self) -> tuple[int, ...]:
        """Cells of the storage grid per dimension."""
        return tuple(-(-s // c) if c > 0 else 0 for s, c in zip(self.shape, self.chunk_shape))

    def key(self, index: tuple[int, ...]) -> str:
        """The stored key (relative to the array) of one cell of the storage grid."""
        return self.key_encoding.key(index)

    def is_chunk_key(self, key: str) -> bool:
        """Whether `key` (relative to the array) names a cell of the storage grid. A stored key that
        is not one would be ignored by every reader, its data silently unread. n5 keys are checked
        for their form only (tensorstore writes their axes in its own order)."""
        index = self.key_encoding.parse(key, self.ndim)
        if index is None or self.key_encoding.rank0 is None:
            return index is not None
        return all(i < n for i, n in zip(index, self.grid))


# ------------------------------------------------------------------------------------- parsing


def parse(driver: Driver | str, doc: dict[str, Any]) -> ArrayMetadata:
    """A metadata document (`.zarray`, `zarr.json`, n5 `attributes.json`) -> ArrayMetadata.
    Raises KeyError / TypeError / ValueError / AttributeError on a field it cannot read."""
    driver = Driver(driver)
    if driver is Driver.ZARR:
        return _from_zarray(doc)
    if driver is Driver.ZARR3:
        return _from_zarr_json(doc)
    return _from_n5(doc)


def ints(value: Any, name: str) -> tuple[int, ...]:
    """A list of integers from metadata, or a ValueError naming the field (not "'int' object is not
    iterable")."""
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise ValueError(f"`{name}` must be a list of integers, got {json.dumps(value)[:60]}")
    return tuple(value)


def dtype_name(raw: Any) -> str:
    """The dtype's name: numpy's for what numpy (with ml_dtypes) knows; a zarr v3 extension dtype's
    name; 'structured' for a v2 record dtype; else the stored string (not numeric)."""
    if isinstance(raw, dict):  # a zarr v3 extension dtype: {"name": "fixed_length_utf32", ...}
        return str(raw.get("name"))
    if not isinstance(raw, str):
        return "structured"  # zarr v2 record dtype: [["a", "<i4"], ...]
    try:
        return dtypes.normalize(raw)
    except StreamdiffError:
        return raw  # a zarr v3 name numpy lacks ('string', 'bytes')


def _np_dtype(raw: Any) -> np.dtype | None:
    try:
        return np.dtype(raw) if isinstance(raw, str) else None
    except TypeError:
        return None


def _from_zarray(md: dict[str, Any]) -> ArrayMetadata:
    shape = ints(md["shape"], "shape")
    chunks = ints(md["chunks"], "chunks")
    comp = md.get("compressor")
    filters = md.get("filters") or []
    codec = "+".join([_v2_codec(f) for f in filters] + ["raw" if comp is None else _v2_codec(comp)])
    cid = "raw" if comp is None else str(comp.get("id"))
    compressor = None
    if not filters and md.get("order", "C") == "C":
        compressor = "raw" if comp is None else "zstd" if cid == "zstd" else None
    sep = md.get("dimension_separator") or "."
    signature = json.dumps([2, md["dtype"], md["chunks"], comp, md.get("filters"), md.get("order")])
    return ArrayMetadata(
        driver=Driver.ZARR,
        document=md,
        shape=shape,
        dtype=dtype_name(md["dtype"]),
        stored_dtype=_np_dtype(md["dtype"]),
        chunk_shape=chunks,
        read_chunk_shape=chunks,
        key_encoding=ChunkKeyEncoding(sep, "", "0"),
        codec=codec,
        compressor=compressor,
        codec_family=cid if cid in CHECKED_CODECS else "other",
        filtered=bool(filters),
        chunk_crc=False,
        shard_index=None,
        fill_value=md.get("fill_value"),
        signature=signature,
    )


def _from_zarr_json(md: dict[str, Any]) -> ArrayMetadata:
    shape = ints(md["shape"], "shape")
    chunks = ints(md["chunk_grid"]["configuration"]["chunk_shape"], "chunk_grid.configuration.chunk_shape")
    codecs = md.get("codecs", [])
    enc = md.get("chunk_key_encoding") or {"name": "default"}
    if isinstance(enc, str):
        enc = {"name": enc}
    default = enc.get("name") == "default"
    sep = (enc.get("configuration") or {}).get("separator", "/" if default else ".")
    keys = ChunkKeyEncoding(sep, "c", "c") if default else ChunkKeyEncoding(sep, "", "0")
    # Sharded as zarr-python's `ArrayV3Metadata.chunks` has it: the chain is the sharding codec alone.
    read_chunks, shard, inner = chunks, None, codecs
    if len(codecs) == 1 and codecs[0].get("name") == SHARDING:
        conf = codecs[0].get("configuration") or {}
        read_chunks = ints(conf["chunk_shape"], "codecs[0].configuration.chunk_shape")
        crc = any(c.get("name") == "crc32c" for c in conf.get("index_codecs", []))
        entries = math.prod(c // i for c, i in zip(chunks, read_chunks))
        shard = ShardIndex(conf.get("index_location", "end") == "end", crc, entries)
        inner = conf.get("codecs", [])
    compressor, endian = _streamed_chain(inner)
    stored = _np_dtype(md["data_type"])
    if stored is not None and stored.itemsize > 1:
        stored = stored.newbyteorder("<" if endian != "big" else ">")
    names = [c.get("name") for c in inner if c.get("name") not in ("bytes", "transpose")]
    crc = bool(names) and names[-1] == "crc32c"
    names = names[:-1] if crc else names
    family = "raw" if not names else names[0] if len(names) == 1 and names[0] in ("zstd", "blosc", "gzip") else "other"
    return ArrayMetadata(
        driver=Driver.ZARR3,
        document=md,
        shape=shape,
        dtype=dtype_name(md["data_type"]),
        stored_dtype=stored,
        chunk_shape=chunks,
        read_chunk_shape=read_chunks,
        key_encoding=keys,
        codec=v3_codec_names(codecs),
        compressor=compressor,
        codec_family=family,
        filtered=False,
        chunk_crc=crc,
        shard_index=shard,
        fill_value=md.get("fill_value"),
        signature=json.dumps([3, md["data_type"], chunks, codecs], sort_keys=True),
    )


def _from_n5(md: dict[str, Any]) -> ArrayMetadata:
    # n5 chunks carry a header of their own: neither streamed nor compared as bytes (signature '').
    chunks = tuple(int(s) for s in md["blockSize"])
    comp = md.get("compression") or {}
    return ArrayMetadata(
        driver=Driver.N5,
        document=md,
        shape=tuple(int(s) for s in md["dimensions"]),
        dtype=dtypes.normalize(str(md["dataType"])),
        stored_dtype=_np_dtype(md["dataType"]),
        chunk_shape=chunks,
        read_chunk_shape=chunks,
        key_encoding=ChunkKeyEncoding("/", "", None),
        codec=str(comp.get("type", "raw")),
        compressor=None,
        codec_family="raw",
        filtered=False,
        chunk_crc=False,
        shard_index=None,
        fill_value=None,
        signature="",
    )


def _streamed_chain(codecs: list[dict[str, Any]]) -> tuple[str | None, str]:
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


def _v2_codec(c: dict[str, Any]) -> str:
    name = str(c.get("id", "?"))
    detail = c.get("cname") or (f"level={c['level']}" if "level" in c else None)
    return f"{name}({detail})" if detail else name


def v3_codec_names(codecs: list[dict[str, Any]]) -> str:
    """A zarr v3 codec chain for people: `shard[zstd(level=1)]`, `blosc(lz4)`; the bytes codec is implied."""
    parts = []
    for c in codecs:
        name = c.get("name", "?")
        conf = c.get("configuration") or {}
        if name == SHARDING:
            parts.append("shard[" + v3_codec_names(conf.get("codecs", [])) + "]")
        elif name == "bytes":
            continue
        elif "cname" in conf:
            parts.append(f"{name}({conf['cname']})")
        elif "level" in conf:
            parts.append(f"{name}(level={conf['level']})")
        else:
            parts.append(name)
    return "+".join(parts) or "raw"
