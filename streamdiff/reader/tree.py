"""Build a checkpoint item's tree from metadata alone. No chunk data is read.

This module orchestrates: which files to read, every read issued at once, and which reader gets the
bytes. What a file means is in `formats/`: `_METADATA` and `array_metadatas/*` in `formats/orbax.py`,
each array's zarr metadata in `formats/zarr_metadata.py` (parsed once per distinct document),
msgpack files in `formats/msgpack.py`.

Structure comes from `_METADATA`'s key metadata (never from splitting names on '.'), else from the
msgpack `checkpoint` file (legacy orbax, or T5X whose leaves are tensorstore specs), else
(ambiguous) from the stored array names. Shapes and dtypes come from each array's zarr metadata,
which for OCDBT is inline in the B-tree, so one listing plus one concurrent batch of small reads
describes every array.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

import tensorstore as ts

from ..datatypes import ArraySource, KeyPath, Kind, Leaf, Tree
from ..errors import CorruptCheckpointError, NotACheckpointError, StreamdiffError
from . import unreferenced, validate
from .formats import foreign, json_item, ocdbt, orbax, zarr, zarr_metadata
from .formats import msgpack as msgpack_format
from .formats.zarr_metadata import METADATA_FILE, METADATA_FILES, ArrayMetadata
from .localfs import check_file, walk_files
from .locate import Item, ItemKind
from .storage import META_CACHE, Dir, result_bytes, storage_error

#: Metadata files Orbax never writes: their presence means a plain zarr / n5 store.
PLAIN_ONLY = {".zgroup", ".zattrs", "attributes.json"}


class _Entry(NamedTuple):
    """One leaf as the structure source describes it, before storage is consulted (a tuple: a
    huge tree makes one per leaf, briefly)."""

    keys: KeyPath
    value_type: str
    storage_name: str
    skip_deserialize: bool = False
    inline: Any = None  # value from the legacy msgpack file
    has_inline: bool = False
    spec: msgpack_format.TsSpec | None = None  # T5X: the array is where this tensorstore spec says
    conflict: str | None = None  # _METADATA and the legacy msgpack file disagree about this leaf

    @property
    def needs_array(self) -> bool:
        """Its value is a stored array (not an empty node, a string, an inline value or a spec
        refused as unsupported, whose path may not even be a key)."""
        if self.spec is not None and self.spec.unsupported():
            return False
        return self.value_type not in orbax.NO_ARRAY_VALUE_TYPES and not self.has_inline


def read_item(item: Item) -> Tree:
    """The tree of any item `locate` found: dispatch on its kind to the reader of its format."""
    if item.kind is ItemKind.JSON:
        return json_item.json_tree(item.dir.read(item.file_name), item.display, item.others)
    if item.kind is ItemKind.MSGPACK_FILE:
        raw = _read_whole(item.dir, item.file_name)
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
            with open(os.path.join(d.storage.root_path, d.relpath, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StreamdiffError(f"{d.display}/{name}: {e.strerror}") from e
    return d.read(name, max_bytes=None)


def build_tree(item: Dir) -> Tree:
    children = item.list_children()
    files = {n for n, k in children.items() if k == "file"}
    ocdbt = "manifest.ocdbt" in files

    # Issue every independent read at once: on GCS each is a round trip.
    # tensorstore reads an OCDBT manifest whole, so its size is checked first (its probes overlap the reads below).
    manifests = item.refuse_big(_manifest_names(item, children) if ocdbt and not item.storage.is_local else [])
    futures = {n: item.read_async(n, _max_bytes(n)) for n in ("_METADATA", "_strings.json", "checkpoint") if n in files}
    am_dir = item.child("array_metadatas")
    am_names = [n for n, k in am_dir.list_children().items() if k == "file"] if "array_metadatas" in children else []
    am_futures = [am_dir.read_async(n) for n in am_names]
    ocdbt_kv: ts.KvStore | None = None
    listing: ts.Future[list[bytes]] | None = None
    keys_walked: Iterable[str] | None = None
    inline: dict[str, bytes] = {}  # zarr metadata already in hand: from the B-tree walk or the per-leaf probe
    if ocdbt:
        _audit_ocdbt(item, children)
        manifests.wait()
        ocdbt_kv = _open_ocdbt(item)
        inline, keys_walked = _walk_ocdbt(item)
        if keys_walked is None:
            listing = ocdbt_kv.list()

    raw = {n: result_bytes(f, f"{item.display}/{n}") for n, f in futures.items()}
    notes: list[str] = []
    metadata = None
    raw_tree = raw.get("_METADATA")
    if raw_tree is not None:  # present: must be valid (`null` is not "missing")
        metadata = orbax.read_tree_metadata(raw_tree, f"{item.display}/_METADATA")
        del raw_tree
    msgpack_entries = _parse_msgpack(raw.get("checkpoint"), item)
    strings = _parse_json(raw.get("_strings.json"), item, "_strings.json")
    if raw.get("_strings.json") is not None:
        validate.check_strings(strings, f"{item.display}/_strings.json")
    strings = strings or {}
    prng = _prng_impls(am_futures, item)

    # Which arrays exist in storage, and with which zarr version.
    if ocdbt:
        if keys_walked is not None:
            keys: Iterable[str] = keys_walked
        elif listing is not None:
            try:
                keys = [k.decode() for k in listing.result()]
            except Exception as e:
                raise storage_error(e, f"{item.display}/manifest.ocdbt") from e
        stored = unreferenced.arrays_in(keys)
    else:
        stored = None  # discovered per name below

    unnamed: dict[KeyPath, str] = {}  # stored data no tree entry reads
    if metadata is not None:
        entries, unnamed = _entries_from_metadata(metadata, msgpack_entries)
    elif msgpack_entries is not None:
        entries = _entries_from_msgpack(msgpack_entries)
    else:
        if stored is None:
            stored = unreferenced.arrays_in(item.list_recursive())
        elif _plain_store(keys, stored):
            return zarr.build_tree(item, ocdbt_kv)
        entries = [_Entry(tuple(name.split(".")) if name else (), "unknown", name) for name in sorted(stored)]
        notes.append("no _METADATA: tree rebuilt by splitting array names on '.' (ambiguous for keys with dots)")

    # The parsed _METADATA is the biggest object of a huge tree (objects per key): not held past here.
    del metadata, raw
    no_array = orbax.NO_ARRAY_VALUE_TYPES
    # `needs_array`, its common case (no spec, no inline value) tested without a call per entry
    needing = [
        e for e in entries if ((e.value_type not in no_array and not e.has_inline) if e.spec is None else e.needs_array)
    ]
    wanted = [e.storage_name for e in needing]
    if stored is None:
        stored, probed = _probe_per_leaf(item, wanted)
        inline.update(probed)
    zmeta = _zarr_documents(item, ocdbt_kv, wanted, stored, inline)
    del inline
    specs, leaves_extra = _t5x_arrays(entries, zmeta, children)
    # tensorstore checks them all at once
    bad = validate.check_zarr_documents(zmeta, lambda n: f"{item.display}/{_meta_key(n, zmeta[n][0])}")
    arrays, valid = _typed_metadata(zmeta, bad)
    legacy_strings = _legacy_strings(item, [e for e in needing if e.storage_name not in zmeta])
    claimed: dict[KeyPath, str] = {}
    if not specs:  # T5X: `_t5x_arrays` already accounts for every child of its directory
        used = set(wanted)
        claimed = _unreferenced(item, children, ocdbt, keys if ocdbt else [], stored, entries, used, unnamed, valid)
    del needing, wanted, valid
    leaves: dict[KeyPath, Leaf] = {}
    sources = _Sources(item, ocdbt)
    plain = not (claimed or legacy_strings or prng)  # then an entry whose array was typed is a plain array leaf
    scalar_types, array = orbax.SCALAR_VALUE_TYPES, Kind.ARRAY
    for entry in entries:
        md = arrays.get(entry.storage_name)
        if plain and type(md) is ArrayMetadata and entry.conflict is None and entry.spec is None:
            vt = entry.value_type
            if not entry.has_inline and vt not in no_array:
                # The common case, as decided below (`_array_leaf` without a PRNG key), in fewer steps.
                kind = Kind.SCALAR if md.shape == () and vt in scalar_types else array
                source = sources.of(entry.storage_name, md)
                leaves[entry.keys] = Leaf(entry.keys, kind, vt, md.shape, md.dtype, source, None, None)
                continue
        if entry.keys in claimed:
            why = f"value_type {entry.value_type!r} in the tree (no stored array), {claimed[entry.keys]}"
            leaves[entry.keys] = Leaf(entry.keys, Kind.ARRAY, entry.value_type, not_compared=why)
        else:
            leaves[entry.keys] = _make_leaf(entry, md, sources, strings, legacy_strings, prng)
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
    keys: Iterable[str],
    stored: dict[str, int],
    entries: list[_Entry],
    used: set[str],
    unnamed: dict[KeyPath, str],
    arrays: dict[str, ArrayMetadata],
) -> dict[KeyPath, str]:
    """Add to `unnamed` what the item stores that no entry reads (see unreferenced.py); return the
    entries whose value_type gives them no array although one is stored under their name (`used`:
    the names of the arrays entries read)."""
    no_data: dict[str, KeyPath] = {}
    if len(used) < len(entries):  # else every entry reads an array
        no_data = {e.storage_name: e.keys for e in entries if not e.needs_array and e.spec is None}
    claimed: dict[KeyPath, str] = {}
    if ocdbt:
        extra, claimed = unreferenced.ocdbt_leftovers(keys, set(stored), used, no_data, arrays)
        unnamed.update(extra)
    extra, more = unreferenced.directory_leftovers(item, children, ocdbt, used, no_data)
    unnamed.update(extra)
    claimed.update(more)
    return claimed


def _t5x_arrays(
    entries: list[_Entry], zmeta: dict[str, tuple[int, dict[str, Any]]], children: dict[str, str]
) -> tuple[list[msgpack_format.TsSpec], dict[KeyPath, Leaf]]:
    """T5X: each readable spec's zarr metadata into `zmeta` (a `.zarray` beside the chunks, when
    there is one, wins: the spec carries the same metadata); returns the specs and the leaves for what
    else the checkpoint directory holds (T5X writes tf.data iterator state there), never skipped."""
    specs = [(e, e.spec) for e in entries if e.spec is not None and e.spec.unsupported() is None]
    extra: dict[KeyPath, Leaf] = {}
    for e, spec in specs:
        if spec.path not in zmeta:
            try:
                zmeta[spec.path] = (2, spec.zarr_metadata())
            except (KeyError, TypeError, ValueError) as exc:
                extra[e.keys] = Leaf(e.keys, Kind.ARRAY, e.value_type, error=f"unreadable tensorstore spec: {exc!r}")
    if specs:
        used = {spec.path.split("/")[0] for _, spec in specs}
        for name in sorted(n for n in children if n != "checkpoint" and n not in used):
            why = foreign.describe_file(name) if children[name] == "file" else "a directory no tensorstore spec names"
            extra[(name,)] = Leaf((name,), Kind.ARRAY, "unknown", not_compared=why)
    return [spec for _, spec in specs], extra


def _plain_store(keys: Iterable[str], stored: dict[str, int]) -> bool:
    """An OCDBT database without Orbax's metadata that tensorstore or zarr-python wrote directly:
    n5 or group metadata, or arrays at '/'-separated paths (Orbax names its arrays with '.')."""
    return not stored or any("/" in name for name in stored) or any(k.rpartition("/")[2] in PLAIN_ONLY for k in keys)


def _max_bytes(name: str) -> int:
    return validate.MAX_MSGPACK_BYTES if name == "checkpoint" else validate.MAX_METADATA_BYTES


def _manifest_names(item: Dir, children: dict[str, str]) -> list[str]:
    """The item's OCDBT manifests tensorstore may read: its own and each process's (multi-process saves)."""
    names = [n for n, k in children.items() if k == "file" and n.startswith("manifest")]
    for name, kind in children.items():
        if kind == "dir" and name.startswith("ocdbt.process_"):
            names.extend(
                name + "/" + n
                for n, k in item.child(name).list_children().items()
                if k == "file" and n.startswith("manifest")
            )
    return names


def _audit_ocdbt(item: Dir, children: dict[str, str]) -> None:
    """Local OCDBT: every manifest and data file tensorstore may open must be a regular file
    (a FIFO blocks its reads forever). Directory listings only; no file is opened."""
    if not item.storage.is_local:
        return
    root = os.path.join(item.storage.root_path, item.relpath)
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


def _prng_impls(futures: list[ts.Future[ts.KvStore.ReadResult]], item: Dir) -> dict[str, str]:
    """param name -> random_key_impl, merged over all array_metadatas/process_* files."""
    out: dict[str, str] = {}
    for fut in futures:
        raw = result_bytes(fut, f"{item.display}/array_metadatas")
        if raw is not None:
            doc = _parse_json(raw, item, "array_metadatas/*")
            out.update(orbax.prng_impls(doc, f"{item.display}/array_metadatas"))
    return out


def _entries_from_metadata(
    metadata: tuple[orbax.TreeEntry, ...], packed: list[msgpack_format.MsgpackEntry] | None
) -> tuple[list[_Entry], dict[KeyPath, str]]:
    """The leaves `_METADATA` names, and (why, by path) the legacy msgpack file's entries it lacks:
    orbax restores from both, so a value only the msgpack file holds is never silently dropped."""
    if packed is None:  # the common case, kept lean: one tuple per leaf of a tree of 100k
        # `_Entry(...)` with its defaults spelled out (all 8 fields), without its Python-level __new__.
        new, join = tuple.__new__, ".".join
        return [
            new(_Entry, (e.keys, e.value.value_type, join(e.keys), e.value.skip_deserialize, None, False, None, None))
            for e in orbax.without_placeholders(metadata)
        ], {}
    inline = {m.keys: m for m in packed}
    out: list[_Entry] = []
    for entry in orbax.without_placeholders(metadata):
        vt, skip = entry.value.value_type, entry.value.skip_deserialize
        packed_entry = inline.get(entry.keys)
        name = entry.param_name
        if packed_entry is not None and packed_entry.placeholder is not None:
            name = packed_entry.placeholder
        has_inline = entry.value.aggregated and packed_entry is not None and packed_entry.placeholder is None
        conflict = orbax.msgpack_conflict(entry.value, packed_entry)
        value = packed_entry.value if has_inline and packed_entry is not None else None
        out.append(_Entry(entry.keys, vt, name, skip, value, has_inline, None, conflict))
    named = {e.keys for e in metadata}
    why = "in the msgpack `checkpoint` file but not in _METADATA: not read"
    only_msgpack = {m.keys: why for m in packed or [] if m.keys not in named}
    return out, only_msgpack


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
        out.append(_Entry(m.keys, vt, ".".join(m.keys), True, v, vt not in orbax.EMPTY_VALUE_TYPES))
    return out


def _probe_per_leaf(item: Dir, names: list[str]) -> tuple[dict[str, int], dict[str, bytes]]:
    """Non-OCDBT: which of `<name>/.zarray` and `<name>/zarr.json` exists, asked concurrently; and
    the bytes read on the way (the metadata itself: not read a second time)."""
    futs = {(n, f): item.read_async((n + "/" if n else "") + f) for n in dict.fromkeys(names) for f in METADATA_FILES}
    out: dict[str, int] = {}
    found: dict[str, bytes] = {}
    for (n, f), fut in futs.items():
        try:
            r = fut.result()
        except Exception as e:
            raise storage_error(e, f"{item.display}/{n}/{f}") from e
        if r.state == "value" and n not in out:
            out[n] = METADATA_FILES[f]
            found[_meta_key(n, METADATA_FILES[f])] = bytes(r.value)
    return out, found


def _meta_key(name: str, fmt: int) -> str:
    return (name + "/" if name else "") + METADATA_FILE[fmt]


def _zarr_documents(
    item: Dir, kv: ts.KvStore | None, names: list[str], stored: dict[str, int], inline: dict[str, bytes]
) -> dict[str, tuple[int, Any]]:
    """name -> (zarr format, parsed metadata document) of each stored array in `names`: from the
    bytes the B-tree walk (or the probe) already has, else read, every read issued before any is
    waited for. Leaves of one model share a handful of distinct documents: each is parsed once and
    its object shared (nothing downstream mutates it)."""
    docs: dict[str, tuple[int, Any]] = {}
    pending: dict[str, ts.Future[ts.KvStore.ReadResult]] = {}
    # Per format: bytes -> (format, document), the pair itself shared by every name with those bytes.
    parsed: dict[int, dict[bytes, tuple[int, Any]]] = {fmt: {} for fmt in METADATA_FILE}

    def add(name: str, fmt: int, raw: bytes) -> None:
        got = parsed[fmt].get(raw)
        if got is None:
            got = parsed[fmt][raw] = (fmt, _parse_json(raw, item, _meta_key(name, fmt)))
        docs[name] = got

    meta = METADATA_FILE
    for name in names:
        fmt = stored.get(name)
        if fmt is None or name in docs or name in pending:
            continue
        key = name + "/" + meta[fmt] if name else meta[fmt]  # `_meta_key`, once per leaf of a huge tree
        raw = inline.get(key)
        if raw is None:
            pending[name] = kv.read(key) if kv is not None else item.read_async(key)
        else:
            add(name, fmt, raw)
    for name, fut in pending.items():
        fmt = stored[name]
        raw = result_bytes(fut, f"{item.display}/{_meta_key(name, fmt)}")
        if raw is not None:
            add(name, fmt, raw)
    return docs


def _walk_ocdbt(item: Dir) -> tuple[dict[str, bytes], Iterable[str] | None]:
    """Every key of the item's OCDBT database and its inline zarr metadata, from one B-tree walk;
    ({}, None) when the walk fails (the caller then lists and reads key by key, as before).
    The keys of a big database (a million chunks) stay in `ocdbt.KeySizes`' compact form."""
    try:
        base = ts.KvStore.open(item.kv_spec(), context=item.storage.context).result()
        inline, keys = ocdbt.index(base, frozenset(METADATA_FILES))
    except Exception:  # noqa: BLE001 - an optimisation: the per-key path reports real errors
        return {}, None
    return inline, (keys.strings() if len(keys) <= COMPACT_KEYS else keys)


