"""One side of a pair: what its metadata says (chunk grid, stored format, sizes), and, once opened,
its tensorstore, its stored bytes and its fill value.

Planning needs only the metadata (`Side`); reading needs handles (`OpenSide`). Handles are opened when
a pair's first task is submitted and dropped when its last task has settled, so a run holds handles
for the pairs in flight, not for every leaf of the tree.
"""

from __future__ import annotations

import json
import math
import struct
import threading
import time
from typing import Any

import numpy as np
import tensorstore as ts
import zstandard

from ..datatypes import ArraySource, Leaf, format_path
from ..errors import StreamdiffError
from ..mapping.views import view_of
from ..plan import prefetch_depth as plan_prefetch_depth
from ..reader.storage import cached_context, describe
from .chunks import ChunkFormat, ItemSizes, RawStore
from .encoding import Encoding, audit_chunk_files, encoding_of

#: What reading and decoding stored data raises: tensorstore statuses (ValueError, TimeoutError), the
#: file system (OSError), corrupt bytes (zstd, struct, MissingChunk), our own refusals (StreamdiffError)
#: and an allocation a corrupt size asked for. The engine marks the leaf `error` on these; anything
#: else is a bug in streamdiff and keeps its traceback.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    StreamdiffError,
    zstandard.ZstdError,
    struct.error,
    MemoryError,
)


def prefetch_depth(leaf: Leaf) -> int:
    """Range reads kept in flight per streamed chunk of `leaf` (plan.prefetch_depth)."""
    return plan_prefetch_depth(leaf.source is None or leaf.source.is_local)


class Side:
    """One side of a pair as metadata: the stored array, a lazy view (rules), or an in-memory value
    (legacy aggregated leaves). Nothing is opened or read."""

    def __init__(self, leaf: Leaf):
        self.leaf = leaf
        #: The stored array this side reads directly; None for views and in-memory values.
        self.source: ArraySource | None = leaf.source if leaf.view is None else None
        self.stored = self.source is not None
        self.format: ChunkFormat | None = self.source.metadata if self.source is not None else None

    @property
    def stored_source(self) -> ArraySource:
        """The stored array, for the code paths that only run on stored sides (shortcut, streaming)."""
        if self.source is None:
            raise ValueError(f"{format_path(self.leaf.path)}: not a stored array (a view or a value)")
        return self.source

    @property
    def stored_format(self) -> ChunkFormat:
        """The stored chunk format, for the code paths that only run on stored sides."""
        if self.format is None:
            raise ValueError(f"{format_path(self.leaf.path)}: not a stored array (a view or a value)")
        return self.format

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
            bases = stored_bases(self.leaf)
            return max((math.prod(source_of(b).read_chunk_shape) * itemsize(b) for b in bases), default=0)
        return self.chunk_bytes() if big and not self.streamable else 0

    def row_bytes(self) -> int:
        """Decoded bytes of one row (first-axis index) of a chunk: what streaming holds at least."""
        return math.prod(self.known_chunks()[1:]) * itemsize(self.leaf)

    def chunk_bytes(self) -> int:
        if self.leaf.source is None:
            return 0  # in-memory values and views: never stream-decoded from stored bytes
        return math.prod(self.known_chunks()) * itemsize(self.leaf)

    def known_chunks(self) -> tuple[int, ...]:
        chunks = self.chunks
        if chunks is None:
            raise ValueError(f"{format_path(self.leaf.path)}: no chunk shape in its metadata")
        return chunks


