"""Orbax's own metadata files as typed frozen objects: `_METADATA` (the tree) and `array_metadatas/*`.

`_METADATA` is written by orbax's `InternalTreeMetadata.to_json` (orbax `_src/metadata/tree.py`):
`tree_metadata` maps the repr of each leaf's key tuple (never parsed: it is ambiguous) to its
`key_metadata` (one {key, key_type} per nesting level) and `value_metadata` (value_type,
skip_deserialize, write_shape). The key names below are orbax's, as constants.

Documents are checked by `validate.check_tree_metadata` / `check_array_metadatas` before they are
parsed here, so a hostile one is a one-line error naming the file and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgspec

from ...datatypes import KeyPath
from ...errors import CorruptCheckpointError
from .. import validate
from .msgpack import MsgpackEntry

# `_METADATA` keys (orbax `_src/metadata/tree.py` and `value_metadata_entry.py`).
TREE_METADATA = "tree_metadata"
KEY_METADATA = "key_metadata"
VALUE_METADATA = "value_metadata"
KEY_NAME = "key"
KEY_TYPE = "key_type"
VALUE_TYPE = "value_type"
SKIP_DESERIALIZE = "skip_deserialize"
WRITE_SHAPE = "write_shape"
USE_OCDBT = "use_ocdbt"
USE_ZARR3 = "use_zarr3"
STORE_ARRAY_DATA_EQUAL_TO_FILL_VALUE = "store_array_data_equal_to_fill_value"
VALUE_METADATA_TREE = "value_metadata_tree"
CUSTOM_METADATA = "custom_metadata"

# `array_metadatas/process_<i>` keys (orbax `_src/metadata/array_metadata.py`).
ARRAY_METADATAS = "array_metadatas"
ARRAY_METADATA = "array_metadata"
PARAM_NAME = "param_name"
EXT_METADATA = "ext_metadata"
RANDOM_KEY_IMPL = "random_key_impl"

#: value_types of nodes that hold no data: empty containers and unregistered leaf types.
EMPTY_VALUE_TYPES = frozenset({"None", "Dict", "List", "Tuple", "NamedTuple"})
#: value_types whose value is no stored array: the empty nodes and strings (kept in `_strings.json`).
NO_ARRAY_VALUE_TYPES = EMPTY_VALUE_TYPES | {"string"}
UNKNOWN = "unknown"
#: value_types of a rank-0 array compared as a scalar: Python and numpy scalars (StandardCheckpointHandler
#: stores numpy scalars as 0-d np.ndarray); a 0-d jax.Array such as MaxText's `step` stays an array.
SCALAR_VALUE_TYPES = frozenset({"scalar", "np.ndarray", UNKNOWN})


class KeyType(IntEnum):
    """orbax's `KeyType`: how one nesting level of a key path indexes its container."""

    SEQUENCE = 1  # a list or tuple index (or a FlattenedIndexKey)
    DICT = 2  # a dict key, or an attribute (namedtuple, dataclass and flax struct fields)

    @classmethod
    def of(cls, value: Any) -> KeyType | None:
        """The key type a `key_type` field names; None for one orbax never writes (kept, not refused:
        the tree's structure comes from the key names alone)."""
        try:
            return cls(value)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class ValueMetadata:
    """One leaf's `value_metadata`. Leaves share a few distinct ones: `tree_metadata` interns them."""

    value_type: str  # 'jax.Array', 'np.ndarray', 'scalar', 'string', 'None', 'Dict', ... or a custom typestr
    skip_deserialize: bool

    @property
    def empty(self) -> bool:
        """A node that holds no data (None, {}, [], (), an empty namedtuple)."""
        return self.value_type in EMPTY_VALUE_TYPES

    @property
    def aggregated(self) -> bool:
        """A value orbax wrote into the legacy msgpack `checkpoint` file (orbax <= 0.5, aggregate=True)."""
        return self.skip_deserialize and not self.empty


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One `tree_metadata` entry: the key path, its key types, its value metadata."""

    keys: KeyPath
    key_types: tuple[KeyType | None, ...]
    value: ValueMetadata

    @property
    def param_name(self) -> str:
        """The name orbax stores the value under: the keys joined by '.', unescaped."""
        return ".".join(self.keys)


def read_tree_metadata(raw: bytes, where: str) -> tuple[TreeEntry, ...]:
    """The entries of a `_METADATA` file's bytes: `tree_metadata` of the parsed document, the same
    entries. A document in the plain shape orbax writes (ASCII, nested no deeper than the limit,
    string keys, integer key types, every other field `tree_metadata` reads of the type it needs)
    is decoded by msgspec straight into typed objects, ignored fields skipped unbuilt: for a tree of
    100k leaves, a fraction of the time and memory of building the generic document and walking
    it. Any other document goes through `validate.parse_json` and `tree_metadata`, whose checks then
    say which field is wrong, in the same words."""
    plain = _decode_plain(raw)
    if plain is None:
        return tree_metadata(validate.parse_json(raw, where), where)
    values: dict[tuple[str, bool], ValueMetadata] = {}
    key_types: dict[tuple[int | None, ...], tuple[KeyType | None, ...]] = {}
    names: dict[str, str] = {}  # one string object per distinct key name: a path shares its levels' names
    share = names.setdefault
    out = []
    for entry in plain.tree_metadata.values():
        levels = entry.key_metadata
        keys = [k.key for k in levels]
        raw_types = tuple([k.key_type for k in levels])
        types = key_types.get(raw_types)
        if types is None:
            types = key_types[raw_types] = tuple(KeyType.of(t) for t in raw_types)
        vm = entry.value_metadata
        v = (vm.value_type, vm.skip_deserialize) if vm is not None else (UNKNOWN, False)
        value = values.get(v)
        if value is None:
            value = values[v] = ValueMetadata(*v)
        out.append(TreeEntry(tuple(map(share, keys, keys)), types, value))
    return tuple(out)


class _PlainKey(msgspec.Struct, gc=False):
    """One level of a key path as orbax writes it (an integer key or key type: the checked parse)."""

    key: str
    key_type: int | None = None


class _PlainValue(msgspec.Struct, gc=False):
    value_type: str = UNKNOWN
    skip_deserialize: bool = False


class _PlainEntry(msgspec.Struct, gc=False):
    key_metadata: list[_PlainKey]
    value_metadata: _PlainValue | None = None


class _PlainTree(msgspec.Struct, gc=False):
    tree_metadata: dict[str, _PlainEntry]


_plain_decoder = msgspec.json.Decoder(_PlainTree)


def _decode_plain(raw: bytes) -> _PlainTree | None:
    """`raw` decoded when every check `parse_json` and `check_tree_metadata` make would pass, else None.
    ASCII only: json reads other encodings (UTF-16, a BOM) that msgspec does not, and msgspec does
    not check the UTF-8 of strings it skips; the depth limit is checked on the text first."""
    if validate.text_too_deep(raw) is not False:
        return None
    try:
        return _plain_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None


def tree_metadata(doc: Any, where: str) -> tuple[TreeEntry, ...]:
    """The entries of a `_METADATA` document, in file order; `where` names the file in errors."""
    validate.check_tree_metadata(doc, where)
    values: dict[tuple[str, bool], ValueMetadata] = {}
    out = []
    for entry in doc[TREE_METADATA].values():
        try:
            levels = entry[KEY_METADATA]
            keys = tuple(str(k[KEY_NAME]) for k in levels)
            types = tuple(KeyType.of(k.get(KEY_TYPE)) for k in levels)
        except (KeyError, TypeError, AttributeError) as e:
            raise CorruptCheckpointError(f"{where}: malformed key_metadata") from e
        vm = entry.get(VALUE_METADATA) or {}
        v = (str(vm.get(VALUE_TYPE, UNKNOWN)), bool(vm.get(SKIP_DESERIALIZE, False)))
        value = values.get(v)
        if value is None:
            value = values[v] = ValueMetadata(*v)
        out.append(TreeEntry(keys, types, value))
    return tuple(out)


def without_placeholders(entries: tuple[TreeEntry, ...]) -> list[TreeEntry]:
    """Entries minus those whose key path is a strict prefix of another's: placeholders of empty
    containers that later got children (partial saves), dropped as orbax's `as_nested_tree` does."""
    prefixes: set[KeyPath] = set()
    for e in entries:  # each entry's strict prefixes, shortest last: the set stays closed under prefixes,
        keys = e.keys  # so a prefix already in it has all of its own in too
        while keys:
            keys = keys[:-1]
            if keys in prefixes:
                break
            prefixes.add(keys)
    return [e for e in entries if e.keys not in prefixes]


