"""msgpack checkpoint files: orbax's legacy `checkpoint` file, T5X's `checkpoint` file, flax msgpack files.

All three are flax's msgpack encoding of a state dict: maps for dicts, arrays for lists, ext types 1
ndarray, 2 complex, 3 numpy scalar (4 tuple in orbax); arrays are msgpack((shape, dtype name, C bytes));
flax splits arrays over 1 GiB into `{"__msgpack_chunked_array__": true, "shape", "chunks"}` maps.
What a leaf can be:

* the value itself (an "aggregated" leaf in orbax, every leaf of a flax file);
* `PLACEHOLDER://<param name>` (`AGGREGATED://` in very old orbax): stored in tensorstore under that
  name (orbax <= 0.5.15);
* a tensorstore spec (T5X): `{"driver": "zarr", "dtype": ..., "kvstore": {"driver": "gfile" | "file" |
  "gcs", "path": "state.param_states.kernel/"}, "metadata": {...}}`, the array stored as a zarr v2
  folder at that path relative to the checkpoint directory. The spec carries the metadata, so the
  folder needs no `.zarray` (T5X's own test checkpoints have none).

A flax msgpack file is read whole into memory and each array copied out of it once (tensorstore
can only reference aligned memory; msgpack offsets are arbitrary), after which the file's buffer is
freed: a side holds about its file size, and up to twice that while it is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ...datatypes import KeyPath, Kind, Leaf, Tree
from . import dtypes  # noqa: F401  (ml_dtypes names for np.dtype)

PLACEHOLDER_PREFIXES = ("PLACEHOLDER://", "AGGREGATED://")
CHUNKED = "__msgpack_chunked_array__"
#: Empty nodes and their orbax value_type names.
EMPTY_TYPES = {type(None): "None", dict: "Dict", list: "List", tuple: "Tuple"}
#: kvstore drivers T5X writes; each means "this path, relative to the checkpoint, on its own storage".
T5X_KVSTORES = ("gfile", "file", "gcs")


@dataclass(frozen=True)
class TsSpec:
    """A tensorstore spec stored as a leaf (T5X): where the array is and its zarr metadata."""

    driver: str  # tensorstore driver ('zarr' for every T5X checkpoint)
    kvstore: str  # kvstore driver as written ('gfile', 'file', 'gcs')
    path: str  # relative to the checkpoint directory, without trailing '/'
    dtype: str | None  # numpy / ml_dtypes name from the spec
    metadata: dict[str, Any] = field(hash=False, compare=False)

    def unsupported(self) -> str | None:
        """Why this spec cannot be read as a T5X array, or None when it can."""
        if self.driver != "zarr":
            return f"tensorstore spec with driver {self.driver!r} (only T5X's 'zarr' is read)"
        if self.kvstore not in T5X_KVSTORES:
            return f"tensorstore spec on kvstore {self.kvstore!r} (only paths relative to the checkpoint are read)"
        if not self.path or self.path.startswith("/") or ".." in self.path.split("/") or "://" in self.path:
            return f"tensorstore spec path {self.path!r} is not relative to the checkpoint directory"
        return None

    def zarr_metadata(self) -> dict[str, Any]:
        """A complete `.zarray` from the spec: what tensorstore writes when it creates the array."""
        md = dict(self.metadata)
        name = self.dtype or md.get("dtype")
        dt = np.dtype(name)
        # zarr v2 spells standard types as typestrs and ml_dtypes (bfloat16, float8_*) by name.
        md["dtype"] = dt.str if dt.kind in "biufcM" else dt.name
        md.setdefault("zarr_format", 2)
        md.setdefault("order", "C")
        md.setdefault("fill_value", None)
        md.setdefault("filters", None)
        md["shape"] = [int(s) for s in md["shape"]]
        md["chunks"] = [int(c) for c in md.get("chunks", md["shape"])]
        return md


@dataclass(frozen=True)
class MsgpackEntry:
    keys: tuple[str, ...]
    containers: tuple[str, ...]  # container type of each level above the value: 'dict', 'list', 'tuple'
    placeholder: str | None  # param name the value is stored under, or None when inline
    value: Any  # inline value (ndarray, python scalar, str) or None / {} / [] / () for empty nodes
    spec: TsSpec | None = None  # T5X: the array is stored where this tensorstore spec says


class _Reader:
    """msgpack over a memoryview of the whole file: payloads are sliced, not copied (msgpack-python
    copies every ext payload, then its inner buffer, before the array is made)."""

    _FIXED = {0xC0: None, 0xC2: False, 0xC3: True}

    def __init__(self, buf: memoryview, views: bool = False):
        self.buf = buf
        self.pos = 0
        self.views = views  # bin as memoryview (inside an ndarray ext) or as bytes

    def _take(self, n: int) -> memoryview:
        start, self.pos = self.pos, self.pos + n
        if self.pos > len(self.buf):
            raise ValueError("truncated msgpack data")
        return self.buf[start : self.pos]

    def _uint(self, n: int) -> int:
        return int.from_bytes(self._take(n), "big")

    def value(self) -> Any:
        b = self._take(1)[0]
        if b <= 0x7F or b >= 0xE0:
            return b if b <= 0x7F else b - 0x100
        if b <= 0x8F:
            return self._map(b & 0x0F)
        if b <= 0x9F:
            return [self.value() for _ in range(b & 0x0F)]
        if b <= 0xBF:
            return str(self._take(b & 0x1F), "utf-8")
        if b in self._FIXED:
            return self._FIXED[b]
        if 0xC4 <= b <= 0xC6:  # bin 8/16/32
            view = self._take(self._uint(1 << (b - 0xC4)))
            return view if self.views else bytes(view)
        if 0xC7 <= b <= 0xC9:  # ext 8/16/32
            n = self._uint(1 << (b - 0xC7))
            return self._ext(self._take(1).cast("b")[0], self._take(n))
        if b == 0xCA:
            return float(np.frombuffer(self._take(4), ">f4")[0])
        if b == 0xCB:
            return float(np.frombuffer(self._take(8), ">f8")[0])
        if 0xCC <= b <= 0xCF:
            return self._uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            return int.from_bytes(self._take(1 << (b - 0xD0)), "big", signed=True)
        if 0xD4 <= b <= 0xD8:  # fixext 1/2/4/8/16
            code = self._take(1).cast("b")[0]
            return self._ext(code, self._take(1 << (b - 0xD4)))
        if 0xD9 <= b <= 0xDB:
            return str(self._take(self._uint(1 << (b - 0xD9))), "utf-8")
        if b in (0xDC, 0xDD):
            return [self.value() for _ in range(self._uint(2 if b == 0xDC else 4))]
        if b in (0xDE, 0xDF):
            return self._map(self._uint(2 if b == 0xDE else 4))
        raise ValueError(f"invalid msgpack byte 0x{b:02x} at offset {self.pos - 1}")

    def _map(self, n: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for _ in range(n):
            k = self.value()
            if k in out:  # a later value would silently replace the first: both are stored
                raise ValueError(f"key {k!r} appears twice in one map")
            out[k] = self.value()
        return out

    @staticmethod
    def _ext(code: int, data: memoryview) -> Any:
        if code in (1, 3):  # ndarray / numpy scalar: msgpack((shape, dtype name, C-order bytes))
            shape, name, buf = _Reader(data, views=True).value()
            name = bytes(name).decode() if not isinstance(name, str) else name
            # A copy: tensorstore can only reference aligned memory (msgpack offsets are arbitrary),
            # and once every array is its own copy the file's buffer is freed.
            arr = np.frombuffer(buf, dtype=np.dtype(name)).reshape(shape).copy()
            return arr if code == 1 else arr[()]
        if code == 2:
            re, im = _Reader(data).value()
            return complex(re, im)
        if code == 4:  # orbax: tuple
            return tuple(_Reader(data).value())
        raise ValueError(f"unknown msgpack ext type {code}")


def decode(raw: bytes) -> Any:
    """The decoded file; arrays are copies, so `raw` can be freed."""
    r = _Reader(memoryview(raw))
    out = r.value()
    if r.pos != len(raw):
        raise ValueError(f"{len(raw) - r.pos} bytes after the msgpack object")
    return out


def ts_spec(node: Any) -> TsSpec | None:
    """The node as a tensorstore spec, or None. T5X's own test: a dict with driver, kvstore, metadata."""
    if not isinstance(node, dict) or not {"driver", "kvstore", "metadata"} <= node.keys():
        return None
    kv = node["kvstore"] if isinstance(node["kvstore"], dict) else {}
    # tensorstore < 0.1.14 specs (and T5X's gcs form) keep the path beside the kvstore.
    path = kv.get("path", node.get("path", ""))
    md = node["metadata"] if isinstance(node["metadata"], dict) else {}
    return TsSpec(str(node["driver"]), str(kv.get("driver", "?")), str(path).strip("/"), node.get("dtype"), md)


