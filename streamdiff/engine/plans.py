"""Each pair's plan, from metadata only: blocks or streamed chunks within the budget, whether the
equal-bytes shortcut applies, or why the pair cannot be compared. Deterministic: a Dask worker
plans a pair exactly as the client did."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..datatypes import Pair
from ..plan import BlockGrid, MemoryPlan, RowsPlan, pair_grid, pair_rows, refuse_leaf
from ..reader.formats.dtypes import family
from ..stats import LeafStats, Policy
from .sides import STORAGE_ERRORS, Side, dtype_of, itemsize, one_line, same_fill, shape_of, source_of


@dataclass
class PairOutcome:
    """What streaming found for one pair: merged statistics, or the first error."""

    stats: LeafStats
    grid: BlockGrid | None = None
    rows: RowsPlan | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    shortcut: bool = False
    misses: int = 0  # consecutive shortcut misses (see work.SHORTCUT_GIVE_UP)
    #: A chunk stored on neither side holds the same fill value on both (plain zarr stores).
    both_missing_equal: bool = False

    @property
    def planned_grid(self) -> BlockGrid:
        """The block grid of a pair planned without an error (every such plan has one)."""
        if self.grid is None:
            raise ValueError(f"no block grid planned{': ' + self.error if self.error else ''}")
        return self.grid

    @property
    def planned_rows(self) -> RowsPlan:
        """The streaming plan of a pair whose chunk tasks stream (those tasks exist only with one)."""
        if self.rows is None:
            raise ValueError("no streaming plan for a chunk task")
        return self.rows

    @property
    def cache_wants(self) -> tuple[int, int]:
        """Bytes of decoded-chunk cache each side's plan reads through (0: none; see plan.pair_grid)."""
        if self.grid is None or self.error:
            return (0, 0)
        return (self.grid.cache_a, self.grid.cache_b)

    def fresh(self) -> PairOutcome:
        """The same plan for another pair: its own statistics and shortcut state (grids are frozen)."""
        return replace(self, stats=LeafStats(), warnings=list(self.warnings), misses=0)

    def absorb(self, stats: LeafStats | None, error: str | None) -> None:
        """Fold in one task's result (from a thread or a Dask worker); the first error sticks."""
        if error is not None:
            if self.error is None:
                self.error = error
        elif stats is not None:
            self.stats.merge(stats)


def streams_values(p: Pair) -> bool:
    """Pairs the engine reads: numeric values still to compare (strings and JSON compare by value)."""
    return p.status == "compare" and p.both()[0].kind not in ("string", "json")


def plan_pairs(
    pairs: list[Pair],
    policies: list[Policy],
    mem: MemoryPlan,
    shortcut: bool,
    only: Iterable[int] | None = None,
) -> dict[int, PairOutcome]:
    """The plan of every pair the engine reads (or of `only` those indices), by pair index."""
    indices = range(len(pairs)) if only is None else sorted(only)
    memo: dict[tuple[Any, ...], PairOutcome] = {}
    out = {}
    for i in indices:
        p = pairs[i]
        if not streams_values(p):
            continue
        key = plan_key(p, policies[i])
        if key is None:
            out[i] = plan_pair(p, policies[i], mem, shortcut)
            continue
        known = memo.get(key)
        if known is None:
            known = memo[key] = plan_pair(p, policies[i], mem, shortcut)
        out[i] = known.fresh()
    return out


def plan_key(p: Pair, policy: Policy) -> tuple[Any, ...] | None:
    """What `plan_pair` reads of a pair of stored arrays (no views): pairs with equal keys get equal
    plans, so a tree of 100k leaves of a few shapes is planned a few times. Metadata documents are
    shared by every leaf with the same one (formats/zarr_metadata.py) and live as long as the run's
    leaves, so they are told apart by identity. None: plan the pair itself."""
    a, b = p.both()
    if a.view is not None or b.view is not None or a.source is None or b.source is None:
        return None
    fills = (a.source.spec.get("fill_missing_data_reads", True), b.source.spec.get("fill_missing_data_reads", True))
    return (
        id(a.source.metadata),
        id(b.source.metadata),
        a.shape,
        b.shape,
        a.dtype,
        b.dtype,
        fills,
        policy.nan_equal,
    )


def cache_bytes(plans: Mapping[int, PairOutcome]) -> tuple[int, int]:
    """Per side, the largest decoded-chunk cache any plan asked for: the size of the one cache the
    run shares on that side (sides.SideContexts)."""
    wants = [o.cache_wants for o in plans.values()]
    return (max((w[0] for w in wants), default=0), max((w[1] for w in wants), default=0))


def plan_pair(p: Pair, policy: Policy, mem: MemoryPlan, shortcut: bool) -> PairOutcome:
    a, b = p.both()
    try:
        sa, sb = Side(a), Side(b)
        shape = shape_of(a)
    except STORAGE_ERRORS as e:  # metadata the chunk format cannot be read from
        return PairOutcome(LeafStats(), error=one_line(e))
    sizes = (itemsize(a), itemsize(b))
    # A chunk bigger than a whole block is streamed; smaller ones are decoded by tensorstore.
    limit = mem.block_bytes
    big_a, big_b = sa.chunk_bytes() > limit, sb.chunk_bytes() > limit
    out = PairOutcome(LeafStats())
    whole = (sa.whole_decode_bytes(big_a), sb.whole_decode_bytes(big_b))
    rows = (sa.row_bytes() if big_a and sa.streamable else 0, sb.row_bytes() if big_b and sb.streamable else 0)
    codecs = (a.source.codec if a.source else "-", b.source.codec if b.source else "-")
    out.error = refuse_leaf(shape, (sa.chunks, sb.chunks), whole, codecs, mem, rows)
    if out.error:
        return out
    out.shortcut = shortcut and shortcut_applies(p, sa, sb, policy)
    out.both_missing_equal = out.shortcut and same_fill(a, b)
    if shape and 0 not in shape and (big_a or big_b):
        can_a = not big_a or sa.streamable
        can_b = not big_b or sb.streamable
        if can_a and can_b:
            out.rows = pair_rows(shape, sa.chunks, sb.chunks, big_a, big_b, sizes, mem)
            out.grid = out.rows.grid
            return out
        for name, leaf, s, can in (("A", a, sa, can_a), ("B", b, sb, can_b)):
            if not can:
                need = s.chunk_bytes() >> 20
                out.warnings.append(
                    f"checkpoint {name}: codec {source_of(leaf).codec} cannot be streamed; "
                    f"decoding whole {need} MiB chunks (over the block size, within --max-memory)"
                )
    out.grid = pair_grid(shape, sa.chunks, sb.chunks, sizes, mem)
    return out


def shortcut_applies(p: Pair, sa: Side, sb: Side, policy: Policy) -> bool:
    """Equal stored bytes imply equal values only for the same format, chunk for chunk."""
    fa, fb = sa.format, sb.format
    if fa is None or fb is None or not fa.signature or fa.signature != fb.signature or sa.leaf.dtype != sb.leaf.dtype:
        return False
    if fa.chunk_shape != fa.inner_shape or fb.chunk_shape != fb.inner_shape:
        return False  # multi-chunk shards: decoded per inner chunk instead
    if family(dtype_of(sa.leaf)) in ("float", "complex") and not policy.nan_equal:
        return False  # NaN == NaN bytes would hide --nan-unequal mismatches
    return True
