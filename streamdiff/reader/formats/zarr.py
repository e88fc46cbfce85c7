"""Plain Zarr v2/v3 and n5 hierarchies (zarr-python, xarray, tensorstore, jax array_serialization).

A store is read from one listing plus one concurrent batch of small metadata reads: every key that
names a node's metadata (`.zarray`, `.zgroup`, `.zattrs`, `zarr.json`, n5 `attributes.json`)
defines a node at its folder's path. The listing is the truth: consolidated metadata (`.zmetadata`,
v3 `consolidated_metadata`) is a cache that a later write may have left stale, so it is not trusted
for what exists. Each node becomes leaves:

* an array: one leaf at its group path split on '/' (`model/layer_0/kernel`), opened with
  tensorstore (`zarr`, `zarr3` or `n5` driver). A chunk that is not stored is the fill value:
  zarr-python and tensorstore skip chunks equal to it (unlike Orbax, where a missing chunk is lost);
* its attributes (`.zattrs`, `attributes`, n5 user attributes): one `json` leaf per top-level key
  at `<node>/.attrs/<key>`, compared exactly; v3 `dimension_names` at `<node>/.dimension_names`;
* a group holding nothing at all: an `empty` leaf, so a group present on one side only shows up;
* every stored file the reader does not interpret: a `not_compared` leaf (one per file, one per folder
  without zarr metadata), since exit 0 promises every stored value was compared.

zarr-python validates each array's metadata (`ArrayV2Metadata`, `ArrayV3Metadata`); the facts
the comparison uses come from `zarr_metadata.ArrayMetadata`, like every other reader's. dtype names
come from `dtypes.normalize` alone, which also knows the ml_dtypes (bfloat16, int4, float8_*)
zarr-python does not: for those the structure is validated with a stand-in dtype of the same width.
zarr-python also decodes the small non-numeric arrays (strings, objects) that tensorstore cannot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tensorstore as ts

from ...datatypes import ArraySource, KeyPath, Kind, Leaf, Tree, format_path
from ...errors import CorruptCheckpointError, StreamdiffError
from ..storage import META_CACHE, Dir, storage_error
from ..validate import parse_json
from . import zarr_metadata
from .zarr_metadata import ML_DTYPES, ArrayMetadata, Driver

#: File names that make a folder a zarr / n5 node.
NODE_FILES = (".zarray", ".zgroup", ".zattrs", "zarr.json", "attributes.json")
#: Files whose presence in a folder means "a zarr or n5 store starts here".
MARKERS = frozenset(NODE_FILES + (".zmetadata",))
#: n5 array metadata keys (tensorstore's n5 driver); the other keys of attributes.json are user attributes.
N5_ARRAY_KEYS = ("dimensions", "blockSize", "dataType", "compression")
ATTRS = ".attrs"
DIMENSION_NAMES = ".dimension_names"
NOT_NUMERIC = "dtype not read by tensorstore:"
#: Arrays of strings, objects or datetimes (xarray coordinates) are read whole with zarr-python and
#: compared as JSON values, up to this many elements; bigger ones are not compared (exit 2).
SMALL_VALUES_MAX_ELEMENTS = 100_000


def is_node(children: dict[str, str]) -> bool:
    """A folder holding zarr / n5 node metadata (or consolidated metadata)."""
    return any(children.get(n) == "file" for n in MARKERS)


# ------------------------------------------------------------------------------- typed metadata


def parse_array(name: str, doc: dict[str, Any]) -> ArrayMetadata:
    """Metadata document `name` of one array -> ArrayMetadata, its document as tensorstore gets it.
    zarr-python validates zarr documents first. Raises ValueError / KeyError / TypeError."""
    if name == "attributes.json":
        return zarr_metadata.parse(Driver.N5, {k: doc[k] for k in N5_ARRAY_KEYS if k in doc})
    v2 = name == ".zarray"
    field = "dtype" if v2 else "data_type"
    dtype = zarr_metadata.dtype_name(doc[field])
    from zarr.core.metadata import ArrayV2Metadata, ArrayV3Metadata  # here: importing zarr-python takes a second

    validate = ArrayV2Metadata.from_dict if v2 else ArrayV3Metadata.from_dict
    try:
        validate(dict(doc))
    except ValueError:
        if dtype not in ML_DTYPES:
            raise
        # zarr-python has no ml_dtypes: validate the rest with an unsigned int of the same width.
        width = np.dtype(dtype).itemsize
        standin = dict(doc, fill_value=0)
        standin[field] = np.dtype(f"<u{width}").str if v2 else f"uint{8 * width}"
        validate(standin)
    shape = doc.get("shape")
    if v2 and isinstance(shape, list) and len(shape) <= 1 and doc.get("order") == "F":
        doc = dict(doc, order="C")  # the same bytes; tensorstore normalises it and refuses 'F'
    return zarr_metadata.parse(Driver.ZARR if v2 else Driver.ZARR3, doc)


# --------------------------------------------------------------------------------- the reader


@dataclass(frozen=True)
class _Store:
    """Where the store's keys live: the Dir itself, or an OCDBT database inside it."""

    dir: Dir
    kv: ts.KvStore
    prefix: str  # key prefix of the store root inside `kv`
    ocdbt: bool

    def array_kvstore(self, node: str) -> dict[str, Any]:
        sub = node + "/" if node else ""
        if self.ocdbt:
            return {"driver": "ocdbt", "base": self.dir.kv_spec(), "path": sub, "cache_pool": META_CACHE}
        return self.dir.storage.spec(self.dir.relpath + sub)


