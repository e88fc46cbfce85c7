"""Turn the memory budget into block sizes, and each pair of arrays into blocks.

A block is a box of the array's index space read from both sides at once. Blocks are aligned to
both chunk grids when the grids nest (or their least common multiple fits the budget), so every
stored chunk is decoded once. When a block must be smaller than a chunk, the chunk is decoded once
per block that touches it; that read amplification is computed here and reported, never hidden.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import UsageError
from .units import human_bytes

#: Memory the process holds besides blocks and tiles: the interpreter with numpy, tensorstore, click
#: and rich loaded, plus headroom for what grows with the tree (metadata, tensorstore's caches, thread
#: stacks). Measured once (Linux, Python 3.11, numpy 2.4, tensorstore 0.1.86; peak RSS in KiB):
#:     /usr/bin/time -f %M python -m streamdiff A A -q      # A: one 8-element zarr v3 array: 73 MiB
#:     /usr/bin/time -f %M python -c "import streamdiff.cli"   # the imports alone: 59 MiB
#: The README's memory figures refer here.
BASE_RSS = 110 << 20
#: Elements per compute tile: bounds float64 temporaries to a few MB per thread, whatever the block;
#: `memory_plan` halves it (down to MIN_TILE) when many jobs share a small budget.
DEFAULT_TILE = 1 << 18
MIN_TILE = 1 << 12
#: Bytes of float64/bool temporaries per element while a tile is compared (see stats._tile_stats).
TILE_BYTES_PER_ELEMENT = 112
#: Cap on one block: large enough to amortise per-read overhead, small enough to pipeline.
MAX_BLOCK_BYTES = 256 << 20
MIN_BLOCK_BYTES = 1 << 20
#: Blocks made of many small chunks grow to about this size (both sides together).
GROW_TARGET_BYTES = 8 << 20
DEFAULT_MAX_MEMORY = 2 << 30
#: What `memory_plan` leaves for blocks and tiles however small the budget: below BASE_RSS plus this
#: the budget is planned for but cannot be kept (the process alone holds about BASE_RSS).
MIN_BLOCKS_AND_TILES = 16 << 20
#: Smallest --max-memory the planner accepts.
MIN_MAX_MEMORY = 64 << 20
#: Chunks one block may span on either side: each chunk read costs tensorstore bookkeeping of its own,
#: so a block of a million one-element chunks would cost gigabytes whatever its decoded size.
MAX_CHUNKS_PER_BLOCK = 4096
#: Chunks of one leaf beyond which the plan is refused: at tens of thousands of chunk reads a second,
#: 10**9 chunks take most of a day. Real checkpoints have thousands to millions.
MAX_CHUNKS_PER_LEAF = 10**9


def default_jobs() -> int:
    return max(2, min(8, os.cpu_count() or 2))


@dataclass(frozen=True)
class MemoryPlan:
    """How the budget is spent: `in_flight` blocks of at most `block_bytes`, and compute tiles."""

    budget: int
    jobs: int
    block_bytes: int  # decoded bytes of both sides of one block
    in_flight: int  # blocks read or being compared at once
    tile: int  # elements per compute tile

    @property
    def in_flight_bytes(self) -> int:
        return self.block_bytes * self.in_flight

    @property
    def whole_chunk_bytes(self) -> int:
        """Largest chunk decoded whole when its codec cannot be streamed: its stored bytes, the decode
        buffer and the array handed over must fit in what the interpreter leaves of the budget (at
        least an eighth of the budget: an 8 MiB chunk behind a stacked view decodes at 64M)."""
        return max(self.block_bytes, (self.budget - BASE_RSS) // 3, self.budget // 8)


#: A streamed chunk is held a row (per side) at a time: a row may take up to this share of the budget
#: (a 4 MiB row streams within 64M; a row of 10**10 elements is refused, not allocated).
ROW_SHARE = 4


def refuse_leaf(
    shape: tuple[int, ...],
    chunks: tuple[tuple[int, ...] | None, tuple[int, ...] | None],
    unstreamable_bytes: tuple[int, int],
    codecs: tuple[str, str],
    mem: MemoryPlan,
    row_bytes: tuple[int, int] = (0, 0),
) -> str | None:
    """Why no plan within the budget exists for a pair, or None. `unstreamable_bytes` per side is the
    decoded size of a chunk that would have to be decoded whole (0 when it can stream or fits);
    `row_bytes` the decoded size of one row of a chunk that streams (it streams a row at a time)."""
    for side, grid, whole, codec, row in zip("AB", chunks, unstreamable_bytes, codecs, row_bytes):
        c = list(grid or ())
        if row > max(mem.whole_chunk_bytes, mem.budget // ROW_SHARE):
            return (
                f"refused by the planner: checkpoint {side}: one row of a chunk of {c} elements is "
                f"{human_bytes(row)} decoded; chunks stream a row at a time, and one row needs more than --max-memory "
                f"{human_bytes(mem.budget)} allows"
            )
        if whole > mem.whole_chunk_bytes:
            return (
                f"refused by the planner: checkpoint {side}: one chunk of {c} elements is {human_bytes(whole)} "
                f"decoded and codec {codec} cannot be streamed (only zstd and raw can); "
                f"decoding it whole needs more than --max-memory "
                f"{human_bytes(mem.budget)} allows"
            )
        if grid is not None and len(grid) == len(shape) and shape:
            n = chunk_count(shape, grid)
            if n > MAX_CHUNKS_PER_LEAF:
                return (
                    f"refused by the planner: checkpoint {side}: {n:.3g} chunks of {list(c)} elements for shape "
                    f"{list(shape)}, more than the {MAX_CHUNKS_PER_LEAF:.0e} chunks per leaf streamdiff plans for"
                )
    return None


def chunk_count(shape: tuple[int, ...], chunks: tuple[int, ...]) -> int:
    return math.prod(-(-n // max(1, c)) for n, c in zip(shape, chunks))


def check_max_memory(budget: int) -> None:
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_MAX_MEMORY:
        raise UsageError(
            f"--max-memory must be at least {MIN_MAX_MEMORY >> 20}M (the planner's minimum), got {budget!r} bytes"
        )


def memory_plan(budget: int, jobs: int, block_bytes: int | None = None) -> MemoryPlan:
    """Split `budget` (peak RSS of the whole process) between blocks in flight and compute tiles.

    A block in flight costs about twice its decoded size (tensorstore's decode buffer, then the
    array handed to us), hence the factor 2. `block_bytes` overrides the computed block size.
    A budget under MIN_MAX_MEMORY is a `UsageError`.
    """
    check_max_memory(budget)
    avail = max(budget - BASE_RSS, MIN_BLOCKS_AND_TILES)
    tile = DEFAULT_TILE
    while tile > MIN_TILE and jobs * tile * TILE_BYTES_PER_ELEMENT > avail // 4:
        tile //= 2
    in_flight = 2 * jobs + 2  # keep tensorstore decoding ahead while the threads compare
    for_blocks = avail - jobs * tile * TILE_BYTES_PER_ELEMENT
    block = max(MIN_BLOCK_BYTES, min(MAX_BLOCK_BYTES, for_blocks // (2 * in_flight)))
    if block_bytes is not None:  # expert / test override: many small blocks on small arrays
        block = max(1, block_bytes)
    return MemoryPlan(budget=budget, jobs=jobs, block_bytes=block, in_flight=in_flight, tile=tile)


@dataclass(frozen=True)
class BlockGrid:
    """The blocks of one pair: a regular grid of `block_shape` over `shape`."""

    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    amplification_a: float  # bytes decoded / bytes stored, side A
    amplification_b: float

    @property
    def count(self) -> int:
        """Blocks in the grid: 1 for a scalar, 0 for an array with no elements (a zero extent)."""
        return math.prod(-(-n // max(1, b)) for n, b in zip(self.shape, self.block_shape)) if self.shape else 1

    def boxes(self, picks: Iterable[int] | None = None) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(start, stop) of every block in C order, so reads walk the chunks in key order; only the
        blocks numbered `picks` (C-order numbers, ascending: a `Sample`'s) when given."""
        for _, start, stop in self.cells(picks):
            yield start, stop

    def cells(self, picks: Iterable[int] | None = None) -> Iterator[tuple[tuple[int, ...], ...]]:
        """(grid index, start, stop) of every block in C order, or of the blocks numbered `picks`.
        Index arithmetic per block: no list of the grid's blocks is ever built."""
        counts = [-(-n // max(1, b)) for n, b in zip(self.shape, self.block_shape)]
        for i in range(self.count) if picks is None else picks:
            idx = []
            for c in reversed(counts):
                idx.append(i % c)
                i //= c
            idx.reverse()
            start = tuple(k * b for k, b in zip(idx, self.block_shape))
            stop = tuple(min(s + b, n) for s, b, n in zip(start, self.block_shape, self.shape))
            yield tuple(idx), start, stop


def block_grid(
    shape: tuple[int, ...],
    chunks_a: tuple[int, ...] | None,
    chunks_b: tuple[int, ...] | None,
    bytes_per_element: int,
    max_block_bytes: int,
) -> BlockGrid:
    """Blocks covering whole chunks of both sides where possible, within `max_block_bytes`.

    `chunks_*` are the smallest decodable units of each side (None for in-memory values).
    `bytes_per_element` is the decoded size of one element of A plus one of B.
    """
    if not shape:
        return BlockGrid((), (), 1.0, 1.0)
    if 0 in shape:
        # No elements (a zarr array of shape (0, 3)): no block to read, and none needed.
        return BlockGrid(shape, tuple(max(1, n) for n in shape), 1.0, 1.0)
    ca = _clip(chunks_a, shape)
    cb = _clip(chunks_b, shape)
    common = [min(math.lcm(x, y), n) for x, y, n in zip(ca, cb, shape)]
    limit = max(1, max_block_bytes // max(1, bytes_per_element))
    # Bookkeeping per chunk read bounds the chunks per block, whatever their decoded size.
    chunk_cap = MAX_CHUNKS_PER_BLOCK * min(math.prod(ca), math.prod(cb))
    bs = list(common)
    # Grow small grid cells along leading dims (fewer reads), but only up to GROW_TARGET_BYTES:
    # a block that is exactly one stored chunk is decoded straight into the array we compare,
    # while a block spanning many chunks costs tensorstore an extra copy and fresh pages.
    grow_limit = max(1, min(limit, chunk_cap, GROW_TARGET_BYTES // max(1, bytes_per_element)))
    for d in range(len(bs)):
        if bs[d] >= shape[d]:
            continue
        others = math.prod(bs) // bs[d]
        fit = (grow_limit // max(1, others)) // common[d] * common[d]
        bs[d] = max(bs[d], min(shape[d], fit))
        break
    # One cell of the common grid (a chunk of each side) may take up to twice the block size:
    # splitting it would decode its chunks twice. The bytes-in-flight cap still bounds the total.
    if math.prod(common) <= 2 * limit:
        limit = max(limit, math.prod(common))
    limit = min(limit, chunk_cap)
    # Shrink from the leading dim until the block fits.
    for d in range(len(bs)):
        if math.prod(bs) <= limit:
            break
        rest = math.prod(bs[d + 1 :])
        if rest <= limit:
            n = max(1, limit // rest)
            # Prefer an even split of the grid cell so blocks stay aligned to it.
            cell = common[d]
            n = min(n, cell)
            parts = -(-cell // n)
            bs[d] = -(-cell // parts)
        else:
            bs[d] = 1
    bshape = tuple(bs)
    return BlockGrid(shape, bshape, _amplification(shape, bshape, ca), _amplification(shape, bshape, cb))


def _clip(chunks: tuple[int, ...] | None, shape: tuple[int, ...]) -> list[int]:
    if chunks is None or len(chunks) != len(shape):
        return list(shape)
    return [max(1, min(c, n)) for c, n in zip(chunks, shape)]


def _amplification(shape: tuple[int, ...], block: tuple[int, ...], chunks: list[int]) -> float:
    """Chunk decodes per stored chunk when reading every block once (1.0 when aligned)."""
    amp = 1.0
    for n, b, c in zip(shape, block, chunks):
        if b % c == 0 or b >= n:
            continue
        # Each block reads one chunk plus one per chunk boundary strictly inside it: the chunk
        # boundaries (multiples of c in (0, n)) that are not also block boundaries (multiples of b).
        # Closed form, so a grid of 10**12 blocks costs nothing to plan.
        reads = -(-n // b) + (-(-n // c) - 1) - (n - 1) // math.lcm(b, c)
        amp *= reads / -(-n // c)
    return amp


@dataclass(frozen=True)
class RowsPlan:
    """Chunks too big to decode whole: walk the big side's chunk grid, a slab of rows at a time.

    `grid` is the chunk grid being walked (its block shape is the chunk shape); each chunk is read
    as slabs of `slab_rows` rows of the chunk's first axis. `stream_a` / `stream_b` say which
    sides are stream-decoded from stored bytes; the other side is read with tensorstore, box by box.
    """

    grid: BlockGrid
    slab_rows: int
    stream_a: bool
    stream_b: bool


def rows_plan(
    shape: tuple[int, ...],
    chunks_a: tuple[int, ...],
    chunks_b: tuple[int, ...],
    big_a: bool,
    big_b: bool,
    bytes_per_element: int,
    max_block_bytes: int,
) -> RowsPlan:
    """Plan streaming for a pair where at least one side's chunk exceeds the block budget.

    Both sides stream in lockstep when their chunk shapes match; otherwise the big side streams and
    the other is read box by box (its chunks decoded once per slab that touches them: amplification).
    """
    walk = chunks_a if big_a else chunks_b
    stream_a = big_a
    stream_b = big_b and (not big_a or tuple(chunks_a) == tuple(chunks_b))
    walk = tuple(min(c, n) for c, n in zip(walk, shape))
    row_elems = math.prod(walk[1:]) if len(walk) > 1 else 1
    slab_rows = max(1, min(walk[0], max_block_bytes // max(1, row_elems * bytes_per_element)))
    grid = BlockGrid(
        shape,
        walk,
        1.0 if stream_a else _slab_amplification(shape, walk, slab_rows, _clip(chunks_a, shape)),
        1.0 if stream_b else _slab_amplification(shape, walk, slab_rows, _clip(chunks_b, shape)),
    )
    return RowsPlan(grid, slab_rows, stream_a, stream_b)


#: Chunk boundaries examined per period when counting slab overlaps exactly (beyond: the regular-grid
#: estimate, which assumes slabs do not restart at walked chunks).
MAX_SLAB_PERIOD = 1 << 20


def _slab_amplification(shape: tuple[int, ...], walk: tuple[int, ...], rows: int, chunks: list[int]) -> float:
    """`_amplification` for slabs of `rows` rows that restart at every walked chunk of `walk[0]`
    rows (the engine's slab loop), not a regular grid of `rows` over the whole axis."""
    rest = _amplification(shape[1:], walk[1:], chunks[1:]) if len(shape) > 1 else 1.0
    n, w, c = shape[0], walk[0], chunks[0]
    full, tail = divmod(n, w)
    slabs = full * -(-w // rows) + -(-tail // rows)
    inner = -(-n // c) - 1  # the other side's chunk boundaries c, 2c, ... strictly inside (0, n)
    period = math.lcm(c, w) // c  # (k*c) mod w repeats with this period in k
    if period > MAX_SLAB_PERIOD:
        return _amplification(shape, (rows,) + tuple(walk[1:]), chunks)
    # A boundary that is also a slab start ((x mod w) is a multiple of rows) costs no extra read.
    hits = [((k * c) % w) % rows == 0 for k in range(1, period + 1)]
    shared = (inner // period) * sum(hits) + sum(hits[: inner % period])
    return (slabs + inner - shared) / -(-n // c) * rest


#: `--sample-seed` when none is given: the same blocks every run, so two quick runs agree.
DEFAULT_SAMPLE_SEED = 0


@dataclass(frozen=True)
class Sample:
    """`--sample`: compare a `fraction` of each leaf's blocks, spread over the leaf, chosen by `seed`.

    Stratified: the grid's n blocks (C order) are cut into k = ceil(fraction * n) strata of n/k
    consecutive blocks, and one block is drawn in each, so every region of the leaf is visited and
    no two picks fall in one stratum. The draw depends only on the seed, the leaf's path and the
    stratum (Python's `random` seeded with a string is the same in every process), so a Dask worker,
    a rerun or another machine picks the same blocks. Picks are computed one at a time: sampling a
    grid of 10**9 blocks builds no list of them.
    """

    fraction: float
    seed: int = DEFAULT_SAMPLE_SEED

    def __post_init__(self) -> None:
        f = self.fraction
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not (math.isfinite(f) and 0 < f <= 1):
            raise UsageError(f"--sample must be a fraction in (0, 1] (0.01 for 1%), got {f!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise UsageError(f"--sample-seed must be an integer >= 0, got {self.seed!r}")

    def count(self, blocks: int) -> int:
        """Blocks compared out of a grid of `blocks`: at least one (a leaf is never skipped), at
        most all. Rounded to 9 digits first so that 0.1 of 100 blocks is 10, not 11."""
        if blocks <= 0:
            return 0
        return min(blocks, max(1, math.ceil(round(self.fraction * blocks, 9))))

    def picks(self, blocks: int, key: str) -> Iterator[int]:
        """The C-order numbers of the blocks to compare, ascending (reads stay in key order);
        `key` (the leaf's path) varies the draw between leaves of the same grid."""
        k = self.count(blocks)
        rng = random.Random(f"streamdiff-sample:{self.seed}:{key}")
        for j in range(k):
            lo, hi = j * blocks // k, (j + 1) * blocks // k  # hi > lo since k <= blocks
            yield lo + rng.randrange(hi - lo)
