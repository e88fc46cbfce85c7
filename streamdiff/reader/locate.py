"""Turn what the user typed into the PyTree item directories to read.

Accepts an item directory, a step directory, or a CheckpointManager root (`<root>/<step>/<item>/`),
and flax msgpack files (alone, or as `checkpoint_<step>` files of a `flax.training.checkpoints` folder).
A step's children are PyTree items, JSON items (`JsonSave`, orbax v1 `data.json`), known files that
hold no data, or something else, which becomes an item that is reported as not compared: nothing a
step holds is skipped in silence. Unfinished saves are refused: a `.orbax-checkpoint-tmp` anywhere in
the name, a step whose `_CHECKPOINT_METADATA` has no commit timestamp, a remote step without
`commit_success.txt`, or an item with per-process OCDBT data but no root manifest. Formats we do not
read (TensorFlow checkpoints, safetensors, PyTorch) are refused by name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import StrEnum

from ..errors import NotACheckpointError, NotFoundError, UnfinishedCheckpointError, UsageError
from . import validate
from .formats import foreign, zarr
from .formats import msgpack as msgpack_format
from .localfs import check_file
from .storage import DEFAULT_TIMEOUT, Dir, Storage

TMP_MARK = ".orbax-checkpoint-tmp"
STEP_NAME = re.compile(r"^(?:.*_)?(\d+)$")
#: flax.training.checkpoints files (`checkpoint_<step>`, flax_use_orbax_checkpointing=False).
FLAX_STEP_FILE = re.compile(r"^checkpoint_(\d+)$")
#: Children of a step directory that hold no data: manager bookkeeping and orbax's handler descriptor.
NON_DATA = {"_CHECKPOINT_METADATA", "commit_success.txt", "orbax.checkpoint", "descriptor"}
#: File names a JSON item keeps its document in (orbax JsonCheckpointHandler / v1 JsonHandler).
JSON_FILES = ("metadata", "data.json")
PYTREE_FILES = {"_METADATA", "manifest.ocdbt", "checkpoint"}


class ItemKind(StrEnum):
    """How an item is read: tree.read_item dispatches on it."""

    PYTREE = "pytree"  # an Orbax PyTree item directory (or legacy / T5X msgpack `checkpoint` dir)
    JSON = "json"  # a JSON document: each value a leaf of kind json
    MSGPACK_FILE = "msgpack_file"  # a flax msgpack file
    NOT_READ = "not_read"  # stored under a step, in no format we read: one not_compared leaf
    ZARR = "zarr"  # a plain zarr / n5 hierarchy (formats/zarr.py)


@dataclass(frozen=True)
class Item:
    """One item chosen for diffing."""

    dir: Dir
    name: str  # item name within its step ('' when the user named the item dir itself)
    kind: ItemKind = ItemKind.PYTREE
    file: str | None = None  # JSON / msgpack items: the file within `dir`
    why: str | None = None  # NOT_READ: what it is and why it is not compared
    #: JSON items: the other children of the item directory, (name, 'file' | 'dir'), each reported as
    #: not compared: nothing stored beside the document is skipped silently.
    others: tuple[tuple[str, str], ...] = ()

    @property
    def display(self) -> str:
        return f"{self.dir.display}/{self.file}" if self.file else self.dir.display

    @property
    def file_name(self) -> str:
        """The file of a JSON / msgpack / not-read file item (`locate` always sets it for these)."""
        if self.file is None:
            raise ValueError(f"{self.display}: a directory item has no file")
        return self.file


@dataclass(frozen=True)
class Located:
    """What one side resolved to."""

    items: tuple[Item, ...]
    notes: tuple[str, ...]
    is_root: bool = False  # a CheckpointManager root (where --step applies)
    steps: tuple[int, ...] = ()  # a root's steps, committed or not (for `streamdiff ls`)


def locate(
    url: str, step: int | None = None, io_concurrency: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Located:
    """Resolve a user path to its PyTree item(s)."""
    storage = Storage.open(url, io_concurrency, timeout)
    if storage.is_local and os.path.isfile(storage.root_path):
        parent, name = os.path.split(storage.root_path)
        return Located((_file_item(Dir(Storage.open(parent, io_concurrency, timeout)), name, url),), ())
    root = Dir(storage)
    children = root.list_children()
    if not children and not storage.is_local:
        # Nothing under `url/`: maybe `url` is an object itself (a flax msgpack file in a bucket).
        head, _, base = storage.url.rstrip("/").rpartition("/")
        if base and head.partition("://")[2]:
            above = Dir(Storage.open(head, io_concurrency, timeout))
            try:
                found = above.exists(base)
            except Exception:  # noqa: BLE001 - a missing bucket: said below as "no objects under this path"
                found = False
            if found:
                return Located((_file_item(above, base, url),), ())
    try:
        return _resolve(root, step, children)
    except BaseException:
        storage.forget_listings()
        raise
    # A remote listing stays cached for the tree reads (api forgets it once the trees are built): reading
    # the items lists the same prefixes again, a round trip each.


def _resolve(d: Dir, step: int | None, children: dict[str, str]) -> Located:
    if TMP_MARK in d.display.rsplit("/", 1)[-1]:
        raise UnfinishedCheckpointError(f"{d.display}: unfinished save (name contains '{TMP_MARK}')")
    if not children:
        if d.storage.is_local:
            raise NotACheckpointError(f"{d.display}: empty directory, not a checkpoint")
        raise NotFoundError(f"{d.display}: no objects under this path (missing bucket or path?)")
    kind = classify(children)
    # --step applies to roots; a side given as an item or step directory is used as it is (the
    # caller checks that at least one side was a root).
    if kind in ("item", "unfinished_item"):
        _refuse_foreign(d, children)
        _check_item_finished(d, children)
        _check_step_finished(d, children, required=False)
        return Located((Item(d, ""),), ())
    if kind == "json_item":
        return Located((_json_item(d, "", children),), ())
    if kind == "step":
        return Located(*_step_items(d, children))
    # Zarr before any step guess: a group's children named `layer_0` or `0` are not steps.
    if zarr.is_node(children) or _zarr_children(d, children):
        return Located((Item(d, "", ItemKind.ZARR),), ())
    steps = _steps(children)
    if not steps:
        _refuse_foreign(d, children)
        if any(classify(d.child(n).list_children()) != "other" for n, k in children.items() if k == "dir"):
            # A step of an older CheckpointManager: items inside, no _CHECKPOINT_METADATA.
            items, inner = _step_items(d, children)
            return Located(items, ("step directory without _CHECKPOINT_METADATA (older CheckpointManager)",) + inner)
        raise NotACheckpointError(
            f"{d.display}: not an Orbax checkpoint (no _METADATA, no manifest.ocdbt, no step directories)"
        )
    notes: list[str] = []
    # A root resolves to one step; what sits beside the steps (a flax folder's config.json, an
    # orbax root's descriptor) belongs to no step and is not compared: said, never silent.
    step_names = {name for _, name in steps}
    named: dict[int, list[str]] = {}
    for num, name in steps:
        if TMP_MARK not in name:
            named.setdefault(num, []).append(name)

    def one_name(num: int) -> None:
        if len(named.get(num, [])) > 1:  # `2` and `02`: which one was meant is not ours to guess
            raise UsageError(
                f"{d.display}: {' and '.join(sorted(named[num]))} both name step {num}; give the step directory itself"
            )

    beside = sorted(n for n in children if n not in step_names)
    root_note: tuple[str, ...] = ()
    if beside:
        root_note = (f"beside the steps, not compared: {', '.join(beside[:8])}" + (" ..." if len(beside) > 8 else ""),)
    if step is not None:
        chosen = [name for num, name in steps if num == step]
        if not chosen:
            have = ", ".join(str(n) for n, _ in sorted(set(steps))[:20])
            raise NotFoundError(f"{d.display}: no step {step} (steps: {have})")
        one_name(step)
        items, step_notes = _step(d, chosen[0], children)
        return Located(items, (f"step {step}",) + step_notes + root_note, True, _numbers(steps))
    skipped = []
    for num, name in sorted(steps, reverse=True):
        if TMP_MARK in name:
            skipped.append(name)
            continue
        one_name(num)
        try:
            items, step_notes = _step(d, name, children)
        except UnfinishedCheckpointError:
            skipped.append(name)
            continue
        notes.append(f"step {num} (latest committed of {len(steps)})")
        notes.extend(step_notes)
        if skipped:
            notes.append(f"skipped unfinished: {', '.join(skipped)}")
        return Located(items, tuple(notes) + root_note, True, _numbers(steps))
    raise UnfinishedCheckpointError(f"{d.display}: no committed step (unfinished: {', '.join(skipped)})")


def classify(children: dict[str, str]) -> str:
    """'item', 'unfinished_item', 'json_item', 'step' or 'other' from a directory's children."""
    files = {n for n, k in children.items() if k == "file"}
    if files & PYTREE_FILES:
        return "item"
    if any(n.startswith("ocdbt.process_") for n in children):
        return "unfinished_item"
    # A JSON item has its own commit_success.txt, so it is told apart before the step markers.
    if files & set(JSON_FILES) and not files & {"_CHECKPOINT_METADATA", "orbax.checkpoint"}:
        return "json_item"
    if files & {"_CHECKPOINT_METADATA", "commit_success.txt", "orbax.checkpoint"}:
        return "step"
    return "other"


