"""The data that flows between pipeline stages, in one place.

locate -> tree (`Tree` of `Leaf`) -> map (`Leaf` with a `rules.View`) -> pair (`Pair`) -> plan
(`plan.BlockGrid`) -> stream/stats (`stats.LeafStats`) -> report (`LeafResult`, `Report`).
Everything here is a frozen dataclass; the planner's grids, the lazy views and the mergeable
statistics accumulator live next to the code that makes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: A leaf's position in the tree: one string per nesting level (dict key, attribute or index).
KeyPath = tuple[str, ...]

#: Leaf kinds. `empty` is a None / {} / [] / () node: it exists in the tree but holds no data.
KINDS = ("array", "scalar", "string", "prng_key", "empty")


def format_path(path: KeyPath) -> str:
    """'/'-joined display path; '~' and '/' inside a key are escaped as in JSON Pointer (~0, ~1).

    Orbax keys may contain '/' (Haiku's 'mlp/~/linear_0'); escaping keeps the display path
    unambiguous, so it can be parsed back with `parse_path`.
    """
    return "/".join(k.replace("~", "~0").replace("/", "~1") for k in path)


def parse_path(text: str) -> KeyPath:
    """Inverse of `format_path`."""
    if text == "":
        return ()
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in text.split("/"))


@dataclass(frozen=True)
class ArraySource:
    """How to open one stored zarr array with tensorstore, and what its storage looks like."""

    spec: dict[str, Any] = field(hash=False, compare=False)  # tensorstore spec (metadata assumed)
    storage_name: str  # orbax param name: the kvstore prefix of the array
    zarr_format: int  # 2 or 3
    chunk_shape: tuple[int, ...]  # storage grid (zarr3: the shard shape)
    read_chunk_shape: tuple[int, ...]  # smallest decodable unit (zarr3: inner chunk shape)
    codec: str  # human description, e.g. 'zstd(level=1)'

    @property
    def is_local(self) -> bool:
        """Stored on local disk (under OCDBT, the base store decides)."""
        kv = self.spec["kvstore"]
        base = kv.get("base", kv) if kv.get("driver") == "ocdbt" else kv
        return isinstance(base, dict) and base.get("driver") == "file"


@dataclass(frozen=True)
class Leaf:
    """One entry of a checkpoint tree, described from metadata only."""

    path: KeyPath
    kind: str  # one of KINDS
    value_type: str  # orbax value_type ('jax.Array', 'np.ndarray', 'scalar', 'string', 'None', ...)
    shape: tuple[int, ...] | None = None
    dtype: str | None = None  # numpy / ml_dtypes name: 'float32', 'bfloat16', 'int4', ...
    source: ArraySource | None = None  # stored arrays
    value: Any = field(default=None, compare=False)  # strings and values inlined in legacy msgpack
    prng_impl: str | None = None  # typed PRNG keys: 'threefry2x32', 'rbg', 'unsafe_rbg'
    error: str | None = None  # metadata says it exists but storage does not have it
    #: Mapped leaves (rules.View): a lazy transform of stored arrays; None for a stored leaf as is.
    view: Any = field(default=None, compare=False)
    #: The leaf's path in its checkpoint before rules renamed it (None: not renamed).
    source_path: KeyPath | None = None

    @property
    def nbytes(self) -> int:
        """Decoded size in bytes (0 for non-arrays)."""
        if self.shape is None or self.dtype is None:
            return 0
        from .dtypes import itemsize

        n = 1
        for s in self.shape:
            n *= s
        return n * itemsize(self.dtype)


@dataclass(frozen=True)
class Tree:
    """A checkpoint item as an ordered mapping of key paths to leaves, plus how it was found."""

    location: str  # the item directory that was read
    leaves: dict[KeyPath, Leaf] = field(hash=False)
    layout: str  # e.g. 'ocdbt+zarr3', 'per-leaf zarr2', 'legacy msgpack'
    notes: tuple[str, ...] = ()  # what the reader decided on the user's behalf


@dataclass(frozen=True)
class Pair:
    """The two sides of one canonical path after pairing (either may be missing)."""

    path: KeyPath
    a: Leaf | None
    b: Leaf | None
    #: 'compare' (values still to be diffed), 'only_a', 'only_b', 'shape_mismatch',
    #: 'kind_mismatch', 'error', or 'equal' (settled without reading data, e.g. two empty nodes).
    status: str
    message: str | None = None


@dataclass(frozen=True)
class LeafResult:
    """Everything the report says about one path."""

    path: KeyPath
    status: str  # 'equal' | 'different' | 'only_a' | 'only_b' | 'shape_mismatch' | 'error'
    kind: str
    shape: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    dtype: str | None = None
    dtype_b: str | None = None
    kind_b: str | None = None
    dtype_allowed: bool = False  # the dtypes differ in a way a rule allows
    source_a: str | None = None  # where the leaf comes from, when rules mapped it (path or view)
    source_b: str | None = None
    stats: dict[str, Any] | None = field(default=None, compare=False)
    message: str | None = None


@dataclass(frozen=True)
class Report:
    """The answer: what was compared, with which tolerance, and what was found."""

    a: str
    b: str
    atol: float
    rtol: float
    nan_equal: bool
    structure_only: bool
    leaves: tuple[LeafResult, ...]
    notes_a: tuple[str, ...] = ()
    notes_b: tuple[str, ...] = ()
    ignored_a: tuple[str, ...] = ()  # paths dropped by rules, listed rather than silently gone
    ignored_b: tuple[str, ...] = ()
    bytes_read: int = 0
    requests: int = 0
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.leaves if r.status == status)

    @property
    def errors(self) -> int:
        return self.count("error")

    @property
    def dtype_mismatches(self) -> int:
        return sum(1 for r in self.leaves if r.dtype_b is not None and not r.dtype_allowed)

    @property
    def different(self) -> int:
        return sum(1 for r in self.leaves if r.status not in ("equal", "error"))

    @property
    def equal(self) -> bool:
        """True when every path is on both sides and equal within tolerance."""
        return all(r.status == "equal" for r in self.leaves)

    @property
    def identical(self) -> bool:
        """True when, in addition, every compared leaf is bit-for-bit identical."""
        if not self.equal or self.structure_only:
            return False
        return all(r.stats is None or r.stats.get("identical", True) for r in self.leaves)

    @property
    def exit_code(self) -> int:
        """0 equal within tolerance, 1 different, 2 some leaf could not be read."""
        if self.errors:
            return 2
        return 0 if self.equal else 1
