"""Metadata documents checked at the edge, before anything trusts their fields.

Every JSON document a reader parses (`.zarray`, `zarr.json`, `_METADATA`, `array_metadatas/*`,
`_strings.json`, `_CHECKPOINT_METADATA`) goes through `parse_json` (bounded nesting) and then the
checker of its kind, which looks at every field streamdiff or tensorstore will use: types, ranges,
lengths. A bad field is a `CorruptCheckpointError` naming the file and the field
("b/.zarray: `compressor` must be an object or null, got 1.5"), so no `AttributeError` or
`RecursionError` from a hostile document ever reaches the user, and tensorstore (C++) is never
handed a shape, dtype or codec chain it could choke on. Zarr documents that pass are then parsed by
tensorstore itself, as strictly as when it reads them from storage (`check_zarr_documents`), since
arrays are later opened with their metadata given in the spec, a lenient path.

Other readers (plain zarr, T5X) call the same checks on the documents they parse.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import tensorstore as ts

from ..errors import CorruptCheckpointError
from .formats.zarr_metadata import METADATA_FILE

K = TypeVar("K")

#: Metadata files larger than this are refused by size before they are read (a real `_METADATA` of a
#: 405B-parameter model with optimizer state is a few MB).
MAX_METADATA_BYTES = 64 << 20
#: The legacy msgpack `checkpoint` file may hold aggregated array values, so it gets more room.
MAX_MSGPACK_BYTES = 1 << 30
#: Deepest nesting of objects and arrays accepted in a metadata document (real ones nest < 10 deep).
MAX_JSON_DEPTH = 64
#: Largest element count of an array (tensorstore's index space ends at 2**62).
MAX_ELEMENTS = 1 << 62
#: Largest item size of a dtype streamdiff compares (complex256 is 32 bytes).
MAX_ITEMSIZE = 32
#: Nesting of sharding codecs (a shard of shards of ...) accepted.
MAX_CODEC_DEPTH = 4


def parse_json(raw: bytes, where: str) -> Any:
    """JSON from `raw`, refused when unparsable or nested deeper than MAX_JSON_DEPTH."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise CorruptCheckpointError(f"{where}: JSON nested too deeply (limit {MAX_JSON_DEPTH} levels)") from None
    except ValueError as e:  # also UnicodeDecodeError and the int-digits limit
        raise CorruptCheckpointError(f"{where}: unreadable JSON ({_first_line(e)})") from e
    if _too_deep(doc, MAX_JSON_DEPTH):
        raise CorruptCheckpointError(f"{where}: JSON nested too deeply (limit {MAX_JSON_DEPTH} levels)")
    return doc


def text_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool | None:
    """Whether the JSON text `raw` nests objects and arrays deeper than `limit`, read from the text
    itself, before (or instead of) building any object: None when `raw` is not ASCII (another
    encoding could hide a bracket in a character's bytes). Exact for valid JSON: a backslash pair
    or an escaped quote is dropped first, then every quote left opens or closes a string, and only
    the brackets outside strings count. Worked in slices, so a huge document costs bounded memory."""
    if not raw.isascii():
        return None
    if b"\\" in raw:  # escapes pair from the left, as a JSON reader reads them
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Only quotes and brackets matter: the rest goes first (one pass in C), then numpy on what is left.
    text = np.frombuffer(raw.translate(None, _NOT_STRUCTURE), np.uint8)
    depth, in_string = 0, 0
    for start in range(0, len(text), _SLICE):
        part = text[start : start + _SLICE]
        # Odd running count of quotes (that of earlier slices included): inside a string. The
        # count wraps in uint8, its parity does not.
        quoted = (np.cumsum(part == _QUOTE, dtype=np.uint8) + in_string) & 1
        steps = _BRACKET_STEP[part]
        steps[quoted.view(bool)] = 0
        levels = np.cumsum(steps, dtype=np.int64)
        if len(levels) and depth + int(levels.max()) > limit:
            return True
        if len(levels):
            depth += int(levels[-1])
            in_string = int(quoted[-1])
    return False


_SLICE = 1 << 18  # small enough for the heap to reuse its buffers slice after slice
_QUOTE = ord('"')
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
#: +1 for an opening bracket, -1 for a closing one, 0 for any other byte.
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def _too_deep(doc: Any, limit: int) -> bool:
    """Whether objects and arrays nest deeper than `limit`, one level at a time (a huge flat
    document costs one pass over its containers)."""
    level = [doc] if isinstance(doc, (dict, list)) else []
    depth = 1
    while level:
        if depth > limit:
            return True
        below = []
        for node in level:
            for c in node.values() if isinstance(node, dict) else node:
                if isinstance(c, (dict, list)):
                    below.append(c)
        level = below
        depth += 1
    return False


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _show(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (dict, list, str, bool, type(None))) else repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


