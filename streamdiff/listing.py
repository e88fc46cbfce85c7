"""`streamdiff ls CKPT`: one checkpoint's tree from its metadata only (like `h5ls -r`, `ncdump -h`).

Each leaf with its kind, dtype, shape, chunk shape and stored bytes: for OCDBT items from the sizes
in the B-tree (one dump per item, the same helper the equal-bytes shortcut uses), for per-leaf
directories on local disk from the file sizes; unknown (null) otherwise. Reads no array data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import tensorstore as ts
from rich.console import Console
from rich.text import Text

from .datatypes import Leaf, format_path
from .engine.chunks import ItemSizes
from .errors import NotFoundError
from .mapping.layouts import detect
from .reader.locate import STEP_NAME, Item, locate
from .reader.tree import read_item
from .report import FULL_WIDTH, PATH_MIN, LinePrinter, shorten
from .units import human

SCHEMA = "streamdiff-ls/1"
#: Columns by importance (narrow terminals drop them from the end), and the order they show in.
_IMPORTANCE = ("shape", "dtype", "stored", "chunks", "kind")
_ORDER = ("kind", "dtype", "shape", "chunks", "stored")
#: Keys of zarr metadata, not counted as stored data.
_METADATA_KEYS = (".zarray", ".zattrs", ".zgroup", "zarr.json")


@dataclass(frozen=True)
class Row:
    path: str
    kind: str
    dtype: str | None
    shape: tuple[int, ...] | None
    chunks: tuple[int, ...] | None
    stored_bytes: int | None
    codec: str | None


@dataclass(frozen=True)
class ItemListing:
    name: str
    location: str
    storage_layout: str  # 'ocdbt + zarr3', ...
    rows: tuple[Row, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Listing:
    url: str
    model_layout: str | None  # the model layout detected from the paths ('maxtext-linen'), or None
    step: int | None  # the step listed, when the URL is a CheckpointManager root
    steps: tuple[int, ...]  # every step the root holds (committed or not)
    notes: tuple[str, ...]
    items: tuple[ItemListing, ...]


def list_checkpoint(
    url: str, step: int | None = None, item: str | None = None, io_concurrency: int | None = None
) -> Listing:
    loc = locate(url, step, io_concurrency)
    items = loc.items
    if item is not None:
        items = tuple(i for i in items if i.name == item)
        if not items:
            have = ", ".join(i.name or "(the item itself)" for i in loc.items)
            raise NotFoundError(f"{url}: no item {item!r} (items: {have})")
    steps: tuple[int, ...] = ()
    picked = None
    if loc.is_root:
        steps = loc.steps
        picked = _picked(loc.items[0])
    listed = tuple(_list_item(i) for i in items)
    paths = [tuple(r.path.split("/")) for x in listed for r in x.rows]
    return Listing(url, detect(paths), picked, steps, loc.notes, listed)


def _picked(item: Item) -> int | None:
    rel = item.dir.relpath.rstrip("/").split("/")
    step_dir = rel[-2] if item.name and len(rel) >= 2 else rel[-1]
    m = STEP_NAME.match(step_dir)
    return int(m.group(1)) if m else None


def _list_item(item: Item) -> ItemListing:
    tree = read_item(item)  # every kind of item, as the diff reads it
    ctx = item.dir.storage.context
    sizes = ItemSizes()
    rows = []
    for path, leaf in tree.leaves.items():
        rows.append(
            Row(
                path=format_path(path),
                kind=str(leaf.kind),
                dtype=leaf.dtype,
                shape=leaf.shape,
                chunks=leaf.source.chunk_shape if leaf.source else None,
                stored_bytes=_stored_bytes(leaf, sizes, ctx),
                codec=leaf.source.codec if leaf.source else None,
            )
        )
    return ItemListing(item.name, tree.location, tree.layout, tuple(rows), tree.notes)


def _stored_bytes(leaf: Leaf, sizes: ItemSizes, ctx: ts.Context) -> int | None:
    """Bytes of the leaf's chunks as stored (compressed), metadata files excluded."""
    src = leaf.source
    if src is None:
        return None
    kv = src.spec["kvstore"]
    if kv.get("driver") == "ocdbt":
        found = sizes.for_source(src, ctx)
        if found is None:
            return None
        prefix = found.prefix
        return sum(n for k, n in found.sizes.items(prefix) if not k.endswith(_METADATA_KEYS))
    if kv.get("driver") == "file":
        total = 0
        for root, _, files in os.walk(kv["path"]):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files if f not in _METADATA_KEYS)
        return total
    return None


