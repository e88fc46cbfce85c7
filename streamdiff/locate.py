"""Turn what the user typed into the PyTree item directories to read.

Accepts an item directory, a step directory, or a CheckpointManager root (orbax-format.md §2, §12.A).
Unfinished saves are refused: a `.orbax-checkpoint-tmp` anywhere in the name, a step whose
`_CHECKPOINT_METADATA` has no commit timestamp, a remote step without `commit_success.txt`, or an
item with per-process OCDBT data but no root manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgpack

from . import validate
from .errors import NotACheckpointError, NotFoundError, StreamdiffError, UnfinishedCheckpointError, UsageError
from .storage import Dir, Storage

TMP_MARK = ".orbax-checkpoint-tmp"
STEP_NAME = re.compile(r"^(?:.*_)?(\d+)$")
#: Children of a step directory that are never PyTree items.
NOT_ITEMS = {"metrics", "descriptor", "metadata"}


@dataclass(frozen=True)
class Item:
    """One PyTree item directory chosen for diffing."""

    dir: Dir
    name: str  # item name within its step ('' when the user named the item dir itself)


@dataclass(frozen=True)
class Located:
    """What one side resolved to."""

    items: tuple[Item, ...]
    notes: tuple[str, ...]
    is_root: bool = False  # a CheckpointManager root (where --step applies)


def locate(url: str, step: int | None = None, io_concurrency: int | None = None) -> Located:
    """Resolve a user path to its PyTree item(s)."""
    storage = Storage.open(url, io_concurrency)
    root = Dir(storage)
    if storage.is_local:
        import os

        if os.path.isfile(storage.local_root):
            raise _file_error(storage.local_root, url)
    return _resolve(root, step)


def _resolve(d: Dir, step: int | None) -> Located:
    if TMP_MARK in d.display.rsplit("/", 1)[-1]:
        raise UnfinishedCheckpointError(f"{d.display}: unfinished save (name contains '{TMP_MARK}')")
    children = d.list_children()
    if not children:
        if d.storage.is_local:
            raise NotACheckpointError(f"{d.display}: empty directory, not a checkpoint")
        raise NotFoundError(f"{d.display}: no objects under this path (missing bucket or path?)")
    kind = classify(children)
    # --step applies to roots; a side given as an item or step directory is used as it is (the
    # caller checks that at least one side was a root).
    if kind in ("item", "unfinished_item"):
        _check_item_finished(d, children)
        _check_step_finished(d, children, required=False)
        return Located((Item(d, ""),), ())
    if kind == "step":
        return Located(_step_items(d, children), ())
    steps = _steps(children)
    if not steps:
        raise NotACheckpointError(
            f"{d.display}: not an Orbax checkpoint (no _METADATA, no manifest.ocdbt, no step directories)"
        )
    notes: list[str] = []
    if step is not None:
        chosen = [name for num, name in steps if num == step]
        if not chosen:
            have = ", ".join(str(n) for n, _ in sorted(set(steps))[:20])
            raise NotFoundError(f"{d.display}: no step {step} (steps: {have})")
        sd = d.child(chosen[0])
        items = _step_items(sd, sd.list_children())
        return Located(items, (f"step {step}",), is_root=True)
    skipped = []
    for num, name in sorted(steps, reverse=True):
        sd = d.child(name)
        if TMP_MARK in name:
            skipped.append(name)
            continue
        try:
            items = _step_items(sd, sd.list_children())
        except UnfinishedCheckpointError:
            skipped.append(name)
            continue
        notes.append(f"step {num} (latest committed of {len(steps)})")
        if skipped:
            notes.append(f"skipped unfinished: {', '.join(skipped)}")
        return Located(items, tuple(notes), is_root=True)
    raise UnfinishedCheckpointError(f"{d.display}: no committed step (unfinished: {', '.join(skipped)})")


def classify(children: dict[str, str]) -> str:
    """'item', 'unfinished_item', 'step' or 'other' from a directory's children (§12.A)."""
    files = {n for n, k in children.items() if k == "file"}
    if files & {"_METADATA", "manifest.ocdbt", "checkpoint"}:
        return "item"
    if any(n.startswith("ocdbt.process_") for n in children):
        return "unfinished_item"
    if files & {"_CHECKPOINT_METADATA", "commit_success.txt", "orbax.checkpoint"}:
        return "step"
    return "other"


def _steps(children: dict[str, str]) -> list[tuple[int, str]]:
    out = []
    for name, kind in children.items():
        if kind != "dir":
            continue
        m = STEP_NAME.match(name.split(TMP_MARK)[0])
        if m:
            out.append((int(m.group(1)), name))
    return out


def _check_item_finished(d: Dir, children: dict[str, str]) -> None:
    files = {n for n, k in children.items() if k == "file"}
    if not files & {"_METADATA", "manifest.ocdbt", "checkpoint"} and any(
        n.startswith("ocdbt.process_") for n in children
    ):
        raise UnfinishedCheckpointError(
            f"{d.display}: unfinished save (per-process OCDBT data but no manifest.ocdbt or _METADATA)"
        )


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


def _step_items(d: Dir, children: dict[str, str]) -> tuple[Item, ...]:
    if TMP_MARK in d.name:
        raise UnfinishedCheckpointError(f"{d.display}: unfinished save (name contains '{TMP_MARK}')")
    _check_step_finished(d, children, required=True)
    items = []
    unfinished = []
    for name, kind in sorted(children.items()):
        if kind != "dir" or name in NOT_ITEMS or name.startswith("ocdbt.process_"):
            continue
        sub = d.child(name)
        sub_children = sub.list_children()
        k = classify(sub_children)
        if TMP_MARK in name or k == "unfinished_item":
            unfinished.append(name)
        elif k == "item":
            items.append(Item(sub, name))
    if unfinished:
        raise UnfinishedCheckpointError(f"{d.display}: unfinished save (item(s) {', '.join(unfinished)} incomplete)")
    if not items:
        raise NotACheckpointError(f"{d.display}: step directory without any PyTree item")
    return tuple(items)


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


def _file_error(path: str, url: str) -> StreamdiffError:
    """A plain file: maybe a flax msgpack checkpoint, which we name; otherwise not a checkpoint."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
        obj = msgpack.unpackb(head, raw=False, strict_map_key=False, ext_hook=lambda c, d: None)
        if isinstance(obj, dict):
            return NotACheckpointError(
                f"{url}: a flax msgpack checkpoint file (flax_use_orbax_checkpointing=False), not an Orbax directory"
            )
    except Exception:  # noqa: BLE001 - anything unparsable is simply "not a checkpoint"
        pass
    return NotACheckpointError(f"{url}: a file, not an Orbax checkpoint directory")