#: Databases with more keys than this keep them compact (iterated a little slower than a list).
COMPACT_KEYS = 1 << 18


def _legacy_strings(item: Dir, entries: list[_Entry]) -> dict[str, str]:
    """orbax <= 0.3 non-OCDBT kept each string in `<name>/_strings.json`."""
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
    md: ArrayMetadata | str | None,
    sources: _Sources,
    strings: dict[str, Any],
    legacy_strings: dict[str, str],
    prng: dict[str, str],
) -> Leaf:
    """The leaf of one entry; `md`: the typed metadata of the array stored under its name, or why
    it cannot be read, or None (no array stored under that name)."""
    if e.conflict:
        return Leaf(e.keys, Kind.ARRAY, e.value_type, error=e.conflict)
    if e.value_type in orbax.EMPTY_VALUE_TYPES:
        return Leaf(e.keys, Kind.EMPTY, e.value_type)
    if e.has_inline:
        return msgpack_format.inline_leaf(e.keys, e.inline, e.value_type)
    if e.spec is not None and e.spec.unsupported():
        return Leaf(e.keys, Kind.ARRAY, e.value_type, not_compared=e.spec.unsupported())
    if e.value_type == "string" or e.storage_name in legacy_strings:
        name = e.storage_name
        if name in strings:
            return Leaf(e.keys, Kind.STRING, "string", value=strings[name])
        if name in legacy_strings:
            return Leaf(e.keys, Kind.STRING, "string", value=legacy_strings[name])
        return Leaf(e.keys, Kind.STRING, "string", error=f"string {name!r} is missing from _strings.json")
    if md is None:
        return Leaf(
            e.keys,
            Kind.ARRAY,
            e.value_type,
            error=f"array {e.storage_name!r} is listed in the tree metadata but missing from storage",
        )
    if isinstance(md, str):
        return Leaf(e.keys, Kind.ARRAY, e.value_type, error=md)
    return _array_leaf(e, md, sources, prng)