def _unchunk(node: dict[str, Any]) -> np.ndarray:
    shape = tuple(node["shape"][str(i)] for i in range(len(node["shape"])))
    parts = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
    return np.concatenate(parts).reshape(shape)


def entries(raw: bytes) -> list[MsgpackEntry]:
    """Flatten the decoded file into leaves, in file order."""
    out: list[MsgpackEntry] = []

    def walk(node: Any, keys: tuple[str, ...], types: tuple[str, ...]) -> None:
        spec = ts_spec(node)
        if spec is not None:
            out.append(MsgpackEntry(keys, types, None, None, spec))
        elif isinstance(node, dict) and node.get(CHUNKED) is True:
            out.append(MsgpackEntry(keys, types, None, _unchunk(node)))
        elif isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, keys + (str(k),), types + ("dict",))
        elif isinstance(node, (list, tuple)) and node:
            for i, v in enumerate(node):
                walk(v, keys + (str(i),), types + (type(node).__name__,))
        elif isinstance(node, str) and node.startswith(PLACEHOLDER_PREFIXES):
            out.append(MsgpackEntry(keys, types, node.split("://", 1)[1], None))
        else:
            out.append(MsgpackEntry(keys, types, None, node))

    walk(decode(raw), (), ())
    return out


def inline_leaf(keys: KeyPath, v: Any, value_type: str) -> Leaf:
    """A value held in the msgpack file itself: compared from memory."""
    if isinstance(v, str):
        return Leaf(keys, Kind.STRING, "string", value=v)
    if type(v) in EMPTY_TYPES and not v:
        return Leaf(keys, Kind.EMPTY, EMPTY_TYPES[type(v)])
    arr = np.asarray(v)
    if arr.dtype.kind in "OUS":
        return Leaf(keys, Kind.ARRAY, value_type, error=f"unsupported inline value of type {type(v).__name__}")
    kind = Kind.ARRAY if isinstance(v, np.ndarray) and arr.ndim else Kind.SCALAR
    return Leaf(keys, kind, value_type, shape=arr.shape, dtype=arr.dtype.name, value=arr)