class OpenSide:
    """A side with its handles: the tensorstore (opened asynchronously: the open of the next pair is
    in flight while this one is read), raw stored bytes on demand, and the fill value. With `cache`
    (a context holding a decoded-chunk cache, see SideContexts), the tensorstore is opened through
    it, so a chunk that several blocks cross is decoded once; raw bytes are read through `context`."""

    def __init__(
        self, side: Side, context: ts.Context, sizes: ItemSizes, items: ItemStores, cache: ts.Context | None = None
    ):
        self._item = items.hold(side.leaf, context)
        self.side = side
        self.leaf = side.leaf
        self.format = side.format
        self.context = context
        self._sizes = sizes
        self._items = items
        self._raw: RawStore | None = None
        self._lock = threading.Lock()
        self.encoding: Encoding | None = None if side.source is None else encoding_of(side.source, dtype_of(self.leaf))
        for base in stored_bases(self.leaf):  # a stored leaf is its own one base: its encoding is known
            enc = self.encoding if base is self.leaf and self.encoding is not None else None
            audit_chunk_files(source_of(base), enc or encoding_of(source_of(base), dtype_of(base)))
        self._opened = context if cache is None else cache
        self._store: ts.TensorStore | None = None

    @property
    def store(self) -> ts.TensorStore:
        """The tensorstore, opened at first use: a pair settled from its stored bytes (the
        equal-bytes shortcut) never opens one."""
        with self._lock:
            if self._store is None:
                if self.side.source is not None:
                    spec = self.side.source.spec
                    self._store = ts.open(spec, context=self._opened, read=True, assume_metadata=True).result()
                else:
                    self._store = view_of(self.leaf).open(self._opened)
            return self._store

    @property
    def stored_format(self) -> ChunkFormat:
        return self.side.stored_format

    @property
    def stored_encoding(self) -> Encoding:
        """The stored encoding, for the code paths that only run on stored sides (the shortcut)."""
        if self.encoding is None:
            raise ValueError(f"{format_path(self.leaf.path)}: not a stored array (a view or a value)")
        return self.encoding

    def read(self, start: tuple[int, ...], stop: tuple[int, ...]) -> ts.Future[np.ndarray]:
        box = tuple(slice(s, e) for s, e in zip(start, stop))
        return self.store[box].read() if box else self.store.read()

    @property
    def raw(self) -> RawStore:
        with self._lock:
            if self._raw is None:
                source = self.side.stored_source
                sizes = self._sizes.for_source(source, self.context)
                kv = self._items.kvstore(self.leaf, self._item)
                self._raw = RawStore(source, self.context, sizes, kv, self._items.since)
            return self._raw

    @property
    def fill(self) -> np.ndarray | None:
        """What a chunk that is not stored holds: the fill value where the store's writer skips
        fill-valued chunks (plain zarr / n5), None where a missing chunk is lost data (Orbax)."""
        if not self.side.stored_source.spec.get("fill_missing_data_reads", True):
            return None
        value = self.store.fill_value
        return np.zeros((), self.leaf.dtype) if value is None else np.asarray(value)


class SideContexts:
    """The contexts a run opens sides with: each side's own, and for a side whose plans read through
    a decoded-chunk cache (crossed chunk grids, plan.pair_grid), one cached context as large as the
    largest any plan asked for. One cache per side, shared by the run's pairs: a cache per pair would
    be sized and filled again for every leaf. Built in the process that reads (a Dask worker builds
    its own from its own contexts)."""

    def __init__(self, contexts: tuple[ts.Context, ts.Context], caches: tuple[int, int] = (0, 0)):
        self.contexts = contexts
        self.cached = tuple(cached_context(c, n) if n else None for c, n in zip(contexts, caches))

    def for_pair(self, wants: tuple[int, int]) -> tuple[tuple[ts.Context, ts.Context | None], ...]:
        """(context, cache or None) per side of a pair whose plan `wants` these bytes of cache per side
        (0: none): the arguments OpenSide takes after the side."""
        return tuple((ctx, cached if want else None) for ctx, cached, want in zip(self.contexts, self.cached, wants))


