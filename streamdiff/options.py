"""What a diff was asked to do, as frozen records: built once (by `api.diff` from its keyword
arguments, or by the CLI from its flags), validated on construction, then passed down the pipeline.

`DiffOptions` groups them by the stage that reads them: which step and item (`Steps`, `item`), how
to map the trees (`MapOptions`), what counts as equal (`Tolerance`), what the run may spend
(`Budget`), and which paths to compare (`only` / `exclude`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import UsageError
from .plan import DEFAULT_MAX_MEMORY, DEFAULT_SAMPLE_SEED, check_max_memory
from .reader.storage import DEFAULT_TIMEOUT


def is_tolerance(v: object) -> bool:
    """Whether `v` can be an atol or rtol (here and in rules files): a finite number >= 0. NaN
    passes `v < 0` and would make every comparison true; infinities too."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


@dataclass(frozen=True)
class Tolerance:
    """A value differs when `|a - b| > atol + rtol * |b|`; NaN vs NaN is equal unless not `nan_equal`."""

    atol: float = 0.0
    rtol: float = 0.0
    nan_equal: bool = True

    def __post_init__(self) -> None:
        for name, v in (("atol", self.atol), ("rtol", self.rtol)):
            if not is_tolerance(v):
                raise UsageError(f"--{name} must be a finite number >= 0, got {v!r}")


@dataclass(frozen=True)
class Steps:
    """`both` for every side that is a CheckpointManager root; `a` / `b` for one side only."""

    both: int | None = None
    a: int | None = None
    b: int | None = None

    def __post_init__(self) -> None:
        for name, v in (("step", self.both), ("step_a", self.a), ("step_b", self.b)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise UsageError(f"{name} must be a step number (an int >= 0), got {v!r}")

    def side(self, which: str) -> int | None:
        own = self.a if which == "A" else self.b
        return own if own is not None else self.both


@dataclass(frozen=True)
class MapOptions:
    """The map stage: presets (detected per side when `auto`, or `preset` for both), then the
    `rules` files in order, then alignment of scanned and unscanned layers on `layer_axis`."""

    rules: tuple[str, ...] = ()
    preset: str | None = None
    auto: bool = True
    layer_axis: int | None = None


@dataclass(frozen=True)
class Budget:
    """What the value stage may spend: peak memory of the process (`max_memory`, bytes), compare
    threads (`jobs`, None: `plan.default_jobs()`), parallel remote requests (`io_concurrency`),
    seconds a remote request may stall (`timeout`). `block_bytes` overrides the block size the
    planner derives from `max_memory` (tests use it to force many blocks per chunk)."""

    max_memory: int = DEFAULT_MAX_MEMORY
    jobs: int | None = None
    block_bytes: int | None = None
    io_concurrency: int | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        check_max_memory(self.max_memory)


@dataclass(frozen=True)
class DiffOptions:
    """Everything `api.run` needs besides the two locations and a progress callback."""

    tolerance: Tolerance = field(default_factory=Tolerance)
    steps: Steps = field(default_factory=Steps)
    item: str | None = None
    mapping: MapOptions = field(default_factory=MapOptions)
    budget: Budget = field(default_factory=Budget)
    structure_only: bool = False
    #: Settle chunks whose stored bytes are equal on both sides without decoding them.
    shortcut: bool = True
    #: Run the value stage on Dask: 'tcp://host:8786' or 'local:N'; None: threads in this process.
    scheduler: str | None = None
    #: Rules' path patterns over the canonical paths: compare only these / leave these out.
    only: Sequence[str] = ()  # any sequence the caller gave; stored as a tuple
    exclude: Sequence[str] = ()
    #: Statistics per index of the layer axis of scanned leaves (`ValueStats.layers`).
    per_layer: bool = False
    #: --sample: the share of each leaf's blocks compared (None: all), picked by `sample_seed`
    #: (validated by `plan.Sample` when the diff plans).
    sample: float | None = None
    sample_seed: int = DEFAULT_SAMPLE_SEED

    def __post_init__(self) -> None:
        if isinstance(self.only, str) or isinstance(self.exclude, str):
            raise UsageError("only / exclude take a list of patterns, not a string")
        object.__setattr__(self, "only", tuple(self.only))  # any sequence the caller gave
        object.__setattr__(self, "exclude", tuple(self.exclude))