def _array_leaf(e: _Entry, md: ArrayMetadata, sources: _Sources, prng: dict[str, str] | None) -> Leaf:
    impl = prng.get(e.storage_name) if prng else None
    if impl:
        kind = Kind.PRNG_KEY
    elif md.shape == () and e.value_type in orbax.SCALAR_VALUE_TYPES:
        kind = Kind.SCALAR
    else:
        kind = Kind.ARRAY
    source = sources.of(e.storage_name, md)
    # Positional (path, kind, value_type, shape, dtype, source, value, prng_impl): a huge tree builds many.
    return Leaf(e.keys, kind, e.value_type, md.shape, md.dtype, source, None, impl)


class _Sources:
    """The `ArraySource` of each array of one item: one base spec per distinct metadata object
    (its document, the item's kvstore), shared by the leaves using it, and the array's own path."""

    def __init__(self, item: Dir, ocdbt: bool):
        self._kv: dict[str, Any]
        if ocdbt:
            # One base kvstore spec for every leaf of the item: the engine holds one store per item.
            self._kv = {"driver": "ocdbt", "base": item.kv_spec(), "path": "", "cache_pool": META_CACHE}
            self._prefix = ""
        else:  # one directory per array: `Storage.spec` of the array's folder
            self._kv = item.storage.spec(item.relpath)
            self._prefix = str(self._kv["path"])
        self._specs: dict[int, tuple[ArrayMetadata, dict[str, Any]]] = {}
        self._last: tuple[ArrayMetadata | None, dict[str, Any]] = (None, {})

    def of(self, name: str, md: ArrayMetadata) -> ArraySource:
        if md is self._last[0]:  # leaves in a row mostly share one document
            return ArraySource(self._last[1], md, self._prefix + name + "/" if name else self._prefix)
        known = self._specs.get(id(md))
        if known is None:
            base = {
                "driver": str(md.driver),
                "kvstore": self._kv,
                "metadata": md.document,
                # A missing chunk must be an error, not zeros: orbax writes every chunk.
                "fill_missing_data_reads": False,
                "recheck_cached_data": False,
                "recheck_cached_metadata": False,
            }
            known = self._specs[id(md)] = (md, base)  # md held: its id stays its own
        self._last = known
        return ArraySource(known[1], md, self._prefix + name + "/" if name else self._prefix)