#: Folder levels searched for zarr arrays under a folder without metadata (tensorstore and jax
#: array_serialization write arrays at nested paths without group metadata).
ZARR_SEARCH_DEPTH = 4
#: Files that make a folder Orbax's (an item or a step): zarr arrays below it are Orbax's own.
ORBAX_FILES = frozenset({"_METADATA", "manifest.ocdbt", "checkpoint", "_CHECKPOINT_METADATA", "commit_success.txt"})


def _zarr_children(d: Dir, children: dict[str, str], depth: int = ZARR_SEARCH_DEPTH) -> bool:
    """A folder of zarr / n5 arrays or groups without metadata of its own, at any of the next
    `depth` levels, not inside an Orbax item or step. Local: one scandir per folder visited;
    remote: one listing."""
    if not d.storage.is_local:
        return _zarr_keys_below(d.list_recursive(), depth)
    for name, kind in children.items():
        if kind != "dir":
            continue
        sub = d.child(name)
        grand = sub.list_children()
        if zarr.is_node(grand):
            return True
        if depth > 1 and not ORBAX_FILES & set(grand) and _zarr_children(sub, grand, depth - 1):
            return True
    return False


def _zarr_keys_below(keys: list[str], depth: int) -> bool:
    orbax_dirs = {k.rpartition("/")[0] for k in keys if k.rpartition("/")[2] in ORBAX_FILES}
    for k in keys:
        parts = k.split("/")
        if parts[-1] not in zarr.MARKERS or not 2 <= len(parts) <= depth + 1:
            continue
        if not any("/".join(parts[:i]) in orbax_dirs for i in range(1, len(parts))):
            return True
    return False