def build_tree(item: Dir, ocdbt_kv: ts.KvStore | None = None) -> Tree:
    """The tree of a zarr / n5 hierarchy rooted at `item` (inside an OCDBT database if `ocdbt_kv`)."""
    if ocdbt_kv is not None:
        store = _Store(item, ocdbt_kv, "", True)
        try:
            keys = [k.decode() for k in ocdbt_kv.list().result()]
        except Exception as e:
            raise storage_error(e, f"{item.display}/manifest.ocdbt") from e
    else:
        store = _Store(item, item.storage.kv, item.relpath, False)
        keys = item.list_recursive()
    # A key ending in '/' is a folder marker (GCS console / gcsfuse "folders"), not data.
    keys = [k for k in keys if k and not k.endswith("/")]
    # node path -> {metadata file name -> future}; all reads in flight at once. Outside OCDBT each
    # file is refused over the metadata size limit before it is read (a hostile 10 GB `.zarray`).
    futures: dict[str, dict[str, ts.Future[ts.KvStore.ReadResult]]] = {}
    for k in keys:
        head, _, last = k.rpartition("/")
        if last in NODE_FILES:
            futures.setdefault(head, {})[last] = store.kv.read(k) if store.ocdbt else item.read_async(k)
    docs: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for node, files in futures.items():
        docs[node] = {}
        for name, fut in files.items():
            try:
                r = fut.result()
            except Exception as e:
                raise storage_error(e, f"{item.display}/{node}/{name}") from e
            try:
                docs[node][name] = parse_json(bytes(r.value), name) if r.state == "value" else None
            except CorruptCheckpointError as e:  # unparsable, or nested past the depth limit
                errors[node] = str(e)
    stored, stray = _assign_keys(keys, docs)
    listed = {p for k in keys if ATTRS in k or DIMENSION_NAMES in k for p in _prefixes(k)}  # for _collisions
    leaves: dict[KeyPath, Leaf] = {}
    formats: set[str] = set()
    legacy: set[str] = set()
    collisions: dict[KeyPath, str] = {}
    for node in sorted(docs):
        bad = errors.get(node) is None and _shape_error(node, docs[node])
        if bad:  # a value of the wrong JSON type: the store is damaged, an error leaf could pair as one-sided
            raise CorruptCheckpointError(f"{item.display}/{bad}")
        _node_leaves(store, node, docs[node], errors.get(node), stored.get(node, []), leaves, formats, legacy)
        collisions.update(_collisions(node, leaves, listed))
    leaves.update(_unread_leaves((), stray))
    small = [leaf for leaf in leaves.values() if leaf.not_compared and leaf.not_compared.startswith(NOT_NUMERIC)]
    leaves.update(_read_small_values(store, item, small, docs, stored, legacy))
    _empty_groups(docs, leaves)
    for path, why in collisions.items():
        leaves = {p: v for p, v in leaves.items() if p[: len(path)] != path}
        leaves[path] = Leaf(path, Kind.JSON, "zarr node", error=why)
    where = "ocdbt + " if ocdbt_kv is not None else ""
    layout = where + ("/".join(sorted(formats)) or "zarr") + " hierarchy"
    notes = []
    if legacy:
        notes.append("legacy nested chunk keys ('0/0' without dimension_separator): read with separator '/'")
    return Tree(location=item.display, leaves=leaves, layout=layout, notes=tuple(notes))


