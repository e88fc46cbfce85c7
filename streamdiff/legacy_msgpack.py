"""The msgpack `checkpoint` file of orbax <= 0.5.15 (orbax-format.md §8.4).

It mirrors the tree: maps for dicts, arrays for lists, ext type 4 for tuples. A leaf is either the
string `PLACEHOLDER://<param name>` (value stored in tensorstore under that name; `AGGREGATED://` in
very old versions) or the value itself (an "aggregated" leaf). Ext types follow orbax/flax:
1 ndarray, 2 complex, 3 numpy scalar, 4 tuple; arrays are msgpack((shape, dtype name, C bytes)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from . import dtypes  # noqa: F401  (ml_dtypes names for np.dtype)

PLACEHOLDER_PREFIXES = ("PLACEHOLDER://", "AGGREGATED://")


@dataclass(frozen=True)
class MsgpackEntry:
    keys: tuple[str, ...]
    key_types: tuple[int, ...]  # 1 sequence, 2 dict
    placeholder: str | None  # param name the value is stored under, or None when inline
    value: Any  # inline value (ndarray, python scalar, str) or None / {} / [] / () for empty nodes


def _ndarray(data: bytes) -> np.ndarray:
    shape, name, buf = msgpack.unpackb(data, raw=True)
    name = name.decode() if isinstance(name, bytes) else name
    return np.frombuffer(buf, dtype=np.dtype(name)).reshape(shape)


def _ext(code: int, data: bytes) -> Any:
    if code == 1:
        return _ndarray(data)
    if code == 2:
        re, im = msgpack.unpackb(data)
        return complex(re, im)
    if code == 3:
        return _ndarray(data)[()]
    if code == 4:
        return tuple(msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext))
    raise ValueError(f"unknown msgpack ext type {code}")


def decode(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False, ext_hook=_ext)


def entries(raw: bytes) -> list[MsgpackEntry]:
    """Flatten the decoded file into leaves, in file order."""
    out: list[MsgpackEntry] = []

    def walk(node: Any, keys: tuple[str, ...], types: tuple[int, ...]) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, keys + (str(k),), types + (2,))
        elif isinstance(node, (list, tuple)) and node:
            for i, v in enumerate(node):
                walk(v, keys + (str(i),), types + (1,))
        elif isinstance(node, str) and node.startswith(PLACEHOLDER_PREFIXES):
            out.append(MsgpackEntry(keys, types, node.split("://", 1)[1], None))
        else:
            out.append(MsgpackEntry(keys, types, None, node))

    walk(decode(raw), (), ())
    return out
