"""What an Orbax item directory stores that its tree does not name, as leaves that cannot pass.

The tree (`_METADATA`, or the legacy msgpack `checkpoint`) says which arrays to read; anything else
in the item directory would otherwise never be looked at, and two checkpoints whose extra data
differ would be reported identical. So every stored array no tree entry reads, every key of the
OCDBT store outside any array, every tree entry that says "no data" while data is stored under its
name, and every file or folder that is not Orbax's own bookkeeping becomes a `not_compared` leaf.

Orbax's bookkeeping is what real orbax (0.3.5, 0.5.10, 0.12.8, MaxText) writes into an item
directory, listed from the test corpus (tests/orbax_corpus.py): it is matched
by exact name. Only listings the reader already has are used, except for a folder that is not
bookkeeping (listed once, to tell an empty leftover folder from one holding data) and a folder
that holds arrays only below it (keys with '/', listed to find arrays there no entry names).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from ..datatypes import KeyPath, Kind, Leaf
from .formats.zarr_metadata import METADATA_FILE, METADATA_FILES, ArrayMetadata
from .storage import Dir

#: Files Orbax writes into an item directory besides the arrays: the tree metadata, the checkpoint
#: metadata (when a Checkpointer saves straight into the item), the sharding and string tables,
#: the commit marker, the legacy msgpack structure file (a FILE; a DIR of that name is the
#: ArrayCheckpointHandler's array) and the orbax v1 marker.
BOOKKEEPING_FILES = frozenset(
    {
        "_METADATA",
        "_CHECKPOINT_METADATA",
        "_sharding",
        "_strings.json",
        "commit_success.txt",
        "checkpoint",
        "orbax.checkpoint",
    }
)
#: Per-process array metadata (PRNG key markers, write shapes): a folder of JSON files.
BOOKKEEPING_DIRS = frozenset({"array_metadatas"})
#: Only beside an OCDBT store: its root B-tree folder and the per-process stores it points into.
OCDBT_DIRS = frozenset({"d"})
OCDBT_DIR_PREFIX = "ocdbt.process_"
#: tensorstore's OCDBT manifest, and its numbered manifests (`manifest.%016x`).
OCDBT_MANIFEST = re.compile(r"manifest\.(ocdbt|[0-9a-f]{16})")
#: orbax's DescriptorHandler folder: a text proto describing the checkpoint, no values.
DESCRIPTOR_DIR = "descriptor"
DESCRIPTOR_FILE = re.compile(r"descriptor\.pbtxt|uuid-[^/]*")
#: Shown per folder: at most this many of the keys it holds.
SHOWN = 3
#: Chunk keys whose test result is remembered, per distinct metadata document.
REMEMBERED = 1 << 12


def is_bookkeeping(name: str, kind: str, ocdbt: bool) -> bool:
    """True for a child of the item directory that orbax writes besides the arrays."""
    if kind == "file":
        return name in BOOKKEEPING_FILES or (ocdbt and OCDBT_MANIFEST.fullmatch(name) is not None)
    return name in BOOKKEEPING_DIRS or (ocdbt and (name in OCDBT_DIRS or name.startswith(OCDBT_DIR_PREFIX)))


def owner(key: str, arrays: set[str] | frozenset[str]) -> str | None:
    """The array a stored key belongs to (its longest '/'-prefix that is an array name: `{'a': v,
    'a/x': w}` are arrays `a` and `a/x`), or None when it is under no array. The bare-leaf array
    '' owns every key no other array does."""
    found = "" if "" in arrays else None
    i = key.find("/")
    while i != -1:
        if key[:i] in arrays:
            found = key[:i]
        i = key.find("/", i + 1)
    return found


def arrays_in(keys: Iterable[str]) -> dict[str, int]:
    """Array name -> zarr version among stored keys: only keys ending in .zarray / zarr.json define
    arrays (the name is the key's prefix)."""
    out: dict[str, int] = {}
    for k in keys:
        head, _, last = k.rpartition("/")
        if last in METADATA_FILES:
            out.setdefault(head, METADATA_FILES[last])
    return out


def _shown(keys: list[str]) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:SHOWN]) + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def _contents(keys: list[str]) -> str:
    """A folder's contents in a few words: the arrays it holds, else its files."""
    arrays = arrays_in(keys)
    if "" in arrays:  # the folder is itself an array
        return f"a zarr array ({len(keys)} file(s))" + (
            f" and arrays {_shown(list(arrays.keys() - {''}))}" if len(arrays) > 1 else ""
        )
    return f"zarr array(s) {_shown(list(arrays))}" if arrays else f"{len(keys)} file(s): {_shown(keys)}"