def _typed_metadata(
    zmeta: dict[str, tuple[int, dict[str, Any]]], bad: dict[str, str]
) -> tuple[dict[str, ArrayMetadata | str], dict[str, ArrayMetadata]]:
    """name -> the array's typed metadata, or why it cannot be read (`bad`: name -> what the checks
    refused), and the same for the readable ones only; each distinct document is parsed once and
    its object shared by every leaf using it."""
    out: dict[str, ArrayMetadata | str] = {}
    valid: dict[str, ArrayMetadata] = {}
    done: dict[int, ArrayMetadata | str] = {}
    for name, (fmt, md) in zmeta.items():
        if name in bad:
            out[name] = f"unreadable zarr metadata: {bad[name]}"
            continue
        parsed = done.get(id(md))
        if parsed is None:
            parsed = done[id(md)] = _parse_array(fmt, md)
        if isinstance(parsed, ArrayMetadata):
            out[name] = valid[name] = parsed
        else:
            out[name] = f"unreadable zarr metadata {name}/{parsed}"
    return out, valid


def _parse_array(fmt: int, md: Any) -> ArrayMetadata | str:
    """The typed metadata, or why not as "<file name>: <why>"."""
    where = METADATA_FILE[fmt]
    try:
        if not isinstance(md, dict):
            raise ValueError(f"expected a JSON object, got {type(md).__name__}")
        return zarr_metadata.parse("zarr" if fmt == 2 else "zarr3", md)
    except KeyError as exc:  # str(KeyError) is only the quoted key: say what it is
        return f"{where}: no field {exc.args[0]!r}"
    except (TypeError, ValueError, AttributeError, StreamdiffError) as exc:
        return f"{where}: {exc}"
