"""Build a checkpoint item's tree from metadata alone (orbax-format.md §12.B). No chunk data is read.

Structure comes from `_METADATA.tree_metadata[*].key_metadata` (never from splitting names on '.'),
else from the msgpack `checkpoint` file (legacy orbax, or T5X whose leaves are tensorstore specs, see
formats/msgpack.py), else (ambiguous) from the stored array names.
Shapes and dtypes come from each array's zarr metadata, which for OCDBT is inline in the B-tree, so
one listing plus one concurrent batch of small reads describes every array.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import tensorstore as ts

from . import dtypes, unreferenced, validate
from .datatypes import ArraySource, KeyPath, Kind, Leaf, Tree
from .errors import CorruptCheckpointError, NotACheckpointError, StreamdiffError
from .formats import foreign, json_item, ocdbt, zarr
from .formats import msgpack as msgpack_format
from .localfs import check_file, walk_files
from .locate import Item, ItemKind
from .storage import META_CACHE, Dir, result_bytes, storage_error

EMPTY_TYPES = {"None", "Dict", "List", "Tuple", "NamedTuple"}
ZARR_META = {".zarray": 2, "zarr.json": 3}
#: Metadata files Orbax never writes: their presence means a plain zarr / n5 store.
PLAIN_ONLY = {".zgroup", ".zattrs", "attributes.json"}
META_NAME = {fmt: name for name, fmt in ZARR_META.items()}


@dataclass(frozen=True)
class _Entry:
    """One leaf as the structure source describes it, before storage is consulted."""

    keys: KeyPath
    value_type: str
    storage_name: str
    skip_deserialize: bool = False
    inline: Any = None  # value from the legacy msgpack file
    has_inline: bool = False
    spec: msgpack_format.TsSpec | None = None  # T5X: the array is where this tensorstore spec says
    conflict: str | None = None  # _METADATA and the legacy msgpack file disagree about this leaf


def read_item(item: Item) -> Tree:
    """The tree of any item `locate` found: dispatch on its kind to the reader of its format."""
    if item.kind is ItemKind.JSON:
        return json_item.json_tree(item.dir.read(item.file), item.display, item.others)
    if item.kind is ItemKind.MSGPACK_FILE:
        raw = _read_whole(item.dir, item.file)
        if raw is None:
            raise CorruptCheckpointError(f"{item.display}: vanished while reading")
        try:
            return msgpack_format.file_tree(raw, item.display)
        except Exception as e:  # noqa: BLE001 - any decoding failure is one line for the user
            raise CorruptCheckpointError(f"{item.display}: unreadable flax msgpack file ({e})") from e
    if item.kind is ItemKind.NOT_READ:
        leaf = Leaf((), Kind.ARRAY, "unknown", not_compared=item.why)
        return Tree(location=item.display, leaves={(): leaf}, layout="not read")
    if item.kind is ItemKind.ZARR:
        return zarr.build_tree(item.dir)
    if item.dir.storage.is_local:
        # Building a tree is Python work (the GIL runs one side at a time anyway) whose transient
        # objects (the parsed _METADATA above all) outweigh the tree itself: on local disk, where
        # no network round trips overlap, the two sides are built one after the other, so their
        # peaks do not add up.
        with _LOCAL_BUILD:
            return build_tree(item.dir)
    return build_tree(item.dir)


_LOCAL_BUILD = threading.Lock()


def _read_whole(d: Dir, name: str) -> bytes | None:
    """A whole file in one buffer: on local disk a plain read (tensorstore's read result and its
    `.value` would hold the file two or three times over at the peak)."""
    if d.storage.is_local:
        try:
            with open(os.path.join(d.storage.local_root, d.relpath, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StreamdiffError(f"{d.display}/{name}: {e.strerror}") from e
    return d.read(name)


def build_tree(item: Dir) -> Tree:
    children = item.list_children()
    files = {n for n, k in children.items() if k == "file"}
    ocdbt = "manifest.ocdbt" in files

    # Issue every independent read at once: on GCS each is a round trip.
    futures = {n: item.read_async(n, _max_bytes(n)) for n in ("_METADATA", "_strings.json", "checkpoint") if n in files}
    am_dir = item.child("array_metadatas")
    am_names = [n for n, k in am_dir.list_children().items() if k == "file"] if "array_metadatas" in children else []
    am_futures = [am_dir.read_async(n) for n in am_names]
    ocdbt_kv = None
    listing = None
    inline: dict[str, bytes] = {}  # zarr metadata already in hand: from the B-tree walk or the per-leaf probe
    if ocdbt:
        _audit_ocdbt(item, children)
        ocdbt_kv = _open_ocdbt(item)
        inline, keys_walked = _walk_ocdbt(item)
        if keys_walked is None:
            listing = ocdbt_kv.list()

    raw = {n: result_bytes(f, f"{item.display}/{n}") for n, f in futures.items()}
    notes: list[str] = []
    metadata = _parse_json(raw.get("_METADATA"), item, "_METADATA")
    if raw.get("_METADATA") is not None:  # present: must be valid (`null` is not "missing")
        validate.check_tree_metadata(metadata, f"{item.display}/_METADATA")
    msgpack_entries = _parse_msgpack(raw.get("checkpoint"), item)
    strings = _parse_json(raw.get("_strings.json"), item, "_strings.json")
    if raw.get("_strings.json") is not None:
        validate.check_strings(strings, f"{item.display}/_strings.json")
    strings = strings or {}
    prng = _prng_impls(am_futures, item)

    # Which arrays exist in storage, and with which zarr version.
    if ocdbt:
        if keys_walked is not None:
            keys = keys_walked
        else:
            try:
                keys = [k.decode() for k in listing.result()]
            except Exception as e:
                raise storage_error(e, f"{item.display}/manifest.ocdbt") from e
        stored = _arrays_from_keys(keys)
    else:
        stored = None  # discovered per name below

    unnamed: dict[KeyPath, str] = {}  # stored data no tree entry reads
    if metadata is not None:
        entries, unnamed = _entries_from_metadata(metadata, item, msgpack_entries)
    elif msgpack_entries is not None:
        entries = _entries_from_msgpack(msgpack_entries)
    else:
        if stored is None:
            stored = _arrays_from_keys(item.list_recursive())
        elif _plain_store(keys, stored):
            return zarr.build_tree(item, ocdbt_kv)
        entries = [_Entry(tuple(name.split(".")) if name else (), "unknown", name) for name in sorted(stored)]
        notes.append("no _METADATA: tree rebuilt by splitting array names on '.' (ambiguous for keys with dots)")

    # The parsed _METADATA is the biggest object of a huge tree (objects per key): not held past here.
    del metadata, raw
    wanted = [e.storage_name for e in entries if _needs_array(e)]
    if stored is None:
        stored, probed = _probe_per_leaf(item, wanted)
        inline.update(probed)
    meta_futures = {
        name: _meta_reader(item, ocdbt_kv, name, stored[name], inline)
        for name in dict.fromkeys(wanted)
        if name in stored
    }
    zmeta: dict[str, tuple[int, dict]] = {}
    # Leaves of one model share a handful of distinct metadata documents: parse each once (and
    # share the parsed object: nothing downstream mutates it).
    parsed: dict[bytes, Any] = {}
    for name, fut in meta_futures.items():
        fmt = stored[name]
        key = _meta_key(name, fmt)
        raw_meta = fut if isinstance(fut, bytes) else result_bytes(fut, f"{item.display}/{key}")
        if raw_meta is not None:
            if raw_meta not in parsed:
                parsed[raw_meta] = _parse_json(raw_meta, item, key)
            zmeta[name] = (fmt, parsed[raw_meta])
    specs, leaves_extra = _t5x_arrays(entries, zmeta, children)
    docs = {n: (f, md, f"{item.display}/{n + '/' if n else ''}{META_NAME[f]}") for n, (f, md) in zmeta.items()}
    bad_meta = validate.check_zarr_documents(docs)  # tensorstore parses them all at once
    legacy_strings = _legacy_strings(item, [e for e in entries if _needs_array(e) and e.storage_name not in zmeta])
    claimed: dict[KeyPath, str] = {}
    if not specs:  # T5X: `_t5x_arrays` already accounts for every child of its directory
        valid = {n: v for n, v in zmeta.items() if n not in bad_meta}  # a bad document's leaf is an error
        claimed = _unreferenced(item, children, ocdbt, keys if ocdbt else [], stored, entries, unnamed, valid)
    leaves: dict[KeyPath, Leaf] = {}
    facts: dict = {}  # per distinct metadata document and item: see _array_source
    for e in entries:
        if e.keys in claimed:
            why = f"value_type {e.value_type!r} in the tree (no stored array), {claimed[e.keys]}"
            leaves[e.keys] = Leaf(e.keys, Kind.ARRAY, e.value_type, not_compared=why)
        else:
            leaves[e.keys] = _make_leaf(e, item, ocdbt, zmeta, strings, legacy_strings, prng, bad_meta, facts)
    leaves.update(leaves_extra)
    unreferenced.add_leaves(leaves, unnamed)
    fmts = sorted({f for f, _ in zmeta.values()})
    layout = ("ocdbt" if ocdbt else "per-leaf dirs") + (" + " + "/".join(f"zarr{f}" for f in fmts) if fmts else "")
    if specs:
        layout = "T5X: msgpack checkpoint of tensorstore specs + zarr2 folders"
    elif msgpack_entries is not None:
        layout += " + legacy msgpack"
    return Tree(location=item.display, leaves=leaves, layout=layout, notes=tuple(notes))


def _unreferenced(
    item: Dir,
    children: dict[str, str],
    ocdbt: bool,
    keys: list[str],
    stored: dict[str, int],
    entries: list[_Entry],
    unnamed: dict[KeyPath, str],
    zmeta: dict[str, tuple[int, dict]],
) -> dict[KeyPath, str]:
    """Add to `unnamed` what the item stores that no entry reads (see unreferenced.py); return the
    entries whose value_type gives them no array although one is stored under their name."""
    used = {e.storage_name for e in entries if _needs_array(e)}
    no_data = {e.storage_name: e.keys for e in entries if not _needs_array(e) and e.spec is None}
    claimed: dict[KeyPath, str] = {}
    if ocdbt:
        extra, claimed = unreferenced.ocdbt_leftovers(keys, set(stored), used, no_data, zmeta)
        unnamed.update(extra)
    extra, more = unreferenced.directory_leftovers(item, children, ocdbt, used, no_data)
    unnamed.update(extra)
    claimed.update(more)
    return claimed


def _t5x_arrays(
    entries: list[_Entry], zmeta: dict[str, tuple[int, dict]], children: dict[str, str]
) -> tuple[list[msgpack_format.TsSpec], dict[KeyPath, Leaf]]:
    """T5X: each readable spec's zarr metadata into `zmeta` (a `.zarray` beside the chunks, when
    there is one, wins: the spec carries the same metadata); returns the specs and the leaves for what
    else the checkpoint directory holds (T5X writes tf.data iterator state there), never skipped."""
    specs = [e for e in entries if e.spec is not None and e.spec.unsupported() is None]
    extra: dict[KeyPath, Leaf] = {}
    for e in specs:
        if e.spec.path not in zmeta:
            try:
                zmeta[e.spec.path] = (2, e.spec.zarr_metadata())
            except (KeyError, TypeError, ValueError) as exc:
                extra[e.keys] = Leaf(e.keys, "array", e.value_type, error=f"unreadable tensorstore spec: {exc!r}")
    if specs:
        used = {e.spec.path.split("/")[0] for e in specs}
        for name in sorted(n for n in children if n != "checkpoint" and n not in used):
            why = foreign.describe_file(name) if children[name] == "file" else "a directory no tensorstore spec names"
            extra[(name,)] = Leaf((name,), "array", "unknown", not_compared=why)
    return [e.spec for e in specs], extra


def _plain_store(keys: list[str], stored: dict[str, int]) -> bool:
    """An OCDBT database without Orbax's metadata that tensorstore or zarr-python wrote directly:
    n5 or group metadata, or arrays at '/'-separated paths (Orbax names its arrays with '.')."""
    return not stored or any("/" in name for name in stored) or any(k.rpartition("/")[2] in PLAIN_ONLY for k in keys)


def _max_bytes(name: str) -> int:
    return validate.MAX_MSGPACK_BYTES if name == "checkpoint" else validate.MAX_METADATA_BYTES


def _audit_ocdbt(item: Dir, children: dict[str, str]) -> None:
    """Local OCDBT: every manifest and data file tensorstore may open must be a regular file
    (a FIFO blocks its reads forever). Directory listings only; no file is opened."""
    if not item.storage.is_local:
        return
    root = os.path.join(item.storage.local_root, item.relpath)
    for name, kind in children.items():
        if kind == "file" and name.startswith("manifest"):  # read whole by tensorstore: capped like metadata
            check_file(os.path.join(root, name), f"{item.display}/{name}", validate.MAX_METADATA_BYTES)
    for name, kind in children.items():
        if kind == "dir" and (name == "d" or name.startswith("ocdbt.process_")):
            for _ in walk_files(os.path.join(root, name), f"{item.display}/{name}"):
                pass


def _open_ocdbt(item: Dir) -> ts.KvStore:
    try:
        spec = {"driver": "ocdbt", "base": item.kv_spec(), "cache_pool": META_CACHE}
        return ts.KvStore.open(spec, context=item.storage.context).result()
    except Exception as e:
        raise storage_error(e, f"{item.display}/manifest.ocdbt") from e


def _parse_json(raw: bytes | None, item: Dir, name: str) -> Any:
    if raw is None:
        return None
    return validate.parse_json(raw, f"{item.display}/{name}")


def _parse_msgpack(raw: bytes | None, item: Dir) -> list[msgpack_format.MsgpackEntry] | None:
    if raw is None:
        return None
    if raw.startswith(b"model_checkpoint_path"):
        raise NotACheckpointError(f"{item.display}: a TensorFlow checkpoint (.index + .data-*-of-*), not supported")
    try:
        return msgpack_format.entries(raw)
    except Exception as e:
        raise CorruptCheckpointError(f"{item.display}/checkpoint: unreadable msgpack ({e})") from e


def _prng_impls(futures: list[ts.Future], item: Dir) -> dict[str, str]:
    """param name -> random_key_impl, merged over all array_metadatas/process_* files (§8.1)."""
    out: dict[str, str] = {}
    for fut in futures:
        raw = result_bytes(fut, f"{item.display}/array_metadatas")
        if raw is None:
            continue
        doc = _parse_json(raw, item, "array_metadatas/*")
        validate.check_array_metadatas(doc, f"{item.display}/array_metadatas")
        for entry in doc.get("array_metadatas", []):
            am = entry.get("array_metadata", entry) if isinstance(entry, dict) else {}
            impl = (am.get("ext_metadata") or {}).get("random_key_impl")
            if impl and "param_name" in am:
                out[am["param_name"]] = impl
    return out


def _arrays_from_keys(keys: list[str]) -> dict[str, int]:
    """Array name -> zarr version: only keys ending in .zarray / zarr.json define arrays (§13.6)."""
    out: dict[str, int] = {}
    for k in keys:
        head, _, last = k.rpartition("/")
        if last in ZARR_META:
            out.setdefault(head, ZARR_META[last])
    return out


def _entries_from_metadata(metadata: Any, item: Dir, packed: list | None) -> tuple[list[_Entry], dict[KeyPath, str]]:
    """The leaves `_METADATA` names, and (why, by path) the legacy msgpack file's entries it lacks:
    orbax restores from both, so a value only the msgpack file holds is never silently dropped."""
    tm = metadata["tree_metadata"]
    inline = {m.keys: m for m in packed or []}
    raw: list[_Entry] = []
    for entry in tm.values():
        try:
            keys = tuple(str(k["key"]) for k in entry["key_metadata"])
        except (KeyError, TypeError) as e:
            raise CorruptCheckpointError(f"{item.display}/_METADATA: malformed key_metadata") from e
        vm = entry.get("value_metadata") or {}
        vt = str(vm.get("value_type", "unknown"))
        skip = bool(vm.get("skip_deserialize", False))
        packed_entry = inline.get(keys)
        name = ".".join(keys)
        if packed_entry is not None and packed_entry.placeholder is not None:
            name = packed_entry.placeholder
        has_inline = skip and vt not in EMPTY_TYPES and packed_entry is not None and packed_entry.placeholder is None
        conflict = _msgpack_conflict(vt, skip, packed_entry)
        raw.append(_Entry(keys, vt, name, skip, packed_entry.value if has_inline else None, has_inline, None, conflict))
    # Drop entries that are strict prefixes of others: placeholders of partial saves (§4).
    prefixes = {e.keys[:i] for e in raw for i in range(len(e.keys))}
    named = {e.keys for e in raw}
    why = "in the msgpack `checkpoint` file but not in _METADATA: not read"
    only_msgpack = {m.keys: why for m in packed or [] if m.keys not in named}
    return [e for e in raw if e.keys not in prefixes], only_msgpack


def _msgpack_conflict(vt: str, skip: bool, m: msgpack_format.MsgpackEntry | None) -> str | None:
    """Why the legacy msgpack file's entry contradicts `_METADATA`, or None: an inline value where
    `_METADATA` says the value is stored as an array, or a value where it says the node is empty."""
    if m is None or m.placeholder is not None or m.spec is not None:
        return None
    v = m.value
    empty = v is None or (isinstance(v, (dict, list, tuple)) and not v)
    if vt in EMPTY_TYPES:
        if empty:
            return None
        return f"_METADATA says value_type {vt!r} (no data), the msgpack `checkpoint` file holds a value"
    if not skip:
        return f"_METADATA says value_type {vt!r} stored as an array, the msgpack `checkpoint` file holds it inline"
    return None


def _entries_from_msgpack(packed: list[msgpack_format.MsgpackEntry]) -> list[_Entry]:
    out = []
    for m in packed:
        if m.spec is not None:
            out.append(_Entry(m.keys, "tensorstore_spec", m.spec.path, spec=m.spec))
            continue
        if m.placeholder is not None:
            out.append(_Entry(m.keys, "unknown", m.placeholder))
            continue
        v = m.value
        if v is None:
            vt = "None"
        elif isinstance(v, (dict, list, tuple)) and not v:
            vt = {dict: "Dict", list: "List", tuple: "Tuple"}[type(v)]
        elif isinstance(v, str):
            vt = "string"
        else:
            vt = "aggregated"
        out.append(_Entry(m.keys, vt, ".".join(m.keys), True, v, vt not in EMPTY_TYPES))
    return out


def _needs_array(e: _Entry) -> bool:
    if e.spec is not None and e.spec.unsupported():
        return False  # reported as not compared; its path may not even be a key
    return e.value_type not in EMPTY_TYPES and e.value_type != "string" and not e.has_inline


def _probe_per_leaf(item: Dir, names: list[str]) -> tuple[dict[str, int], dict[str, bytes]]:
    """Non-OCDBT: which of `<name>/.zarray` and `<name>/zarr.json` exists, asked concurrently; and
    the bytes read on the way (the metadata itself: not read a second time)."""
    futs = {(n, f): item.read_async((n + "/" if n else "") + f) for n in dict.fromkeys(names) for f in ZARR_META}
    out: dict[str, int] = {}
    found: dict[str, bytes] = {}
    for (n, f), fut in futs.items():
        try:
            r = fut.result()
        except Exception as e:
            raise storage_error(e, f"{item.display}/{n}/{f}") from e
        if r.state == "value" and n not in out:
            out[n] = ZARR_META[f]
            found[_meta_key(n, ZARR_META[f])] = bytes(r.value)
    return out, found


def _meta_key(name: str, fmt: int) -> str:
    return (name + "/" if name else "") + META_NAME[fmt]


def _meta_reader(item: Dir, kv: ts.KvStore | None, name: str, fmt: int, inline: dict[str, bytes]) -> ts.Future | bytes:
    """The metadata bytes when the B-tree walk already has them, else a read in flight."""
    key = _meta_key(name, fmt)
    if key in inline:
        return inline[key]
    return kv.read(key) if kv is not None else item.read_async(key)


def _walk_ocdbt(item: Dir) -> tuple[dict[str, bytes], Iterable[str] | None]:
    """Every key of the item's OCDBT database and its inline zarr metadata, from one B-tree walk;
    ({}, None) when the walk fails (the caller then lists and reads key by key, as before).
    The keys of a big database (a million chunks) stay in `ocdbt.KeySizes`' compact form."""
    try:
        base = ts.KvStore.open(item.kv_spec(), context=item.storage.context).result()
        inline, keys = ocdbt.index(base, frozenset(ZARR_META))
    except Exception:  # noqa: BLE001 - an optimisation: the per-key path reports real errors
        return {}, None
    return inline, (list(keys) if len(keys) <= COMPACT_KEYS else keys)