# ------------------------------------------------------------------------------------------- output


def to_json(lst: Listing) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "url": lst.url,
        "layout": lst.model_layout,  # streamdiff-ls/1 names it "layout"
        "step": lst.step,
        "steps": list(lst.steps),
        "notes": list(lst.notes),
        "items": [
            {
                "name": it.name,
                "location": it.location,
                "storage": it.storage_layout,
                "notes": list(it.notes),
                "leaves": [
                    {
                        "path": r.path,
                        "kind": r.kind,
                        "dtype": r.dtype,
                        "shape": None if r.shape is None else list(r.shape),
                        "chunks": None if r.chunks is None else list(r.chunks),
                        "stored_bytes": r.stored_bytes,
                        "codec": r.codec,
                    }
                    for r in it.rows
                ],
            }
            for it in lst.items
        ],
    }


def dumps(lst: Listing) -> str:
    return json.dumps(to_json(lst), indent=1)


def render(lst: Listing, console: Console) -> None:
    """One line per leaf, fitted to the console width (the path is shortened in the middle)."""
    width = console.width
    out = LinePrinter(console)
    out(Text(lst.url, style="bold"))
    if lst.step is not None:
        others = [s for s in lst.steps if s != lst.step]
        out(f"  step {lst.step}; other steps: {_ranges(others) or 'none'}")
    out(f"  layout: {lst.model_layout or 'none detected'}")
    for n in lst.notes:
        if lst.step is None or not n.startswith(f"step {lst.step}"):  # said on the line above
            out(f"  {n}", "dim")
    for it in lst.items:
        total = sum(r.stored_bytes or 0 for r in it.rows)
        arrays = sum(1 for r in it.rows if r.kind in ("array", "prng_key"))
        head = f"{it.name + ': ' if it.name else ''}{it.storage_layout}, {len(it.rows)} leaves ({arrays} arrays)"
        out(f"{head}, {human(total)}B stored", "bold")
        out(f"  {it.location}", "dim")
        for n in it.notes:
            out(f"  {n}", "dim")
        cols = {
            "kind": [r.kind for r in it.rows],
            "dtype": [r.dtype or "-" for r in it.rows],
            "shape": [_dims(r.shape) for r in it.rows],
            "chunks": [_dims(r.chunks) for r in it.rows],
            "stored": ["-" if r.stored_bytes is None else human(r.stored_bytes) for r in it.rows],
        }
        path_full = max([len("path")] + [len(r.path) for r in it.rows])
        shown: list[tuple[str, int]] = []
        used = 0
        path_min = PATH_MIN if width >= FULL_WIDTH else max(PATH_MIN, width // 2)
        for name in _IMPORTANCE:
            w = max([len(name)] + [len(c) for c in cols[name]])
            if used + w + 2 + min(path_full, path_min) > width and shown:
                break
            shown.append((name, w))
            used += w + 2
        shown.sort(key=lambda c: _ORDER.index(c[0]))
        path_w = max(1, min(path_full, width - used))

        def line(first: str, cells: list[str], path_w: int = path_w, shown: list[tuple[str, int]] = shown) -> str:
            s = first.ljust(path_w)
            for c, (name, w) in zip(cells, shown):
                s += "  " + (c.rjust(w) if name == "stored" else c.ljust(w))
            return s.rstrip()

        console.print(Text(line("path", [n for n, _ in shown]), style="bold"), overflow="fold")
        for i, r in enumerate(it.rows):
            cells = [cols[n][i] for n, _ in shown]
            console.print(line(shorten(r.path, path_w), cells), overflow="fold", highlight=False)


def _dims(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "-"
    return "x".join(map(str, shape)) or "()"


def _ranges(steps: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out: list[str] = []
    i = 0
    while i < len(steps):
        j = i
        while j + 1 < len(steps) and steps[j + 1] == steps[j] + 1:
            j += 1
        out.append(str(steps[i]) if i == j else f"{steps[i]}-{steps[j]}")
        i = j + 1
    return ", ".join(out)
