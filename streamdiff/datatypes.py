"""The data that flows between pipeline stages, in one place.

locate -> tree (`Tree` of `Leaf`) -> map (`Leaf` with a `mapping.views.View`) -> pair (`Pair`) -> plan
(`plan.BlockGrid`) -> stream/stats (`stats.LeafStats`) -> report (`LeafResult`, `Report`).
Everything here is a frozen dataclass; the planner's grids, the lazy views and the mergeable
statistics accumulator live next to the code that makes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mapping.views import View
    from .reader.formats.zarr_metadata import ArrayMetadata

#: A leaf's position in the tree: one string per nesting level (dict key, attribute or index).
KeyPath = tuple[str, ...]


class Kind(StrEnum):
    """What a leaf holds. `empty` is a None / {} / [] / () node: it exists in the tree but holds no
    data. `json` is one value of a JSON document (an item saved with JsonSave, zarr attributes)."""

    ARRAY = "array"
    SCALAR = "scalar"
    STRING = "string"
    PRNG_KEY = "prng_key"
    EMPTY = "empty"
    JSON = "json"


class Status(StrEnum):
    """What the report says of one path. StrEnum: compares equal to the JSON contract's strings.

    `not_compared`: a reader met something it could not interpret (an unknown item type, a file in
    no format we read); it is listed, and it keeps the verdict from "identical" (see `Verdict`).
    """

    EQUAL = "equal"
    DIFFERENT = "different"
    ONLY_A = "only_a"
    ONLY_B = "only_b"
    SHAPE_MISMATCH = "shape_mismatch"
    ERROR = "error"
    NOT_COMPARED = "not_compared"


class Verdict(StrEnum):
    """The one answer a report gives; `exit_code` follows from it and from nothing else."""

    IDENTICAL = "identical"  # every value compared, bit for bit equal
    EQUAL = "equal"  # every value compared, equal within tolerance
    SAME_STRUCTURE = "same_structure"  # --structure-only: paths, shapes, dtypes match
    #: --sample: nothing differs in the blocks compared; the rest was not read, so never "identical"
    NO_DIFFERENCES_SAMPLED = "no_differences_sampled"
    DIFFERENT = "different"
    INCOMPLETE = "incomplete"  # something stored was not compared: never 0
    ERROR = "error"

    @property
    def exit_code(self) -> int:
        if self in (Verdict.IDENTICAL, Verdict.EQUAL, Verdict.SAME_STRUCTURE, Verdict.NO_DIFFERENCES_SAMPLED):
            return 0
        return 1 if self is Verdict.DIFFERENT else 2


def json_equal(a: Any, b: Any, nan_equal: bool = True) -> bool:
    """Exact equality of two JSON values: types too (`true` is not `1`, `1` is not `1.0`), NaN equal to
    NaN (the same stored value; not with `nan_equal=False`, as for arrays under --nan-unequal), `0.0`
    not `-0.0` (different text), key order ignored. Python's `==` would call True == 1 == 1.0 equal."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k], nan_equal) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(json_equal(x, y, nan_equal) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return nan_equal and math.isnan(b)
    if isinstance(a, float) and a == 0.0:
        # 0.0 == -0.0 in Python, but they are different JSON text (and different stored bits).
        return b == 0.0 and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


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


