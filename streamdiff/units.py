"""Sizes as people type them ('512M', '4G'), shared by the CLI and the Python API."""

from __future__ import annotations

import math
import re

from .errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: Sizes from this up are refused as typos: an exbibyte of memory or of blocks is no real request.
MAX_SIZE = 1 << 60


def parse_size(text: str | int, name: str = "--max-memory") -> int:
    """'512M', '4G', '1.5GiB', '1000000' (or an int) -> bytes, in binary units; `name` says which
    option or argument was wrong when the text is not a size."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.match(text) if isinstance(text, str) else None
    if not m:
        raise UsageError(f"{name}: {text!r} is not a size (examples: 512M, 4G, 1.5GiB)")
    value = float(m.group(1)) * _SCALE[m.group(2).lower()]
    if not math.isfinite(value) or value >= MAX_SIZE:  # '1e400' would overflow int()
        raise UsageError(f"{name}: {text!r} is too large")
    return int(value)


def _scaled(n: float) -> tuple[float, str]:
    """`n` bytes in the largest binary unit ('', 'K', 'M', 'G', 'T') that keeps it at least 1."""
    for unit in ("", "K", "M", "G"):
        if n < 1024:
            return n, unit
        n /= 1024
    return n, "T"


def human(n: float) -> str:
    """Bytes as `--max-memory` takes them (and `streamdiff ls` shows them): 2G, 512M, 1.5K, 100."""
    v, unit = _scaled(n)
    return f"{v:g}" if unit == "" else f"{v:.4g}{unit}"


def human_bytes(n: int) -> str:
    """Bytes in prose (error messages): '100 bytes', '1.5 KiB', '64 MiB'."""
    v, unit = _scaled(n)
    return f"{v} bytes" if unit == "" else f"{v:.4g} {unit}iB"