def _steps(children: dict[str, str]) -> list[tuple[int, str]]:
    """Step directories, and flax `checkpoint_<step>` msgpack files."""
    out = []
    for name, kind in children.items():
        m = STEP_NAME.match(name.split(TMP_MARK)[0]) if kind == "dir" else FLAX_STEP_FILE.match(name)
        if m:
            out.append((int(m.group(1)), name))
    return out


def _numbers(steps: list[tuple[int, str]]) -> tuple[int, ...]:
    return tuple(sorted({num for num, _ in steps}))


def _step(root: Dir, name: str, children: dict[str, str]) -> tuple[tuple[Item, ...], tuple[str, ...]]:
    if children.get(name) == "file":
        return (_file_item(root, name, root.display + "/" + name),), ()
    sd = root.child(name)
    children = sd.list_children()
    if classify(children) == "item":  # a step that is itself an item (T5X, flax.training.checkpoints)
        _check_item_finished(sd, children)
        _check_step_finished(sd, children, required=False)
        return (Item(sd, ""),), ()
    return _step_items(sd, children)


def _check_item_finished(d: Dir, children: dict[str, str]) -> None:
    """Per-process OCDBT stores are merged into the root manifest as the save's last act."""
    files = {n for n, k in children.items() if k == "file"}
    if "manifest.ocdbt" not in files and any(n.startswith("ocdbt.process_") for n in children):
        raise UnfinishedCheckpointError(f"{d.display}: unfinished save (per-process OCDBT data but no manifest.ocdbt)")


def _check_step_finished(d: Dir, children: dict[str, str], required: bool) -> None:
    """A step is final when committed: commit timestamp set and, on object storage, the commit file."""
    if "_CHECKPOINT_METADATA" in children:
        raw = d.read("_CHECKPOINT_METADATA")
        meta = validate.parse_json(raw, f"{d.display}/_CHECKPOINT_METADATA") if raw else {}
        if isinstance(meta, dict) and "commit_timestamp_nsecs" in meta and meta["commit_timestamp_nsecs"] is None:
            raise UnfinishedCheckpointError(
                f"{d.display}: unfinished save (_CHECKPOINT_METADATA has no commit timestamp"
                + ("" if "commit_success.txt" in children else ", no commit_success.txt")
                + ")"
            )
    if not d.storage.is_local and required and "commit_success.txt" not in children:
        raise UnfinishedCheckpointError(f"{d.display}: unfinished save (no commit_success.txt on object storage)")


