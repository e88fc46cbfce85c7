"""JSON items: orbax `JsonSave` items (file `metadata`), orbax v1 JSON checkpointables (`data.json`),
the manager's `metrics`. Each JSON value is one leaf of kind `json` under the item's name
(`metadata/dataset`), compared exactly (`datatypes.json_equal`: `true` is not `1`, `1` is not `1.0`).
Lists are walked by index, so a changed element is named; empty objects and arrays are empty nodes.
"""

from __future__ import annotations

import json
from typing import Any

from ..datatypes import KeyPath, Kind, Leaf, Tree


def json_tree(raw: bytes | None, location: str) -> Tree:
    leaves: dict[KeyPath, Leaf] = {}
    if raw is None:
        leaves[()] = Leaf((), Kind.JSON, "json", error="the JSON file vanished while reading")
        return Tree(location, leaves, "json item")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        leaves[()] = Leaf((), Kind.JSON, "json", error=f"unreadable JSON ({e})")
        return Tree(location, leaves, "json item")

    def walk(node: Any, keys: KeyPath) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, keys + (str(k),))
        elif isinstance(node, list) and node:
            for i, v in enumerate(node):
                walk(v, keys + (str(i),))
        elif isinstance(node, (dict, list)):
            leaves[keys] = Leaf(keys, Kind.EMPTY, "Dict" if isinstance(node, dict) else "List")
        else:
            leaves[keys] = Leaf(keys, Kind.JSON, "json", value=node)

    walk(doc, ())
    return Tree(location, leaves, "json item")
