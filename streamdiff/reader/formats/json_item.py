"""JSON items: orbax `JsonSave` items (file `metadata`), orbax v1 JSON checkpointables (`data.json`),
the manager's `metrics`. Each JSON value is one leaf of kind `json` under the item's name
(`metadata/dataset`), compared exactly (`datatypes.json_equal`: `true` is not `1`, `1` is not `1.0`).
Lists are walked by index, so a changed element is named; empty objects and arrays are empty nodes.
Each leaf records the container type of every level above it (`Leaf.containers`), so a list and an
object keyed "0", "1" (same paths) differ. Other files in the item directory are `not_compared` leaves
named after the file (`metadata/extra.json`): only the orbax file's format is known.
"""

from __future__ import annotations

from typing import Any

from ...datatypes import KeyPath, Kind, Leaf, Tree
from ...errors import CorruptCheckpointError
from ..validate import parse_json


def json_tree(raw: bytes | None, location: str, others: tuple[tuple[str, str], ...] = ()) -> Tree:
    """The JSON document as leaves; `others` are the other children of the item directory (name, kind)."""
    leaves = _document(raw)
    for name, kind in others:
        what = "a directory" if kind == "dir" else "a file"
        why = f"{what} in a JSON item directory beside its document: not read"
        # A document key named like the file keeps its path; the file's leaf gets a marked name.
        path = (name,) if (name,) not in leaves else (f"{name} (file)",)
        leaves[path] = Leaf(path, Kind.JSON, kind, not_compared=why)
    return Tree(location, leaves, "json item")


def _document(raw: bytes | None) -> dict[KeyPath, Leaf]:
    leaves: dict[KeyPath, Leaf] = {}
    if raw is None:
        leaves[()] = Leaf((), Kind.JSON, "json", error="the JSON file vanished while reading")
        return leaves
    try:
        doc = parse_json(raw, "the JSON document")  # depth-limited: a RecursionError is no answer
    except CorruptCheckpointError as e:
        leaves[()] = Leaf((), Kind.JSON, "json", error=str(e))
        return leaves

    def walk(node: Any, keys: KeyPath, chain: tuple[str, ...]) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, keys + (str(k),), chain + ("dict",))
        elif isinstance(node, list) and node:
            for i, v in enumerate(node):
                walk(v, keys + (str(i),), chain + ("list",))
        elif isinstance(node, (dict, list)):
            kind = "Dict" if isinstance(node, dict) else "List"
            leaves[keys] = Leaf(keys, Kind.EMPTY, kind, containers=chain)
        else:
            leaves[keys] = Leaf(keys, Kind.JSON, "json", value=node, containers=chain)

    walk(doc, (), ())
    return leaves