def chunk_key_test(md: ArrayMetadata) -> Callable[[str], bool]:
    """Whether a key (relative to its array) is the array's metadata file or a cell of its storage grid."""
    meta = METADATA_FILE[md.zarr_format]
    enc = md.key_encoding
    if md.ndim == 0 or enc.rank0 is None:  # scalars and n5: ArrayMetadata.is_chunk_key's own rules
        return lambda rest: rest == meta or md.is_chunk_key(rest)
    # md.is_chunk_key, with what depends on the metadata only worked out once: a checkpoint saved on
    # many devices holds a million chunk keys, each tested here.
    head = enc.prefix + enc.separator if enc.prefix else ""
    sep, ndim, grid = enc.separator, md.ndim, md.grid

    def test(rest: str) -> bool:
        if rest == meta:
            return True
        if not rest.startswith(head):
            return False
        parts = rest[len(head) :].split(sep)
        if len(parts) != ndim:
            return False
        for part, cells in zip(parts, grid):
            if not (part.isascii() and part.isdigit()) or int(part) >= cells:
                return False
        return True

    return test


#: name -> (its chunk-key test, the answers that test remembers)
_Tests = dict[str, tuple[Callable[[str], bool], dict[str, bool]]]


def ocdbt_leftovers(
    keys: Iterable[str],
    stored: set[str],
    used: set[str],
    no_data: dict[str, KeyPath],
    arrays: dict[str, ArrayMetadata] | None = None,
) -> tuple[dict[KeyPath, str], dict[KeyPath, str]]:
    """OCDBT: stored arrays no tree entry reads, keys outside every array, and keys inside an array
    the tree reads that are neither its metadata nor a cell of its chunk grid (`arrays`: name ->
    metadata of the arrays read whose metadata could be parsed).

    Returns ({(name,): why} for new leaves, {entry path: "yet ... is stored"} for entries whose
    value_type gives them no array)."""
    extra: dict[KeyPath, str] = {}
    claimed: dict[KeyPath, str] = {}
    for unread in sorted(stored - used):
        if unread in no_data:
            claimed[no_data[unread]] = f"yet zarr array {unread!r} is stored in the OCDBT store: not read"
        else:
            extra[(unread,)] = f"zarr array {unread!r} in the OCDBT store, not named by the checkpoint's tree: not read"
    strays: dict[str, list[str]] = {}
    odd: dict[str, list[str]] = {}
    tests: _Tests = {}
    # Arrays share a few metadata objects, and their chunk keys repeat ('0.0', '0.1'...): each test
    # remembers its first answers.
    by_doc: dict[int, tuple[Callable[[str], bool], dict[str, bool]]] = {}
    for n, md in (arrays or {}).items():
        if n in used:
            if id(md) not in by_doc:
                by_doc[id(md)] = (chunk_key_test(md), {})
            tests[n] = by_doc[id(md)]
    if "" not in stored and "/" not in "\n".join(stored):  # orbax's names: a key's array is its first part
        _owned_keys(keys, stored, tests, strays, odd)
    else:
        _nested_keys(keys, stored, tests, strays, odd)
    for head, inside in sorted(strays.items()):
        why = f"{len(inside)} key(s) in the OCDBT store outside any zarr array ({_shown(inside)}): not read"
        extra[(head,)] = extra[(head,)] + "; also " + why if (head,) in extra else why
    for name, inside in sorted(odd.items()):
        why = f"{len(inside)} key(s) in array {name!r} that are not its chunks ({_shown(inside)}): not read"
        extra[(name,)] = extra[(name,)] + "; also " + why if (name,) in extra else why
    return extra, claimed


def _check(rest: str, test: Callable[[str], bool], known: dict[str, bool]) -> bool:
    ok = known.get(rest)
    if ok is None:
        ok = test(rest)
        if len(known) < REMEMBERED:
            known[rest] = ok
    return ok


