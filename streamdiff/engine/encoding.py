"""What a stored chunk may look like for its codec, told from its size and first bytes, never decoded.

Two guards use it:

* **size**: a stored chunk can be only so much larger than its decoded size (every compressor
  streamdiff meets expands incompressible data by well under 1%). A chunk file far beyond that is
  corrupt, and reading it whole would break the memory budget, so it is an error on its leaf;
* **plausibility**: the equal-bytes shortcut settles a chunk without decoding it. Equal bytes on both
  sides prove equal values only if the bytes are a valid encoding, so before a chunk is settled its
  frame header must declare the chunk's decoded size (zstd frame content size, blosc `nbytes` and
  `cbytes`, gzip `ISIZE`), or carry the codec's header (zlib), or be exactly the decoded size (raw).
  A chunk that does not pass is decoded instead, and the decoder reports the corruption.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from ..datatypes import ArraySource
from ..errors import CorruptCheckpointError
from ..reader.formats.zarr_metadata import Driver
from ..reader.localfs import walk_files
from ..units import human_bytes

#: Slack allowed over the decoded size: n/8 + 64 KiB covers the worst-case expansion of zstd, blosc,
#: zlib, gzip, lz4 and bz2 (all under 1% plus a few hundred bytes of headers).
SLACK_BYTES = 64 << 10
#: Largest zstd block (RFC 8878 §3.1.1.2.3: Block_Maximum_Size is 128 KiB).
ZSTD_MAX_BLOCK = 128 << 10
#: Filters (zarr v2) may widen the dtype before compression (astype, fixedscaleoffset).
FILTER_FACTOR = 8
_ZSTD_MAGIC = 0xFD2FB528
_MISSING = 2**64 - 1


@dataclass(frozen=True)
class Encoding:
    """How one array's stored values are encoded, as far as sizes and headers go."""

    codec: str  # 'raw' | 'zstd' | 'blosc' | 'zlib' | 'gzip' | 'other'
    decoded: int  # bytes of one decoded (inner) chunk
    per_value: int  # inner chunks per stored value (1 unless sharded)
    index_bytes: int  # shard index size, 0 unless sharded
    index_at_end: bool
    crc: bool  # a zarr v3 crc32c codec appends 4 bytes to each (inner) chunk
    filtered: bool  # zarr v2 filters run before the compressor

    @property
    def max_stored(self) -> int:
        """Largest stored value (chunk or shard) a valid encoding can take."""
        one = self.decoded if self.codec == "raw" else self.decoded + self.decoded // 8 + SLACK_BYTES
        if self.filtered:
            one = FILTER_FACTOR * self.decoded + SLACK_BYTES
        return self.per_value * (one + 4 * self.crc) + self.index_bytes


def encoding_of(source: ArraySource, dtype: str) -> Encoding:
    """The encoding facts of a stored array, from its typed metadata."""
    md = source.metadata
    decoded = math.prod(md.read_chunk_shape) * np.dtype(dtype).itemsize
    index = md.shard_index
    if index is None:
        return Encoding(md.codec_family, decoded, 1, 0, True, md.chunk_crc, md.filtered)
    return Encoding(md.codec_family, decoded, index.entries, index.nbytes, index.at_end, md.chunk_crc, md.filtered)


def plausible(data: bytes, enc: Encoding) -> bool:
    """Whether `data`, one whole stored value, passes the cheap checks of its codec (module doc)."""
    if enc.index_bytes:
        if enc.per_value != 1 or len(data) < enc.index_bytes:
            return False
        index = data[-enc.index_bytes :] if enc.index_at_end else data[: enc.index_bytes]
        offset, nbytes = struct.unpack_from("<QQ", index)
        if offset == _MISSING or offset + nbytes > len(data):
            return False
        data = data[offset : offset + nbytes]
    if enc.crc:
        if len(data) < 4:
            return False
        data = data[:-4]
    return _frame_ok(data, len(data), enc)