class ItemStores:
    """One open kvstore per OCDBT item for a whole run. tensorstore drops an OCDBT driver, and the
    manifest and B-tree nodes it cached, when its last handle goes: with stores opened per pair,
    every pair would read them again. Held per item, not per leaf; a leaf's stored bytes are read
    through its item's store under the leaf's path (`kvstore`), so no kvstore is opened per leaf."""

    def __init__(self) -> None:
        #: When the run began: stored bytes read through these stores trust what their kvstores
        #: cached since then (chunks.RawStore.fetch), so an OCDBT manifest is not read again per read.
        self.since = time.time()
        self._held: dict[tuple[int, str], ts.KvStore] = {}
        #: id of an item's spec without its path -> (that spec, its JSON): readers share one base
        #: spec per item, so an item is spelled once, not once per leaf.
        self._spelled: dict[tuple[int, str], tuple[dict[str, Any], str]] = {}  # (the item's spec, its JSON)
        self._lock = threading.Lock()

    def _item(self, kv: dict[str, Any], context: ts.Context) -> ts.KvStore:
        """The held store of the OCDBT item `kv` (a leaf's kvstore spec) names, opened at first use."""
        rest = tuple((k, v) for k, v in sorted(kv.items()) if k not in ("path", "base"))
        at = (id(kv["base"]), repr(rest))
        with self._lock:
            known = self._spelled.get(at)
            if known is None:
                item = {k: v for k, v in kv.items() if k != "path"}
                known = self._spelled[at] = (item, json.dumps(item, sort_keys=True))
            key = (id(context), known[1])
            store = self._held.get(key)
            if store is None:
                store = self._held[key] = ts.KvStore.open(known[0], context=context).result()
            return store

    def warm(self, base: Leaf, context: ts.Context) -> None:
        """Begin, on a thread of its own, a read through the held store of the OCDBT item `base` (a
        stored leaf, of `stored_bases`) is in (its own metadata key): on a remote store it loads the
        manifest and B-tree root that the first value read would otherwise wait for, round trip
        after round trip."""
        kv = source_of(base).spec["kvstore"]

        def read() -> None:
            try:
                self._item(kv, context).read(kv.get("path", "") + "zarr.json", staleness_bound=self.since).result()
            except Exception:  # noqa: BLE001 - a warm-up only; the real reads report real errors
                pass

        threading.Thread(target=read, daemon=True).start()

    def hold(self, leaf: Leaf, context: ts.Context) -> ts.KvStore | None:
        """Holds the item of every stored leaf `leaf` reads; returns the item store of `leaf` itself
        when it is a stored leaf in an OCDBT item (for `kvstore`), else None."""
        own = None
        for base in stored_bases(leaf):
            kv = source_of(base).spec["kvstore"]
            if kv.get("driver") == "ocdbt":
                store = self._item(kv, context)
                if base is leaf:
                    own = store
        return own

    @staticmethod
    def kvstore(leaf: Leaf, item: ts.KvStore | None) -> ts.KvStore | None:
        """The stored leaf's kvstore as its item's held store (`hold`'s answer) under the leaf's
        path; None when the leaf is not in an OCDBT item (its own kvstore is opened then)."""
        if item is None:
            return None
        path = source_of(leaf).spec["kvstore"].get("path", "")
        return item / path if path else item


def same_fill(a: Leaf, b: Leaf) -> bool:
    """Both stores read a chunk they do not hold as their fill value, and it is the same value
    (same dtype: the caller checked). Orbax sources refuse missing chunks: never equal."""
    sa, sb = source_of(a).spec, source_of(b).spec
    if not (sa.get("fill_missing_data_reads", True) and sb.get("fill_missing_data_reads", True)):
        return False
    fa, fb = sa["metadata"].get("fill_value"), sb["metadata"].get("fill_value")
    return fa is not None and json.dumps(fa) == json.dumps(fb)


def stored_bases(leaf: Leaf) -> list[Leaf]:
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


def source_of(leaf: Leaf) -> ArraySource:
    """The stored array of a leaf the caller knows is stored (a base of `stored_bases`, a planned pair)."""
    if leaf.source is None:
        raise ValueError(f"{format_path(leaf.path)}: no stored array")
    return leaf.source


def dtype_of(leaf: Leaf) -> str:
    """The dtype of a leaf whose values are read (arrays always have one in their metadata)."""
    if leaf.dtype is None:
        raise ValueError(f"{format_path(leaf.path)}: no dtype in its metadata")
    return leaf.dtype


def shape_of(leaf: Leaf) -> tuple[int, ...]:
    """The shape of a leaf whose values are read (arrays always have one in their metadata)."""
    if leaf.shape is None:
        raise ValueError(f"{format_path(leaf.path)}: no shape in its metadata")
    return leaf.shape


def itemsize(leaf: Leaf) -> int:
    return np.dtype(leaf.dtype).itemsize


def one_line(e: BaseException) -> str:
    """A task's failure as one line: storage statuses in words (see storage.describe), anything
    else by its first line, and a bare exception (no text) by its type rather than nothing."""
    return describe(e, with_object=True)