@dataclass(frozen=True, slots=True)
class ArraySource:
    """How to open one stored zarr array with tensorstore, and what its storage looks like.

    `metadata` is the array's parsed metadata (formats/zarr_metadata.py), shared by every leaf
    whose document is the same; the spec carries its document for tensorstore. A reader of many
    arrays gives them one shared `base_spec` each (per item and metadata document) and each its own
    `path` in that spec's kvstore: `spec` is spelled out when asked for, so a tree of 100k leaves
    does not hold 100k specs."""

    #: The tensorstore spec (metadata assumed); with `path`, all of it but the kvstore's path.
    base_spec: dict[str, Any] = field(hash=False, compare=False)
    metadata: ArrayMetadata
    path: str | None = None  # the array's path in the kvstore of `base_spec` (None: `base_spec` is whole)

    @property
    def spec(self) -> dict[str, Any]:
        """The tensorstore spec: a new dict (its kvstore too) when `path` is set, never to be mutated."""
        if self.path is None:
            return self.base_spec
        spec = dict(self.base_spec)
        spec["kvstore"] = {**spec["kvstore"], "path": self.path}
        return spec

    @property
    def zarr_format(self) -> int:
        """2 or 3 (0: n5)."""
        return self.metadata.zarr_format

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """The storage grid (zarr3 sharded: the shard shape)."""
        return self.metadata.chunk_shape

    @property
    def read_chunk_shape(self) -> tuple[int, ...]:
        """The smallest decodable unit (zarr3 sharded: the inner chunk shape)."""
        return self.metadata.read_chunk_shape

    @property
    def codec(self) -> str:
        """Human description, e.g. 'zstd(level=1)'."""
        return self.metadata.codec

    @property
    def is_local(self) -> bool:
        """Stored on local disk (under OCDBT, the base store decides)."""
        kv = self.base_spec["kvstore"]
        base = kv.get("base", kv) if kv.get("driver") == "ocdbt" else kv
        return isinstance(base, dict) and base.get("driver") == "file"


@dataclass(frozen=True, slots=True)
class Leaf:
    """One entry of a checkpoint tree, described from metadata only."""

    path: KeyPath
    kind: Kind
    value_type: str  # orbax value_type ('jax.Array', 'np.ndarray', 'scalar', 'string', 'None', ...)
    shape: tuple[int, ...] | None = None
    dtype: str | None = None  # numpy / ml_dtypes name: 'float32', 'bfloat16', 'int4', ...
    source: ArraySource | None = None  # stored arrays
    value: Any = field(default=None, compare=False)  # strings and values inlined in legacy msgpack
    prng_impl: str | None = None  # typed PRNG keys: 'threefry2x32', 'rbg', 'unsafe_rbg'
    error: str | None = None  # metadata says it exists but storage does not have it
    #: The reader found this stored but cannot compare it (unknown item type, unreadable format):
    #: reported with status `not_compared`, never silently skipped.
    not_compared: str | None = None
    #: Mapped leaves (mapping.views.View): a lazy transform of stored arrays; None for a stored leaf as is.
    view: View | None = field(default=None, compare=False)
    #: The leaf's path in its checkpoint before rules renamed it (None: not renamed).
    source_path: KeyPath | None = None
    #: JSON items and msgpack trees: the container type of each level above the leaf ('dict', 'list',
    #: 'tuple'), root first. Paths alone would make `[5, 6]` and `{"0": 5, "1": 6}` the same tree;
    #: `pair` reports two leaves whose chains differ as a kind mismatch. None: not recorded.
    containers: tuple[str, ...] | None = None

    @property
    def nbytes(self) -> int:
        """Decoded size in bytes (0 for non-arrays)."""
        if self.shape is None or self.dtype is None:
            return 0
        from .reader.formats.dtypes import itemsize

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


class PairStatus(StrEnum):
    """What pairing decided for one path, before any value is read. `COMPARE`: values still to be
    diffed; `EQUAL`: settled without reading data (two empty nodes of one type); `KIND_MISMATCH`
    is reported as `Status.DIFFERENT`; the others become the `Status` of the same name."""

    COMPARE = "compare"
    EQUAL = "equal"
    ONLY_A = "only_a"
    ONLY_B = "only_b"
    SHAPE_MISMATCH = "shape_mismatch"
    KIND_MISMATCH = "kind_mismatch"
    ERROR = "error"
    NOT_COMPARED = "not_compared"