def _step_items(d: Dir, children: dict[str, str]) -> tuple[tuple[Item, ...], tuple[str, ...]]:
    """Every child of a step becomes an item, unless it is bookkeeping (`NON_DATA`) or an empty
    directory; what is in no format we read becomes a NOT_READ item, reported as not compared."""
    if TMP_MARK in d.name:
        raise UnfinishedCheckpointError(f"{d.display}: unfinished save (name contains '{TMP_MARK}')")
    _check_step_finished(d, children, required=True)
    items = []
    unfinished = []
    empty = []
    for name, kind in sorted(children.items()):
        if name in NON_DATA or name.startswith("ocdbt.process_"):
            continue
        if kind == "file":
            items.append(Item(d, name, ItemKind.NOT_READ, file=name, why=foreign.describe_file(name)))
            continue
        sub = d.child(name)
        sub_children = sub.list_children()
        k = classify(sub_children)
        if TMP_MARK in name or k == "unfinished_item":
            unfinished.append(name)
        elif k == "item":
            _check_item_finished(sub, sub_children)
            items.append(Item(sub, name))
        elif k == "json_item" or set(sub_children) - {"commit_success.txt"} == {name}:
            # JSON items; older managers kept metrics as `metrics/metrics` (JsonCheckpointHandler).
            items.append(_json_item(sub, name, sub_children))
        elif not sub_children:
            empty.append(name)
        else:
            items.append(Item(sub, name, ItemKind.NOT_READ, why=foreign.describe_dir(sub_children)))
    if unfinished:
        raise UnfinishedCheckpointError(f"{d.display}: unfinished save (item(s) {', '.join(unfinished)} incomplete)")
    if not items:
        raise NotACheckpointError(f"{d.display}: step directory without any item holding data")
    notes = (f"empty item directories (nothing stored): {', '.join(empty)}",) if empty else ()
    return tuple(items), notes


def _json_item(d: Dir, name: str, children: dict[str, str]) -> Item:
    own = d.name if children.get(d.name) == "file" else None  # e.g. the manager's metrics/metrics
    file = next(f for f in (*JSON_FILES, own) if f and children.get(f) == "file")
    others = tuple((n, k) for n, k in sorted(children.items()) if n not in (file, "commit_success.txt"))
    return Item(d, name, ItemKind.JSON, file=file, others=others)


def _refuse_foreign(d: Dir, children: dict[str, str]) -> None:
    what = foreign.dir_refusal([n for n, k in children.items() if k == "file"])
    if what:
        raise NotACheckpointError(f"{d.display}: {what}, not supported")


def choose_items(a: Located, b: Located, item: str | None) -> list[tuple[str, Item, Item]]:
    """Match the items of both sides: one each, `--item NAME`, or the same set of names."""
    if item is not None:
        pa = {i.name: i for i in a.items}
        pb = {i.name: i for i in b.items}
        # A side with a single item uses it whatever its name, so a composite step can be compared
        # with a plain item; the name must still exist somewhere.
        for side, p in (("A", pa), ("B", pb)):
            if item not in p and (len(p) != 1 or item not in pa and item not in pb):
                raise UsageError(f"no item {item!r} in checkpoint {side} (items: {', '.join(sorted(p)) or '-'})")
        return [("", pa.get(item, a.items[0]), pb.get(item, b.items[0]))]
    if len(a.items) == 1 and len(b.items) == 1:
        return [("", a.items[0], b.items[0])]
    na = sorted(i.name for i in a.items)
    nb = sorted(i.name for i in b.items)
    if na == nb:
        pb = {i.name: i for i in b.items}
        return [(i.name, i, pb[i.name]) for i in sorted(a.items, key=lambda i: i.name)]
    raise UsageError(f"several PyTree items (A: {', '.join(na)}; B: {', '.join(nb)}): choose one with --item NAME")


def _file_item(parent: Dir, name: str, url: str) -> Item:
    """A file: a flax msgpack file is an item; other formats are refused by name."""
    head = b"" if foreign.is_tf_file(name) else _head(parent, name)
    local = os.path.join(parent.storage.root_path, parent.relpath, name) if parent.storage.is_local else None
    what = foreign.file_refusal(head, name, local)
    if what:
        raise NotACheckpointError(f"{url}: {what}, not supported")
    if msgpack_format.is_msgpack_map(head):
        return Item(parent, "", ItemKind.MSGPACK_FILE, file=name)
    raise NotACheckpointError(f"{url}: a file, not an Orbax checkpoint directory nor a flax msgpack file")


def _head(parent: Dir, name: str, n: int = 64) -> bytes:
    if parent.storage.is_local:
        path = os.path.join(parent.storage.root_path, parent.relpath, name)
        check_file(path, f"{parent.display}/{name}")  # a FIFO would block open() forever
        with open(path, "rb") as f:
            return f.read(n)
    try:  # a range read: a multi-GB PyTorch file is refused after 64 bytes
        r = parent.storage.kv.read(parent.relpath + name, byte_range=slice(0, n)).result()
        return bytes(r.value) if r.state == "value" else b""
    except Exception:  # noqa: BLE001 - e.g. a file shorter than the range
        return (parent.read(name) or b"")[:n]