def plausible_ends(head: bytes, tail: bytes, size: int, enc: Encoding) -> bool:
    """The same check for a value of `size` bytes too big to hold, from its first and last bytes."""
    start, end = 0, size
    if enc.index_bytes:
        index = tail[-enc.index_bytes :] if enc.index_at_end else head[: enc.index_bytes]
        if enc.per_value != 1 or len(index) < enc.index_bytes:
            return False
        offset, nbytes = struct.unpack_from("<QQ", index)
        if offset == _MISSING or offset + nbytes > size:
            return False
        start, end = offset, offset + nbytes
    end -= 4 * enc.crc
    if end < start or start >= len(head) and end > start:
        return False
    part = head[start:end]
    if len(part) < end - start and enc.codec == "gzip":
        return False  # its size is in the trailer: decode instead
    return _frame_ok(part, end - start, enc)


def _frame_ok(data: bytes, size: int, enc: Encoding) -> bool:
    if enc.filtered:
        return False
    n = enc.decoded
    if enc.codec == "raw":
        return size == n
    if enc.codec == "zstd":
        return _zstd_frame_ok(data, size, n)
    if enc.codec == "blosc":
        if len(data) < 16:
            return False
        nbytes, _, cbytes = struct.unpack_from("<III", data, 4)
        return bool(nbytes == n and cbytes == size)
    if enc.codec == "gzip":
        return size >= 18 and data[:3] == b"\x1f\x8b\x08" and bool(struct.unpack("<I", data[-4:])[0] == n % 2**32)
    if enc.codec == "zlib":
        return size >= 6 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
    return False


def _zstd_frame_ok(data: bytes, size: int, n: int) -> bool:
    """One zstd frame (RFC 8878 §3.1.1) whose header declares `n` content bytes and, when all `size`
    bytes are at hand, whose block headers chain to exactly the end: a truncated, extended or
    re-framed chunk fails. Block contents are jumped over, never decoded."""
    if len(data) < 6 or struct.unpack_from("<I", data)[0] != _ZSTD_MAGIC:
        return False
    fhd = data[4]
    if fhd & 0x08:  # reserved bit
        return False
    single = (fhd >> 5) & 1
    fcs_size = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
    if not fcs_size or len(data) < pos + fcs_size:
        return False  # no declared size: decode instead
    value = int.from_bytes(data[pos : pos + fcs_size], "little")
    if (value + 256 if fcs_size == 2 else value) != n:
        return False
    if len(data) < size:
        return True  # only the head of a big chunk: the header is all we check
    pos += fcs_size
    while True:
        if pos + 3 > size:
            return False
        header = int.from_bytes(data[pos : pos + 3], "little")
        last, kind, bsize = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3 or bsize > ZSTD_MAX_BLOCK:
            return False
        pos += 3 + (1 if kind == 1 else bsize)
        if last:
            break
    return pos + (4 if fhd & 0x04 else 0) == size


def audit_chunk_files(source: ArraySource, enc: Encoding) -> None:
    """Local per-array directories: every stored chunk must be a regular file (a FIFO would block
    tensorstore's read forever) no larger than its encoding allows (a grown chunk would be read
    whole). One directory walk, no file opened. OCDBT values are sized by the B-tree instead."""
    kv = source.spec["kvstore"]
    if kv.get("driver") != "file":
        return
    root = kv["path"].rstrip("/")
    md = source.metadata
    # n5 chunks carry a header of their own that the encoding's bound does not know: type check only.
    limit = enc.max_stored if md.driver is not Driver.N5 else None
    for key, size in walk_files(root, root, lambda rel: md.key_encoding.parse(rel, md.ndim) is not None):
        if limit is not None and size > limit:
            raise CorruptCheckpointError(
                f"{root}/{key}: {human_bytes(size)} on disk, more than a chunk of {enc.decoded * enc.per_value} "
                f"decoded bytes with codec {enc.codec} can take ({human_bytes(limit)}): corrupt chunk"
            )