def _assign_keys(keys: list[str], docs: dict[str, Any]) -> tuple[dict[str, list[str]], list[str]]:
    """Each stored key that is not node metadata, to the deepest node holding it (relative to it);
    keys under no node and not consolidated metadata are strays."""
    out: dict[str, list[str]] = {}
    stray = []
    for k in keys:
        parts = k.split("/")
        if parts[-1] in MARKERS and "/".join(parts[:-1]) in docs:
            continue
        for i in range(len(parts) - 1, -1, -1):
            node = "/".join(parts[:i])
            if node in docs:
                out.setdefault(node, []).append("/".join(parts[i:]))
                break
        else:
            stray.append(k)
    return out, [k for k in stray if k.rpartition("/")[2] != ".zmetadata"]


def _prefixes(key: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b', 'a/b/c']."""
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _keys(node: str) -> KeyPath:
    return tuple(node.split("/")) if node else ()


def _node_leaves(
    store: _Store,
    node: str,
    files: dict[str, Any],
    error: str | None,
    keys: list[str],
    out: dict[KeyPath, Leaf],
    formats: set[str],
    legacy: set[str],
) -> None:
    path = _keys(node)
    if error is not None:
        out[path] = Leaf(path, Kind.ARRAY, "zarr node", error=f"unreadable zarr metadata: {error}")
        return
    attrs: dict[str, Any] = {}
    array_file = None
    if "zarr.json" in files:
        doc = files["zarr.json"] or {}
        formats.add("zarr3")
        attrs = doc.get("attributes") or {}
        kind = doc.get("node_type")
        if kind == "array":
            array_file = "zarr.json"
            if doc.get("dimension_names") is not None:
                dn = path + (DIMENSION_NAMES,)
                out[dn] = Leaf(dn, Kind.JSON, "json", value=doc["dimension_names"])
        elif kind != "group":
            out[path] = Leaf(path, Kind.ARRAY, "zarr node", not_compared=f"zarr.json with node_type {kind!r}")
    if ".zarray" in files or ".zgroup" in files or ".zattrs" in files:
        formats.add("zarr2")
        attrs = {**attrs, **(files.get(".zattrs") or {})}
        if ".zarray" in files:
            array_file = ".zarray"
    if "attributes.json" in files:
        doc = files["attributes.json"] or {}
        if "dimensions" in doc and "dataType" in doc:
            array_file = "attributes.json"
            formats.add("n5")
        elif not formats:
            formats.add("n5")
        attrs = {**attrs, **{k: v for k, v in doc.items() if k not in N5_ARRAY_KEYS}}
    if array_file is not None:
        out[path] = _array_leaf(store, node, array_file, files[array_file], keys, legacy)
    else:  # files in a group folder that zarr does not define, and folders without zarr metadata
        out.update(_unread_leaves(path, keys))
    for k, v in attrs.items():
        p = path + (ATTRS, str(k))
        out[p] = Leaf(p, Kind.JSON, "json", value=v)


def _shape_error(node: str, files: dict[str, Any]) -> str | None:
    """What is wrong with the JSON shapes the reader relies on, naming the file; None if nothing."""
    where = node + "/" if node else ""
    for name, doc in files.items():
        if doc is not None and not isinstance(doc, dict):
            return f"{where}{name} is a JSON {_json_type(doc)}, expected an object"
    zj = files.get("zarr.json") or {}
    for field in ("attributes", "consolidated_metadata"):
        if zj.get(field) is not None and not isinstance(zj[field], dict):
            return f"{where}zarr.json: {field} is a JSON {_json_type(zj[field])}, expected an object"
    n5 = files.get("attributes.json") or {}
    if "compression" in n5 and not isinstance(n5["compression"], dict):
        return f"{where}attributes.json: compression is a JSON {_json_type(n5['compression'])}, expected an object"
    return None


def _json_type(v: Any) -> str:
    names = {str: "string", list: "array", bool: "boolean", int: "number", float: "number", dict: "object"}
    return "null" if v is None else names.get(type(v), type(v).__name__)


def _unread_leaves(at: KeyPath, keys: list[str]) -> dict[KeyPath, Leaf]:
    """Stored keys the reader does not interpret, as `not_compared` leaves (exit 0 would claim they
    were compared): one per file, one per folder with its file count, so a stray checkpoint folder of
    thousands of files is one leaf."""
    folders: dict[str, list[str]] = {}
    out = {}
    for k in keys:
        head, sep, _ = k.partition("/")
        if sep:
            folders.setdefault(head, []).append(k)
        elif k != ".zmetadata":
            p = at + (k,)
            out[p] = Leaf(p, Kind.JSON, "file", not_compared="a file that zarr does not define: not read")
    for head, inside in folders.items():
        p = at + (head,)
        shown = ", ".join(sorted(inside)[:3]) + (f" and {len(inside) - 3} more" if len(inside) > 3 else "")
        out[p] = Leaf(
            p, Kind.JSON, "folder", not_compared=f"{len(inside)} file(s) outside any zarr array, not read: {shown}"
        )
    return out


def _collisions(node: str, leaves: dict[KeyPath, Leaf], listed: set[str]) -> dict[KeyPath, str]:
    """Attribute / dimension_names leaves of `node` whose path is also a stored child's: one would
    overwrite the other, so both become one error leaf."""
    out = {}
    path = _keys(node)
    for synthetic in (ATTRS, DIMENSION_NAMES):
        child = f"{node}/{synthetic}" if node else synthetic
        p = path + (synthetic,)
        if child in listed and any(q[: len(p)] == p for q in leaves):
            out[p] = f"a stored child named {synthetic!r} collides with the node's own {synthetic} leaves"
    return out


def _array_leaf(store: _Store, node: str, name: str, doc: Any, keys: list[str], legacy_nodes: set[str]) -> Leaf:
    path = _keys(node)
    try:
        arr = parse_array(name, doc)
        legacy = False
        odd = [k for k in keys if not arr.is_chunk_key(k)]
        if odd and arr.driver is Driver.ZARR and "dimension_separator" not in doc:
            # zarr-python 2's NestedDirectoryStore wrote '0/0' keys before .zarray could say so.
            nested = parse_array(name, dict(doc, dimension_separator="/"))
            if all(nested.is_chunk_key(k) for k in keys):
                arr, odd, legacy = replace(nested, codec=nested.codec + " (legacy nested keys)"), [], True
    except (KeyError, TypeError, ValueError, AttributeError, StreamdiffError) as e:
        return Leaf(path, Kind.ARRAY, "zarr.Array", not_compared=f"zarr metadata not understood: {e}")
    shape = arr.shape
    if odd:
        return Leaf(
            path,
            Kind.ARRAY,
            "zarr.Array",
            shape,
            arr.dtype,
            not_compared=f"stored keys that are not chunks of this array ({', '.join(sorted(odd)[:3])}): "
            "their data would be read as fill value",
        )
    if legacy:
        legacy_nodes.add(node)
    if not arr.numeric:
        return Leaf(path, Kind.ARRAY, "zarr.Array", shape, arr.dtype, not_compared=f"{NOT_NUMERIC} {arr.dtype}")
    spec = {
        "driver": str(arr.driver),
        "kvstore": store.array_kvstore(node),
        "metadata": arr.document,
        # A chunk these writers did not store holds the fill value (they skip fill-valued chunks).
        "fill_missing_data_reads": True,
        "recheck_cached_data": False,
        "recheck_cached_metadata": False,
    }
    return Leaf(path, Kind.ARRAY, "zarr.Array", shape=shape, dtype=arr.dtype, source=ArraySource(spec, arr))


def _read_small_values(
    store: _Store,
    item: Dir,
    leaves: list[Leaf],
    docs: dict[str, dict[str, Any]],
    stored: dict[str, list[str]],
    legacy: set[str],
) -> dict[KeyPath, Leaf]:
    """Non-numeric arrays, decoded by zarr-python from their stored bytes (read here through
    tensorstore, every key of every such array in flight at once), as `json` leaves of nested lists.
    Outside OCDBT each stored file is refused over the metadata size limit before it is read (a
    few strings cannot need 64 MiB): the leaf is then an error."""
    wanted: dict[KeyPath, dict[str, ts.Future[ts.KvStore.ReadResult]] | str] = {}
    for leaf in leaves:
        node = "/".join(leaf.path)
        if leaf.shape is not None and int(np.prod(leaf.shape)) <= SMALL_VALUES_MAX_ELEMENTS:
            sub = node + "/" if node else ""
            try:
                wanted[leaf.path] = {
                    n: store.kv.read(sub + n) if store.ocdbt else item.read_async(sub + n) for n in stored.get(node, [])
                }
            except CorruptCheckpointError as e:  # local: refused by its type or size, unread
                wanted[leaf.path] = str(e)
    out = {}
    for leaf in leaves:
        if leaf.path not in wanted:
            out[leaf.path] = replace(
                leaf, not_compared=f"{leaf.not_compared}, over {SMALL_VALUES_MAX_ELEMENTS} elements: not read"
            )
            continue
        reads = wanted[leaf.path]
        if isinstance(reads, str):
            out[leaf.path] = replace(leaf, not_compared=None, error=reads)
            continue
        node = "/".join(leaf.path)
        # The metadata files were read and parsed with the listing: only the chunks are read here.
        meta = {n: doc for n, doc in docs[node].items() if n in NODE_FILES and doc is not None}
        if node in legacy:  # '0/0' keys that .zarray does not declare: zarr-python would read fill values
            meta[".zarray"] = dict(meta[".zarray"], dimension_separator="/")
        raw = {n: json.dumps(doc).encode() for n, doc in meta.items()}
        refused = None
        for name, fut in reads.items():
            try:
                r = fut.result()
            except CorruptCheckpointError as e:  # remote: over the size limit, one byte read
                refused = str(e)
                continue
            except Exception as e:
                raise storage_error(e, f"{item.display}/{format_path(leaf.path)}/{name}") from e
            if r.state == "value":
                raw[name] = bytes(r.value)
        if refused is not None:
            out[leaf.path] = replace(leaf, not_compared=None, error=refused)
            continue
        try:
            value = _decode_with_zarr_python(raw)
        except Exception as e:  # noqa: BLE001 - whatever zarr-python cannot decode stays not compared
            out[leaf.path] = replace(leaf, not_compared=f"{leaf.not_compared}; zarr-python cannot read it: {e}")
            continue
        out[leaf.path] = Leaf(leaf.path, Kind.JSON, "zarr.Array", leaf.shape, leaf.dtype, value=value)
    return out


def _decode_with_zarr_python(raw: dict[str, bytes]) -> Any:
    import zarr
    from zarr.core.buffer import cpu

    mem = zarr.storage.MemoryStore({k: cpu.Buffer.from_bytes(v) for k, v in raw.items()})
    # zarr-python types `[...]` as any scalar or array; on an array it is an ndarray (else: the
    # AttributeError leaves the value not compared, as for anything zarr-python cannot decode).
    return zarr.open_array(store=mem, mode="r")[...].tolist()  # type: ignore[union-attr]


def _empty_groups(docs: dict[str, dict[str, Any]], leaves: dict[KeyPath, Leaf]) -> None:
    """A group with nothing under it would leave no trace: give it an `empty` leaf."""
    occupied = {p[:i] for p in leaves for i in range(len(p) + 1)}
    for node in docs:
        path = _keys(node)
        if path not in occupied:
            leaves[path] = Leaf(path, Kind.EMPTY, "zarr.Group")
