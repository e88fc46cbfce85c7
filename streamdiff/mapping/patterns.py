"""The path pattern language of rules, presets and `--only` / `--exclude`.

Patterns are '/'-separated key paths. In a segment, `{name}` captures one key, `{name:int}` one
key made of digits, `*` matches one key; a whole segment `{name:**}` captures one or more keys and
`**` matches any number. Captures can be reused in a template (`fill`). A key that itself contains
'/' (Haiku's `mlp/~/linear_0`) is matched as the keys it spells, so `mlp/~/linear_{i}/w` matches it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..datatypes import KeyPath
from ..errors import StreamdiffError

#: One compiled segment: '**', ('**', name) for a `{name:**}` capture, or the regex of one key.
Segment = str | tuple[str, str] | re.Pattern[str]


class RulesError(StreamdiffError):
    """A rules file (or a pattern in one) that cannot be read or does not make sense."""


@dataclass(frozen=True)
class Pattern:
    """A compiled path pattern (see the module docstring for the syntax)."""

    text: str
    segments: tuple[Segment, ...]

    @staticmethod
    def compile(text: str) -> Pattern:
        segs: list[Segment] = []
        for seg in text.strip("/").split("/") if text.strip("/") else []:
            m = re.fullmatch(r"\{(\w+):\*\*\}", seg)
            if seg == "**":
                segs.append("**")
            elif m:
                segs.append(("**", m.group(1)))
            else:
                segs.append(_segment_regex(seg, text))
        return Pattern(text, tuple(segs))

    def match(self, path: KeyPath) -> dict[str, Any] | None:
        # Keys containing '/' (Haiku's 'mlp/~/linear_0') are matched as the keys they spell.
        flat = tuple(seg for key in path for seg in key.split("/")) if any("/" in k for k in path) else path
        return _match(self.segments, 0, flat, 0, {})

    @property
    def names(self) -> set[str]:
        return set(re.findall(r"\{(\w+)(?::[^}]*)?\}", self.text))


def _segment_regex(seg: str, text: str) -> re.Pattern[str]:
    out = ""
    pos = 0
    for m in re.finditer(r"\{(\w+)(?::(int))?\}|\*", seg):
        out += re.escape(seg[pos : m.start()])
        if m.group(0) == "*":
            out += ".*"
        else:
            out += f"(?P<{m.group(1)}>{'[0-9]+' if m.group(2) else '.+'})"
        pos = m.end()
    out += re.escape(seg[pos:])
    try:
        return re.compile(out, re.DOTALL)
    except re.error as e:
        raise RulesError(f"bad pattern {text!r}: {e}") from e


def _match(segs: tuple[Segment, ...], i: int, path: KeyPath, j: int, caps: dict[str, Any]) -> dict[str, Any] | None:
    if i == len(segs):
        return dict(caps) if j == len(path) else None
    s = segs[i]
    if isinstance(s, (str, tuple)):  # '**' or ('**', name): the only segments that are not a regex
        lo = 0 if s == "**" else 1
        for k in range(len(path), j + lo - 1, -1):  # greedy, then backtrack
            new = dict(caps)
            if isinstance(s, tuple):
                new[s[1]] = tuple(path[j:k])
            r = _match(segs, i + 1, path, k, new)
            if r is not None:
                return r
        return None
    if j >= len(path):
        return None
    m = s.fullmatch(path[j])
    if not m:
        return None
    new = dict(caps)
    for name, v in m.groupdict().items():
        if name in new and new[name] != v:
            return None
        new[name] = v
    return _match(segs, i + 1, path, j + 1, new)


def fill(template: str, caps: dict[str, Any]) -> KeyPath:
    """Build a path from a template and captures: `{rest}` expands a multi-key capture in place."""
    out: list[str] = []
    for seg in template.strip("/").split("/") if template.strip("/") else []:
        m = re.fullmatch(r"\{(\w+)(?::[^}]*)?\}", seg)
        if m and isinstance(caps.get(m.group(1)), tuple):
            out.extend(caps[m.group(1)])
            continue

        def sub(mm: re.Match[str]) -> str:
            v = caps.get(mm.group(1))
            if v is None:
                raise RulesError(f"{template!r} uses {{{mm.group(1)}}}, which its pattern does not capture")
            return "/".join(v) if isinstance(v, tuple) else str(v)

        out.append(re.sub(r"\{(\w+)(?::[^}]*)?\}", sub, seg))
    return tuple(out)