class _Doc:
    """One document being checked: `fail` names the file and the field."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, must: str, got: Any) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{self.where}: `{field}` must be {must}, got {_show(got)}")

    def obj(self, v: Any, field: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(field, "an object", v)
        return v

    def opt_obj(self, v: Any, field: str) -> dict[str, Any]:
        if v is not None and not isinstance(v, dict):
            raise self.fail(field, "an object or null", v)
        return v or {}

    def lst(self, v: Any, field: str) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(field, "a list", v)
        return v

    def string(self, v: Any, field: str) -> str:
        if not isinstance(v, str):
            raise self.fail(field, "a string", v)
        return v

    def dims(self, v: Any, field: str, minimum: int) -> list[int]:
        what = "a list of integers >= " + str(minimum)
        if not isinstance(v, list) or not all(_is_int(x) and x >= minimum for x in v):
            raise self.fail(field, what, v)
        if len(v) > 32:
            raise self.fail(field, "at most 32 dimensions long", v)
        if any(x > MAX_ELEMENTS for x in v) or math.prod(v) > MAX_ELEMENTS:
            raise self.fail(field, f"at most 2**62 elements in all, {what}", v)
        return v

    def dtype(self, v: Any, field: str) -> None:
        if isinstance(v, list):
            raise self.fail(field, "a plain dtype (structured dtypes are not supported)", v)
        name = self.string(v, field)
        try:
            dt = np.dtype(name)
        except (TypeError, ValueError, SyntaxError):
            raise self.fail(field, "a known dtype", v) from None
        if dt.itemsize > MAX_ITEMSIZE or dt.itemsize == 0 or dt.kind in "OSUMm" or dt.name.startswith("void"):
            raise self.fail(field, "a numeric dtype", v)

    def scalar(self, v: Any, field: str, allow_pair: bool = False) -> None:
        ok = v is None or isinstance(v, (bool, int, float, str))
        if allow_pair and isinstance(v, list) and len(v) == 2:
            ok = all(isinstance(x, (int, float, str)) and not isinstance(x, bool) for x in v)
        if not ok:
            raise self.fail(field, "a number, a string or null", v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_zarray(md: Any, where: str) -> None:
    """A zarr v2 `.zarray` document."""
    d = _Doc(where)
    d.obj(md, "(document)")
    if md.get("zarr_format", 2) != 2:
        raise d.fail("zarr_format", "2", md.get("zarr_format"))
    for key in ("shape", "chunks", "dtype", "compressor", "fill_value", "order", "filters"):  # required (v2 spec)
        if key not in md:
            raise CorruptCheckpointError(f"{where}: `{key}` is missing")
    shape = d.dims(md["shape"], "shape", 0)
    chunks = d.dims(md["chunks"], "chunks", 1)
    if len(chunks) != len(shape):
        raise d.fail("chunks", f"{len(shape)} long like `shape`", chunks)
    d.dtype(md["dtype"], "dtype")
    if d.opt_obj(md.get("compressor"), "compressor"):
        d.string(md["compressor"].get("id"), "compressor.id")
    elif md.get("compressor") is not None:
        raise d.fail("compressor.id", "a string", None)
    filters = md.get("filters")
    if filters is not None:
        for i, f in enumerate(d.lst(filters, "filters")):
            d.obj(f, f"filters[{i}]")
            d.string(f.get("id"), f"filters[{i}].id")
    if md.get("order", "C") not in ("C", "F"):
        raise d.fail("order", '"C" or "F"', md.get("order"))
    if md.get("dimension_separator", ".") not in (".", "/"):
        raise d.fail("dimension_separator", '"." or "/"', md.get("dimension_separator"))
    d.scalar(md.get("fill_value"), "fill_value")


def check_zarr_json(md: Any, where: str) -> None:
    """A zarr v3 `zarr.json` document of an array."""
    d = _Doc(where)
    d.obj(md, "(document)")
    if md.get("zarr_format") != 3:
        raise d.fail("zarr_format", "3", md.get("zarr_format"))
    if md.get("node_type", "array") != "array":
        raise d.fail("node_type", '"array"', md.get("node_type"))
    for key in ("shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs"):  # required (v3 spec)
        if key not in md:
            raise CorruptCheckpointError(f"{where}: `{key}` is missing")
    shape = d.dims(md["shape"], "shape", 0)
    d.dtype(md["data_type"], "data_type")
    grid = d.obj(md["chunk_grid"], "chunk_grid")
    if grid.get("name") != "regular":
        raise d.fail("chunk_grid.name", '"regular"', grid.get("name"))
    conf = d.obj(grid.get("configuration"), "chunk_grid.configuration")
    chunks = d.dims(conf.get("chunk_shape"), "chunk_grid.configuration.chunk_shape", 1)
    if len(chunks) != len(shape):
        raise d.fail("chunk_grid.configuration.chunk_shape", f"{len(shape)} long like `shape`", chunks)
    enc = d.obj(md["chunk_key_encoding"], "chunk_key_encoding")
    if enc.get("name") not in ("default", "v2"):
        raise d.fail("chunk_key_encoding.name", '"default" or "v2"', enc.get("name"))
    sep = d.opt_obj(enc.get("configuration"), "chunk_key_encoding.configuration").get("separator", "/")
    if sep not in ("/", "."):
        raise d.fail("chunk_key_encoding.configuration.separator", '"/" or "."', sep)
    _check_codecs(d, md["codecs"], "codecs", chunks, 0)
    d.scalar(md.get("fill_value"), "fill_value", allow_pair=True)
    names = md.get("dimension_names")
    if names is not None and not (
        isinstance(names, list) and len(names) == len(shape) and all(n is None or isinstance(n, str) for n in names)
    ):
        raise d.fail("dimension_names", "null or a list of strings, one per dimension", names)
    d.opt_obj(md.get("attributes"), "attributes")
    if md.get("storage_transformers") not in (None, []):
        raise d.fail("storage_transformers", "empty", md.get("storage_transformers"))


def _check_codecs(d: _Doc, codecs: Any, field: str, chunks: list[int], depth: int) -> None:
    if depth > MAX_CODEC_DEPTH:
        raise d.fail(field, f"nested at most {MAX_CODEC_DEPTH} shards deep", "...")
    if not d.lst(codecs, field):
        raise d.fail(field, "a non-empty list", codecs)
    for i, c in enumerate(codecs):
        at = f"{field}[{i}]"
        d.obj(c, at)
        name = d.string(c.get("name"), at + ".name")
        conf = d.opt_obj(c.get("configuration"), at + ".configuration")
        if name != "sharding_indexed":
            continue
        inner = d.dims(conf.get("chunk_shape"), at + ".configuration.chunk_shape", 1)
        if len(inner) != len(chunks) or any(o % n for o, n in zip(chunks, inner)):
            raise d.fail(at + ".configuration.chunk_shape", f"a divisor of the chunk shape {chunks}", inner)
        _check_codecs(d, conf.get("codecs"), at + ".configuration.codecs", inner, depth + 1)
        if "index_codecs" in conf:
            _check_codecs(d, conf["index_codecs"], at + ".configuration.index_codecs", inner, depth + 1)
        if conf.get("index_location", "end") not in ("start", "end"):
            raise d.fail(at + ".configuration.index_location", '"start" or "end"', conf.get("index_location"))


def check_tree_metadata(doc: Any, where: str) -> None:
    """An orbax `_METADATA` document: the fields the tree is built from."""
    d = _Doc(where)
    if not isinstance(doc, dict) or not isinstance(doc.get("tree_metadata"), dict):
        raise CorruptCheckpointError(f"{where}: no tree_metadata")
    for name, entry in doc["tree_metadata"].items():
        if _plain_entry(entry):
            continue  # the common shape, checked without building field names; else the full check
        at = f"tree_metadata[{_show(name)}]"
        d.obj(entry, at)
        for i, k in enumerate(d.lst(entry.get("key_metadata"), at + ".key_metadata")):
            d.obj(k, f"{at}.key_metadata[{i}]")
            if not isinstance(k.get("key"), (str, int)) or isinstance(k.get("key"), bool):
                raise d.fail(f"{at}.key_metadata[{i}].key", "a string or an integer", k.get("key"))
        vm = d.opt_obj(entry.get("value_metadata"), at + ".value_metadata")
        if "value_type" in vm:
            d.string(vm["value_type"], at + ".value_metadata.value_type")
        if not isinstance(vm.get("skip_deserialize", False), bool):
            raise d.fail(at + ".value_metadata.skip_deserialize", "true or false", vm["skip_deserialize"])


def _plain_entry(entry: Any) -> bool:
    """True when a `tree_metadata` entry passes every check of `check_tree_metadata` (which then
    runs, for an entry that does not, to say which field is wrong)."""
    if type(entry) is not dict:
        return False
    keys = entry.get("key_metadata")
    if type(keys) is not list:
        return False
    for k in keys:
        if type(k) is not dict or type(k.get("key")) not in (str, int):
            return False
    vm = entry.get("value_metadata")
    if vm is None:
        return True
    return (
        type(vm) is dict and type(vm.get("value_type", "")) is str and type(vm.get("skip_deserialize", False)) is bool
    )


def check_array_metadatas(doc: Any, where: str) -> None:
    """An orbax `array_metadatas/process_N` document (PRNG key implementations)."""
    d = _Doc(where)
    d.obj(doc, "(document)")
    for i, entry in enumerate(d.lst(doc.get("array_metadatas", []), "array_metadatas")):
        at = f"array_metadatas[{i}]"
        d.obj(entry, at)
        am = d.obj(entry.get("array_metadata", entry), at + ".array_metadata")
        if "param_name" in am:
            d.string(am["param_name"], at + ".param_name")
        ext = d.opt_obj(am.get("ext_metadata"), at + ".ext_metadata")
        impl = ext.get("random_key_impl")
        if impl is not None:
            d.string(impl, at + ".ext_metadata.random_key_impl")


def check_strings(doc: Any, where: str) -> None:
    """`_strings.json`: one object of name -> string."""
    _Doc(where).obj(doc, "(document)")


class _StrictParser:
    """tensorstore's own parse of zarr metadata documents, as it does when it reads one from storage.

    Arrays are opened with their metadata passed in the spec (no second read per array), and that path
    is lenient: missing fields get defaults. A document tensorstore would refuse to read from storage
    (a zarr v3 chain without an array->bytes codec, a gzip level out of range ...) is a checkpoint the
    writer's library cannot restore, so it must not be compared as if it were valid. Each document is
    written to an in-memory store under a fresh prefix and opened from there, all of a batch at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ctx: ts.Context | None = None
        self._kv: ts.KvStore | None = None
        self._n = itertools.count()

    def _store(self) -> tuple[ts.Context, ts.KvStore]:
        with self._lock:
            if self._kv is None:
                self._ctx = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
                self._kv = ts.KvStore.open({"driver": "memory"}, context=self._ctx).result()
            assert self._ctx is not None  # set with _kv
            return self._ctx, self._kv

    def refusals(self, docs: list[tuple[Any, dict[str, Any], int]]) -> dict[Any, str]:
        """key -> tensorstore's reason, for the (key, metadata, zarr_format) it refuses."""
        ctx, kv = self._store()
        batch = f"{next(self._n)}/"
        try:
            writes = [
                kv.write(f"{batch}{i}/{METADATA_FILE[fmt]}", json.dumps(md).encode())
                for i, (_, md, fmt) in enumerate(docs)
            ]
            for w in writes:
                w.result()
            opens = [
                ts.open(
                    {
                        "driver": "zarr" if fmt == 2 else "zarr3",
                        "kvstore": {"driver": "memory", "path": f"{batch}{i}/"},
                    },
                    context=ctx,
                    open=True,
                )
                for i, (_, _, fmt) in enumerate(docs)
            ]
            out = {}
            for (key, _, fmt), f in zip(docs, opens):
                try:
                    f.result()
                except Exception as e:  # noqa: BLE001 - tensorstore reports any refusal as ValueError/OSError
                    out[key] = _ts_reason(e, METADATA_FILE[fmt])
            return out
        finally:
            kv.delete_range(ts.KvStore.KeyRange(batch, batch[:-1] + "0")).result()