#: Databases with more keys than this keep them compact (iterated a little slower than a list).
COMPACT_KEYS = 1 << 18


def _legacy_strings(item: Dir, entries: list[_Entry]) -> dict[str, str]:
    """orbax <= 0.3 non-OCDBT kept each string in `<name>/_strings.json` (§5)."""
    futs = {e.storage_name: item.read_async(e.storage_name + "/_strings.json") for e in entries}
    out = {}
    for name, fut in futs.items():
        raw = result_bytes(fut, f"{item.display}/{name}/_strings.json")
        doc = _parse_json(raw, item, f"{name}/_strings.json")
        if isinstance(doc, dict) and name in doc:
            out[name] = doc[name]
    return out


def _make_leaf(
    e: _Entry,
    item: Dir,
    ocdbt: bool,
    zmeta: dict[str, tuple[int, dict]],
    strings: dict[str, Any],
    legacy_strings: dict[str, str],
    prng: dict[str, str],
    bad_meta: dict[str, str],
    facts: dict | None = None,
) -> Leaf:
    if e.conflict:
        return Leaf(e.keys, "array", e.value_type, error=e.conflict)
    if e.value_type in EMPTY_TYPES:
        return Leaf(e.keys, "empty", e.value_type)
    if e.has_inline:
        return msgpack_format.inline_leaf(e.keys, e.inline, e.value_type)
    if e.spec is not None and e.spec.unsupported():
        return Leaf(e.keys, "array", e.value_type, not_compared=e.spec.unsupported())
    if e.value_type == "string" or e.storage_name in legacy_strings:
        name = e.storage_name
        if name in strings:
            return Leaf(e.keys, "string", "string", value=strings[name])
        if name in legacy_strings:
            return Leaf(e.keys, "string", "string", value=legacy_strings[name])
        return Leaf(e.keys, "string", "string", error=f"string {name!r} is missing from _strings.json")
    if e.storage_name not in zmeta:
        return Leaf(
            e.keys,
            "array",
            e.value_type,
            error=f"array {e.storage_name!r} is listed in the tree metadata but missing from storage",
        )
    fmt, md = zmeta[e.storage_name]
    if e.storage_name in bad_meta:
        return Leaf(e.keys, "array", e.value_type, error=f"unreadable zarr metadata: {bad_meta[e.storage_name]}")
    try:
        source, shape, dtype = _array_source(item, ocdbt, e.storage_name, fmt, md, facts)
    except KeyError as exc:  # str(KeyError) is only the quoted key: say what it is
        where = f"{e.storage_name}/{'.zarray' if fmt == 2 else 'zarr.json'}"
        return Leaf(e.keys, "array", e.value_type, error=f"unreadable zarr metadata {where}: no field {exc.args[0]!r}")
    except (TypeError, ValueError, AttributeError, StreamdiffError) as exc:
        where = f"{e.storage_name}/{'.zarray' if fmt == 2 else 'zarr.json'}"
        return Leaf(e.keys, "array", e.value_type, error=f"unreadable zarr metadata {where}: {exc}")
    impl = prng.get(e.storage_name)
    if impl:
        kind = "prng_key"
    elif shape == () and e.value_type in ("scalar", "np.ndarray", "unknown"):
        # Python and numpy scalars (StandardCheckpointHandler stores np scalars as 0-d np.ndarray);
        # a 0-d jax.Array such as MaxText's `step` stays an array.
        kind = "scalar"
    else:
        kind = "array"
    return Leaf(e.keys, kind, e.value_type, shape=shape, dtype=dtype, source=source, prng_impl=impl)


