"""Sizes as people type them ('512M', '4G'), shared by the CLI and the Python API."""

from __future__ import annotations

import math
import re

from .errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int, name: str = "--max-memory") -> int:
    """'512M', '4G', '1.5GiB', '1000000' (or an int) -> bytes, in binary units; `name` says which
    option or argument was wrong when the text is not a size."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.match(text) if isinstance(text, str) else None
    if not m:
        raise UsageError(f"{name}: {text!r} is not a size (examples: 512M, 4G, 1.5GiB)")
    value = float(m.group(1)) * _SCALE[m.group(2).lower()]
    if not math.isfinite(value) or value >= 1 << 60:  # '1e400' would overflow int()
        raise UsageError(f"{name}: {text!r} is too large")
    return int(value)


_SHORT = ("", "K", "M", "G", "T")
_LONG = ("bytes", "KiB", "MiB", "GiB", "TiB")


def human(n: float) -> str:
    """Bytes in binary units as options take them: 2G, 512M, 1.5K, 100."""
    return _scaled(n, long=False)


def human_bytes(n: float) -> str:
    """Bytes in binary units for sentences: 2 GiB, 1.5 KiB, 100 bytes."""
    return _scaled(n, long=True)


def _scaled(n: float, long: bool) -> str:
    names = _LONG if long else _SHORT
    for i, unit in enumerate(names):
        if n < 1024 or i == len(names) - 1:
            if i == 0:
                return f"{n} {unit}" if long else f"{n:g}"
            return f"{n:.4g} {unit}" if long else f"{n:.4g}{unit}"
        n /= 1024
    return str(n)
