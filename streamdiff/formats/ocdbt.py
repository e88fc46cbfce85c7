"""An OCDBT database read as its B-tree: every key with its inline value or stored size, in a few reads.

Reading each array's `.zarray` / `zarr.json` through the ocdbt kvstore costs one B-tree lookup per key
(a 100k-leaf checkpoint spent 24 s there); orbax keeps those small values *inline* in the B-tree
leaf nodes, so walking the nodes once (`tensorstore.ocdbt.dump`) yields all of them, level by level
with every node read of a level in flight at once (on GCS each is a round trip).

tensorstore 0.1.86 leaks the Python objects of every dumped node (about 550 bytes per key, never
returned: four dumps of one 200k-key node took RSS from 321 to 667 MB), so a walk is only taken for
databases of at most `MAX_WALK_KEYS` keys (from the manifest's statistics); bigger ones are read key
by key, slower but without the leak.

Node layout (as tensorstore dumps it): an interior node's entries carry a child `location` and a
`subtree_common_prefix`; keys inside a node are relative to the prefix accumulated on the way down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorstore as ts

#: Largest database walked (see the module docstring): at most ~36 MB lost to the dump leak.
MAX_WALK_KEYS = 1 << 16


class TooManyKeys(Exception):
    """The database is bigger than `MAX_WALK_KEYS`: read it key by key instead."""


@dataclass(frozen=True)
class Entry:
    """One key of the database: its bytes when stored inline, else None, and its stored size."""

    key: str
    inline: bytes | None
    size: int


def walk(base: ts.KvStore, keep_inline: frozenset[str] | None = None) -> list[Entry]:
    """Every key of the OCDBT database on `base` (its manifest at the root), in key order.

    `keep_inline`: last path components whose inline values are kept (e.g. {'.zarray'}); others
    report their size only, so chunk bytes inlined in the tree are not held. None keeps none.
    Raises `TooManyKeys`, or whatever tensorstore raises: callers fall back to per-key reads.
    """
    manifest = ts.ocdbt.dump(base).result()
    versions = manifest.get("versions") or []
    if not versions or "location" not in versions[-1].get("root", {}):
        return []  # an empty database
    keys = versions[-1]["root"].get("statistics", {}).get("num_keys", 0)
    if keys > MAX_WALK_KEYS:
        raise TooManyKeys(f"{keys} keys")
    out: list[Entry] = []
    level: list[tuple[str, bytes]] = [(versions[-1]["root"]["location"], b"")]
    while level:
        futures = [(ts.ocdbt.dump(base, loc), prefix) for loc, prefix in level]
        level = []
        for fut, prefix in futures:
            node = fut.result()
            if node.get("height", 0) > 0:
                for e in node["entries"]:
                    level.append((e["location"], prefix + e.get("subtree_common_prefix", b"")))
                continue
            for e in node["entries"]:
                out.append(_entry(prefix + e["key"], e, keep_inline))
    out.sort(key=lambda e: e.key)
    return out


def _entry(raw_key: bytes, e: dict[str, Any], keep_inline: frozenset[str] | None) -> Entry:
    key = raw_key.decode()
    if "inline_value" in e:
        value = e["inline_value"]
        keep = keep_inline is not None and key.rpartition("/")[2] in keep_inline
        return Entry(key, bytes(value) if keep else None, len(value))
    # indirect_value: 'file_id:offset:length'
    return Entry(key, None, int(str(e["indirect_value"]).rsplit(":", 1)[1]))