def is_msgpack_map(head: bytes) -> bool:
    """A flax state dict starts with a msgpack map header (fixmap, map16, map32)."""
    return bool(head) and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))


def file_tree(raw: bytes, location: str) -> Tree:
    """A flax msgpack file (`flax.serialization.to_bytes`, `flax.training.checkpoints`) as a tree.

    Each leaf records its container chain (`Leaf.containers`): a msgpack array and a map keyed "0", "1"
    flatten to the same paths. flax's `to_state_dict` turns every list into such a map before writing,
    so two files of one model written by flax have the same chains."""
    leaves: dict[KeyPath, Leaf] = {}
    for e in entries(raw):
        if e.spec is not None:
            why = "a tensorstore spec in a flax file (T5X arrays are read from a checkpoint directory)"
            leaf = Leaf(e.keys, Kind.ARRAY, "tensorstore_spec", not_compared=why)
        elif e.placeholder is not None:
            leaf = Leaf(e.keys, Kind.ARRAY, "placeholder", error=f"refers to stored array {e.placeholder!r}")
        else:
            leaf = inline_leaf(e.keys, e.value, "flax msgpack")
        leaves[e.keys] = replace(leaf, containers=e.containers)
    return Tree(location=location, leaves=leaves, layout="flax msgpack file (read whole into memory)")