def _ints(value: Any, field: str) -> tuple[int, ...]:
    """A list of integers from metadata, or a ValueError naming the field (not "'int' object is
    not iterable")."""
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise ValueError(f"`{field}` must be a list of integers, got {json.dumps(value)[:60]}")
    return tuple(value)


def _doc_facts(fmt: int, md: dict) -> tuple[tuple, str, tuple, tuple, str]:
    """(shape, dtype, chunks, read chunks, codec) of one zarr metadata document."""
    if not isinstance(md, dict):
        raise ValueError(f"expected a JSON object, got {type(md).__name__}")
    shape = _ints(md["shape"], "shape")
    if fmt == 2:
        dtype = dtypes.normalize(md["dtype"])
        chunks = _ints(md["chunks"], "chunks")
        read_chunks = chunks
        comp = md.get("compressor")
        codec = "raw" if comp is None else f"{comp.get('id')}" + (f"(level={comp['level']})" if "level" in comp else "")
        if md.get("filters"):
            codec = "+".join(f.get("id", "?") for f in md["filters"]) + "+" + codec
    else:
        dtype = dtypes.normalize(md["data_type"])
        chunks = _ints(md["chunk_grid"]["configuration"]["chunk_shape"], "chunk_grid.configuration.chunk_shape")
        read_chunks = chunks
        codec = zarr.v3_codec_names(md.get("codecs", []))
        for c in md.get("codecs", []):
            if c.get("name") == "sharding_indexed":
                read_chunks = tuple(int(x) for x in c["configuration"]["chunk_shape"])
    return shape, dtype, chunks, read_chunks, codec