@dataclass(frozen=True, slots=True)
class Pair:
    """The two sides of one canonical path after pairing (either may be missing)."""

    path: KeyPath
    a: Leaf | None
    b: Leaf | None
    status: PairStatus
    message: str | None = None

    def both(self) -> tuple[Leaf, Leaf]:
        """(a, b), for the statuses pairing gives only when both sides exist (compare, equal, shape
        or kind mismatch); raises rather than let a missing side pass as a comparable one."""
        if self.a is None or self.b is None:
            raise ValueError(f"{format_path(self.path)}: a {self.status} pair without both sides")
        return self.a, self.b

    @property
    def ref(self) -> Leaf:
        """The side the report describes the path by: a, or b when the path is only in b."""
        leaf = self.a or self.b
        if leaf is None:
            raise ValueError(f"{format_path(self.path)}: a pair with neither side")
        return leaf


#: Field metadata of the `ValueStats` entries the JSON writes only when they are set (not None, not
#: False); every other statistic is always written, null included.
WHEN_SET = {"json": "when_set"}


@dataclass(frozen=True)
class LayerStats:
    """`--per-layer`: the statistics of one index along a scanned leaf's layer axis."""

    layer: int
    count: int
    mismatches: int
    max_abs_diff: float
    rms_diff: float | None


@dataclass(frozen=True)
class ValueStats:
    """What comparing the values of one leaf found (README "Statistics per leaf"); the JSON writes
    each field under its own name, in this order (`report.stats_json`).

    Indices are positions in the whole array (C order), None when the maximum is 0. The NaN/Inf
    counts are None when chunks settled by equal stored bytes were not decoded, and `rms_diff` when
    that leaves it unknown (see `stats.LeafStats.rms_reported`)."""

    count: int
    mismatches: int
    max_abs_diff: float
    max_abs_diff_index: tuple[int, ...] | None
    #: The two values (as compared: float, int, or complex written as text) at max_abs_diff_index.
    max_abs_diff_values: tuple[Any, Any] | None
    max_rel_diff: float
    max_rel_diff_index: tuple[int, ...] | None
    rms_diff: float | None
    nan_a: int | None
    nan_b: int | None
    inf_a: int | None
    inf_b: int | None
    nan_mismatch: int
    identical: bool  # bit for bit: same dtype, same bytes
    shortcut_chunks: int  # chunks settled by equal stored bytes, without decoding
    shortcut_bytes: int
    layers: tuple[LayerStats, ...] | None = field(default=None, metadata=WHEN_SET)
    #: What the tolerance allowed at max_abs_diff_index: atol + rtol * |b| (0 for exact comparisons).
    max_abs_diff_allowed: float | None = field(default=None, metadata=WHEN_SET)
    streamed: bool = field(default=False, metadata=WHEN_SET)  # read in slabs smaller than a chunk
    blocks: int | None = field(default=None, metadata=WHEN_SET)  # blocks the planner cut the leaf into
    sampled_count: int | None = field(default=None, metadata=WHEN_SET)  # --sample: blocks read and compared
    #: Stored bytes decoded per stored byte, when above 1 (blocks that cut across the read chunks).
    read_amplification: float | None = field(default=None, metadata=WHEN_SET)