def msgpack_conflict(value: ValueMetadata, m: MsgpackEntry | None) -> str | None:
    """Why the legacy msgpack `checkpoint` file's entry contradicts `_METADATA`, or None: an inline
    value where `_METADATA` says the value is stored as an array, or a value where it says the node
    is empty. Orbax restores from both files, so neither can be trusted over the other."""
    if m is None or m.placeholder is not None or m.spec is not None:
        return None
    v, vt = m.value, value.value_type
    if value.empty:
        if v is None or (isinstance(v, (dict, list, tuple)) and not v):
            return None
        return f"_METADATA says value_type {vt!r} (no data), the msgpack `checkpoint` file holds a value"
    if not value.skip_deserialize:
        return f"_METADATA says value_type {vt!r} stored as an array, the msgpack `checkpoint` file holds it inline"
    return None


def prng_impls(doc: Any, where: str) -> dict[str, str]:
    """param name -> random_key_impl, from one `array_metadatas/process_<i>` document: the
    only marker of a typed PRNG key."""
    validate.check_array_metadatas(doc, where)
    out: dict[str, str] = {}
    for entry in doc.get(ARRAY_METADATAS, []):
        am = entry.get(ARRAY_METADATA, entry)
        impl = (am.get(EXT_METADATA) or {}).get(RANDOM_KEY_IMPL)
        if impl and PARAM_NAME in am:
            out[am[PARAM_NAME]] = impl
    return out