def _owned_keys(
    keys: Iterable[str], stored: set[str], tests: _Tests, strays: dict[str, list[str]], odd: dict[str, list[str]]
) -> None:
    """`ocdbt_leftovers`' key check when no array name holds '/' and none is '': a key belongs to
    the array named by its first part, if any. Keys in any order."""
    current: str | None = None
    owned = False
    test: Callable[[str], bool] | None = None
    known: dict[str, bool] = {}
    for k in keys:
        name, sep, rest = k.partition("/")
        if not sep:
            strays.setdefault(k, []).append(k)
            continue
        if name != current:
            current, owned = name, name in stored
            test, known = tests.get(name, (None, known))
        if not owned:
            strays.setdefault(name, []).append(k)
        elif test is not None:
            ok = known.get(rest)
            if ok is None:
                ok = _check(rest, test, known)
            if not ok:
                odd.setdefault(name, []).append(rest)


def _nested_keys(
    keys: Iterable[str], stored: set[str], tests: _Tests, strays: dict[str, list[str]], odd: dict[str, list[str]]
) -> None:
    """`ocdbt_leftovers`' key check for any array names: each key's owner is its longest prefix
    that names an array."""
    # Keys come sorted: a run of chunk keys shares its array, unless one array's name is below another's.
    # (A name without '/' can only be below the bare-leaf array '', and only names with '/' below others.)
    runs = not ("" in stored and len(stored) > 1) and not any(owner(n, stored) is not None for n in stored if "/" in n)
    last: str | None = None
    name: str | None = None
    test: Callable[[str], bool] | None = None
    known: dict[str, bool] = {}
    for k in keys:
        if last is None or not runs or not k.startswith(last):
            name = owner(k, stored)
            if name is None:
                strays.setdefault(k.partition("/")[0], []).append(k)
                last = None
                continue
            last = name + "/" if name else ""
            test, known = tests.get(name, (None, known))
        if test is not None and name is not None:
            rest = k[len(last) :]
            if not _check(rest, test, known):
                odd.setdefault(name, []).append(rest)


def directory_leftovers(
    item: Dir, children: dict[str, str], ocdbt: bool, used: set[str], no_data: dict[str, KeyPath]
) -> tuple[dict[KeyPath, str], dict[KeyPath, str]]:
    """Children of the item directory that are neither bookkeeping nor (without OCDBT) the folders
    of the arrays the tree reads. Empty folders hold nothing and pass.

    Returns ({(name,): why} for new leaves, {entry path: "yet ... is stored"} for entries whose
    value_type gives them no array)."""
    extra: dict[KeyPath, str] = {}
    claimed: dict[KeyPath, str] = {}
    if not ocdbt and "" in used:
        return extra, claimed  # a bare leaf: the item directory is the array's own folder
    tops = {n.split("/")[0] for n in used} if not ocdbt else set()
    for name, kind in sorted(children.items()):
        if is_bookkeeping(name, kind, ocdbt):
            continue
        if name in tops:
            if kind == "dir" and name not in used:  # arrays below it only ('/' in their names)
                prefix = name + "/"
                keys = [prefix + k for k in _files(item.child(name))]
                strays = [k for k in keys if owner(k, used) is None]
                if strays:
                    inside = _contents([k[len(prefix) :] for k in strays])
                    extra[(name,)] = f"folder {name!r} holding {inside}, not named by the checkpoint's tree: not read"
            continue
        if kind == "file":
            what = "a file"
            why = "a file Orbax does not write, not named by the checkpoint's tree: not read"
        else:
            keys = _files(item.child(name))
            if not keys:
                continue  # an empty folder (old orbax left one per leaf beside an OCDBT store)
            if name == DESCRIPTOR_DIR and all(DESCRIPTOR_FILE.fullmatch(k) for k in keys):
                continue
            what = f"a folder holding {_contents(keys)}"
            where = " beside the OCDBT store" if ocdbt else ""
            why = f"{what}{where}, not named by the checkpoint's tree: not read"
        if name in no_data and not ocdbt:
            claimed[no_data[name]] = f"yet {what} is stored under its name: not read"
        else:
            extra[(name,)] = why
    return extra, claimed


def _files(d: Dir) -> list[str]:
    """Keys below `d`, without the zero-byte 'folder/' marker objects of object storage (the GCS
    console's and gcsfuse's folders), which hold no data."""
    return [k for k in d.list_recursive() if k and not k.endswith("/")]


def add_leaves(leaves: dict[KeyPath, Leaf], extra: dict[KeyPath, str]) -> None:
    """One `not_compared` leaf per path; a path the tree already has gets a suffix on its last key
    rather than replacing the leaf the tree reads."""
    for path, why in extra.items():
        while path in leaves:
            path = path[:-1] + (path[-1] + " [not in tree]",)
        leaves[path] = Leaf(path, Kind.ARRAY, "unknown", not_compared=why)