@dataclass(frozen=True, slots=True)
class LeafResult:
    """Everything the report says about one path."""

    path: KeyPath
    status: Status
    kind: Kind
    shape: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    dtype: str | None = None
    dtype_b: str | None = None
    kind_b: Kind | None = None
    dtype_allowed: bool = False  # the dtypes differ in a way a rule allows
    source_a: str | None = None  # where the leaf comes from, when rules mapped it (path or view)
    source_b: str | None = None
    stats: ValueStats | None = field(default=None, compare=False)  # leaves whose values were compared
    message: str | None = None

    @property
    def name(self) -> str:
        """The display path, as the JSON and the terminal spell it ('params/decoder/kernel');
        `path` keeps the tuple of keys (keys may contain '/')."""
        return format_path(self.path)


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
    #: Canonical paths left out by the user's `only` / `exclude` patterns: listed, never read.
    excluded: tuple[str, ...] = ()
    bytes_read: int = 0
    requests: int = 0
    seconds: float = 0.0
    #: --sample: the fraction of each leaf's blocks compared (None: every value compared). Leaf
    #: statistics then describe the sampled elements only.
    sample: float | None = None
    #: --sample-seed: which blocks were drawn (None when not sampling); the same seed draws the same.
    sample_seed: int | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.leaves if r.status == status)

    @property
    def errors(self) -> int:
        return self.count(Status.ERROR)

    @property
    def not_compared(self) -> int:
        return self.count(Status.NOT_COMPARED)

    @property
    def dtype_mismatches(self) -> int:
        return sum(1 for r in self.leaves if r.dtype_b is not None and not r.dtype_allowed)

    @property
    def different(self) -> int:
        return sum(1 for r in self.leaves if r.status not in (Status.EQUAL, Status.ERROR, Status.NOT_COMPARED))

    @property
    def compared(self) -> int:
        """Paths that hold data and were compared on both sides (empty nodes hold none)."""
        return sum(1 for r in self.leaves if r.status != Status.NOT_COMPARED and r.kind != Kind.EMPTY)

    @property
    def equal(self) -> bool:
        """True when every path is on both sides and equal within tolerance (with --structure-only:
        same structure; with --sample: nothing sampled differs), i.e. exit 0."""
        return self.verdict.exit_code == 0

    @property
    def identical(self) -> bool:
        """True when, in addition, every compared leaf is bit-for-bit identical."""
        return self.verdict is Verdict.IDENTICAL

    @cached_property
    def verdict(self) -> Verdict:
        """The one place that decides what exit 0 promises: every value stored under both inputs
        was compared (rules' exclusions are listed in `ignored_*`) and found equal. Anything not
        compared, any error, or nothing to compare at all, and the answer is not "equal". The one
        promise made with less: --sample, asked for by the user, whose exit 0 says only that nothing
        in the sampled blocks differs (`NO_DIFFERENCES_SAMPLED`, never `IDENTICAL` or `EQUAL`)."""
        if self.errors:
            return Verdict.ERROR
        if self.not_compared:
            return Verdict.INCOMPLETE
        if any(r.status != Status.EQUAL for r in self.leaves):
            return Verdict.DIFFERENT
        if self.compared == 0:
            return Verdict.ERROR  # zero leaves holding data: nothing was compared
        if self.structure_only:
            return Verdict.SAME_STRUCTURE
        if self.sample is not None:
            return Verdict.NO_DIFFERENCES_SAMPLED
        if all(r.stats is None or r.stats.identical for r in self.leaves):
            return Verdict.IDENTICAL
        return Verdict.EQUAL

    @property
    def exit_code(self) -> int:
        """0 equal within tolerance (every value compared), 1 different, 2 error or incomplete."""
        return self.verdict.exit_code

    @property
    def verdict_text(self) -> str:
        """The verdict as one line of text (the JSON's `verdict`, the report's first line)."""
        from .report import verdict

        return verdict(self)

    @property
    def summary(self) -> dict[str, Any]:
        """The counts of the JSON's `summary`, by name."""
        stats = [r.stats for r in self.leaves if r.stats is not None]
        return {
            "leaves": len(self.leaves),
            "equal": self.count(Status.EQUAL),
            "different": self.count(Status.DIFFERENT),
            "only_a": self.count(Status.ONLY_A),
            "only_b": self.count(Status.ONLY_B),
            "shape_mismatch": self.count(Status.SHAPE_MISMATCH),
            "dtype_mismatch": self.dtype_mismatches,
            "errors": self.errors,
            "not_compared": self.not_compared,
            "bytes_read": self.bytes_read,
            "requests": self.requests,
            "shortcut_chunks": sum(s.shortcut_chunks for s in stats),
            "shortcut_bytes": sum(s.shortcut_bytes for s in stats),
            "seconds": round(self.seconds, 6),
            "excluded": len(self.excluded),
        }