def _ts_reason(e: BaseException, name: str) -> str:
    text = _first_line(e)
    text = text.split(" [tensorstore_spec=")[0]
    text = re.sub(r'^[A-Z_]+: Error opening "zarr3?" driver: ', "", text)
    return text.replace(f'Error reading "{name}": ', "")


_strict = _StrictParser()


def check_zarr_documents(docs: dict[K, tuple[int, Any]], where: Callable[[K], str]) -> dict[K, str]:
    """key -> why, for each (zarr_format, document) that fails `check_zarray` / `check_zarr_json` or
    that tensorstore would not read from storage (see _StrictParser); the rest passed. `where(key)`
    names the key's file in the messages (asked only for the keys refused).

    Leaves of one model share a few documents (the reader parses each distinct one once and shares
    the object): each distinct document is checked once, its verdict given to every key using it."""
    errors: dict[K, str] = {}
    users: dict[tuple[int, int], list[K]] = {}
    for key, (fmt, md) in docs.items():
        users.setdefault((fmt, id(md)), []).append(key)
    ok = []
    for (fmt, _), keys in users.items():
        check = check_zarray if fmt == 2 else check_zarr_json
        md = docs[keys[0]][1]
        try:
            check(md, where(keys[0]))
        except CorruptCheckpointError:
            for key in keys:  # the message names each key's own file
                try:
                    check(md, where(key))
                except CorruptCheckpointError as e:
                    errors[key] = str(e)
            continue
        ok.append((keys[0], md, fmt))
    for first, why in (_strict.refusals(ok) if ok else {}).items():
        for key in users[(docs[first][0], id(docs[first][1]))]:
            errors[key] = f"{where(key)}: tensorstore cannot read it ({why})"
    return errors