def _array_source(
    item: Dir, ocdbt: bool, name: str, fmt: int, md: dict, facts: dict | None = None
) -> tuple[ArraySource, tuple, str]:
    """The array's tensorstore spec and facts; `md` already passed validate.check_zarr_documents.

    `facts` caches, across the leaves of one item, what depends only on the metadata document
    (leaves share a handful of parsed documents) and the item's base kvstore spec, shared by every
    leaf's spec instead of one copy each."""
    if facts is None:
        facts = {}
    key = (id(md), fmt)
    if key not in facts:
        facts[key] = (md, _doc_facts(fmt, md))  # md kept with its id, so the id cannot be reused
    shape, dtype, chunks, read_chunks, codec = facts[key][1]
    if ocdbt:
        if "base" not in facts:
            facts["base"] = item.kv_spec()
        kv = {"driver": "ocdbt", "base": facts["base"], "path": name + "/" if name else "", "cache_pool": META_CACHE}
    else:
        kv = item.storage.spec(item.relpath + (name + "/" if name else ""))
    spec = {
        "driver": "zarr" if fmt == 2 else "zarr3",
        "kvstore": kv,
        "metadata": md,
        # A missing chunk must be an error, not zeros: orbax writes every chunk (§6.3).
        "fill_missing_data_reads": False,
        "recheck_cached_data": False,
        "recheck_cached_metadata": False,
    }
    return ArraySource(spec, name, fmt, chunks, read_chunks, codec), shape, dtype
