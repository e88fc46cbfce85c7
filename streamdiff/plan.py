"""Turn the memory budget into block sizes, and each pair of arrays into blocks.

A block is a box of the array's index space read from both sides at once. Blocks are aligned to
both chunk grids when the grids nest (or their least common multiple fits the budget), so every
stored chunk is decoded once. When a block must be smaller than a chunk, the chunk is decoded once
per block that touches it; that read amplification is computed here and reported, never hidden.

Crossed grids (the same values saved on another mesh: chunks [256,8,2048] against [128,8,4096])
take the least-common-multiple block when two such blocks fit in flight. When they do not, the
blocks follow one side's chunk grid and the other side is read through a bounded cache of decoded
chunks (tensorstore's `cache_pool`), sized here by replaying the traversal, so each of its chunks
is decoded once while every block using it is read (`pair_grid`, `pair_rows`).
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

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


#: Largest range read when streaming a chunk's stored bytes.
PIECE_BYTES = 8 << 20
#: Smallest: below it, a remote store's round trip costs more than the transfer.
MIN_PIECE_BYTES = 1 << 20


#: Range reads kept in flight per streamed chunk, local and remote: remote stores need several round
#: trips' worth in flight to fill the link (a bandwidth-delay product of ~10 MB at 200 MB/s, 50 ms).
PREFETCH_LOCAL = 2
PREFETCH_REMOTE = 4


def prefetch_depth(is_local: bool) -> int:
    """Range reads kept in flight per streamed chunk (PREFETCH_LOCAL / PREFETCH_REMOTE)."""
    return PREFETCH_LOCAL if is_local else PREFETCH_REMOTE


#: Tasks in flight at most while a pair reading a remote store is being submitted. Each remote read
#: waits a round trip before its first byte, and a task whose bytes have arrived waits for a thread
#: (and for its decode): with only `MemoryPlan.in_flight` tasks, all of them are often delivered and
#: waiting, and nothing is on the wire.
REMOTE_IN_FLIGHT = 16
#: ... as long as they hold at most this much together (over half a second of a fast link read ahead of
#: the threads; more would only hold memory). The bytes in flight stay capped by `in_flight_bytes`.
REMOTE_IN_FLIGHT_BYTES = 128 << 20


#: Pause between the first submissions of large tasks on a remote store. Equal reads started at once
#: share the link and all finish at once; the tasks they free then start their reads together, and
#: the link idles a round trip before the first byte of any of them, over and over. Starting the
#: first reads a little apart keeps their ends apart for the rest of the run (each finished read
#: frees a task whose read starts while the others still transfer).
REMOTE_STAGGER_SECONDS = 0.03
#: ... for tasks at least this large: a smaller task's read is over in about a round trip anyway,
#: and a run of small tasks should not wait.
REMOTE_STAGGER_MIN_BYTES = 8 << 20


def fill_stagger(remote: bool, task_bytes: int) -> float:
    """Seconds to wait before submitting another task while the first ones are still in flight."""
    return REMOTE_STAGGER_SECONDS if remote and task_bytes >= REMOTE_STAGGER_MIN_BYTES else 0.0


def tasks_in_flight(mem: MemoryPlan, remote: bool, task_bytes: int) -> int:
    """Tasks of `task_bytes` each the executor keeps in flight at most (besides the cap on their
    bytes): `mem.in_flight`, or on a remote store up to REMOTE_IN_FLIGHT of them while they hold
    REMOTE_IN_FLIGHT_BYTES together."""
    if not remote:
        return mem.in_flight
    return max(mem.in_flight, min(REMOTE_IN_FLIGHT, REMOTE_IN_FLIGHT_BYTES // max(1, task_bytes)))


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
    def piece_bytes(self) -> int:
        """Bytes per range read when streaming a chunk: large enough to amortise a round trip."""
        return max(MIN_PIECE_BYTES, min(PIECE_BYTES, self.block_bytes // 8))

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
    #: Decoded-chunk cache (bytes) a side is read through; 0: none. Its effect is in the amplification.
    cache_a: int = 0
    cache_b: int = 0
    #: Bytes each block is charged against the bytes in flight (0: its decoded size). Larger when the
    #: plan needs fewer blocks in flight (an lcm block, or room for a cache).
    hold: int = 0

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
    chunks_a: tuple[int, ...] | None,
    chunks_b: tuple[int, ...] | None,
    big_a: bool,
    big_b: bool,
    bytes_per_element: int,
    max_block_bytes: int,
) -> RowsPlan:
    """Plan streaming for a pair where at least one side's chunk exceeds the block budget.

    Both sides stream in lockstep when their chunk shapes match; otherwise the big side streams and
    the other is read box by box (its chunks decoded once per slab that touches them: amplification).
    """
    big = chunks_a if big_a else chunks_b
    if big is None:  # a chunk over the budget has a chunk shape: the side read box by box may not
        raise ValueError("the side over the block budget has no chunk shape")
    stream_a = big_a
    stream_b = big_b and (not big_a or tuple(chunks_a or ()) == tuple(chunks_b or ()))
    walk = tuple(min(c, n) for c, n in zip(big, shape))
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


# --------------------------------------------------------------------------------- crossed grids

#: Boxes replayed when sizing a chunk cache; a longer traversal is judged by this prefix (the
#: traversal is periodic along the outer axes, so the prefix repeats what follows).
MAX_CACHE_REPLAY = 1 << 15


def pair_grid(
    shape: tuple[int, ...],
    chunks_a: tuple[int, ...] | None,
    chunks_b: tuple[int, ...] | None,
    itemsizes: tuple[int, int],
    mem: MemoryPlan,
) -> BlockGrid:
    """`block_grid`, and for crossed grids the better of: the least-common-multiple block when two
    of them fit in the bytes in flight (each chunk decoded once, fewer blocks in flight), or blocks
    of one side's chunk with the other side read through a decoded-chunk cache."""
    bpe = sum(itemsizes)
    g = block_grid(shape, chunks_a, chunks_b, bpe, mem.block_bytes)
    if not shape or 0 in shape or _worst(g) <= 1.0:
        return g
    ca, cb = _clip(chunks_a, shape), _clip(chunks_b, shape)
    common = tuple(min(math.lcm(x, y), n) for x, y, n in zip(ca, cb, shape))
    chunk_cap = MAX_CHUNKS_PER_BLOCK * min(math.prod(ca), math.prod(cb))
    best = g
    for walk in (ca, cb):
        nbytes = math.prod(walk) * bpe
        if nbytes > 2 * mem.block_bytes or math.prod(walk) > chunk_cap:
            continue
        grid = BlockGrid(shape, tuple(walk), 1.0, 1.0)
        tasks = ([box] for box in grid.boxes())
        # A block in flight costs twice its size (decode buffer and array), as in memory_plan.
        cand = _with_caches(grid, tasks, (ca, cb), itemsizes, nbytes, 2 * nbytes, mem)
        if cand is not None and _worst(cand) < _worst(best):
            best = cand
    if _worst(best) > 1.0 and 2 * math.prod(common) * bpe <= mem.in_flight_bytes and math.prod(common) <= chunk_cap:
        return BlockGrid(shape, common, 1.0, 1.0, hold=math.prod(common) * bpe)
    return best


def pair_rows(
    shape: tuple[int, ...],
    chunks_a: tuple[int, ...] | None,
    chunks_b: tuple[int, ...] | None,
    big_a: bool,
    big_b: bool,
    itemsizes: tuple[int, int],
    mem: MemoryPlan,
) -> RowsPlan:
    """`rows_plan`, with the side read box by box (not streamed) kept in a decoded-chunk cache when
    its chunks cross the walked grid and the cache fits: each of its chunks is then decoded once."""
    bpe = sum(itemsizes)
    r = rows_plan(shape, chunks_a, chunks_b, big_a, big_b, bpe, mem.block_bytes)
    if r.stream_a and r.stream_b:
        # Both sides stream in lockstep: slabs a quarter of the block (the same chunks are decoded
        # once whatever the slab) leave the bytes in flight to range reads, so that several
        # chunks stream at once.
        return rows_plan(shape, chunks_a, chunks_b, big_a, big_b, bpe, max(1, mem.block_bytes // 4))
    hold = rows_hold(r, bpe, mem, prefetch_depth(True))
    walk, rows = r.grid.block_shape, r.slab_rows
    tasks = (list(slab_boxes(shape, walk, rows, box)) for box in BlockGrid(shape, walk, 1.0, 1.0).boxes())
    chunks = (_clip(chunks_a, shape), _clip(chunks_b, shape))
    grid = _with_caches(r.grid, tasks, chunks, itemsizes, hold, hold, mem, skip=(r.stream_a, r.stream_b))
    if grid is None or _worst(grid) >= _worst(r.grid):
        return r
    return replace(r, grid=grid)


def rows_hold(r: RowsPlan, bytes_per_element: int, mem: MemoryPlan, depth: int) -> int:
    """Memory one streamed-chunk task holds: its slab of both sides (one buffer per streamed side),
    the range reads in flight per streamed side and as many for the next chunk's first reads
    (issued ahead on remote stores, see chunks.RawStore.start_next), and when one side is read
    through tensorstore instead, a second slab for the decode behind that read."""
    slab = r.slab_rows * math.prod(r.grid.block_shape[1:]) * bytes_per_element
    read = 0 if (r.stream_a and r.stream_b) else slab
    return slab + read + 2 * depth * mem.piece_bytes * (r.stream_a + r.stream_b)


#: A box of an array: (start, stop) per dimension.
Box = tuple[tuple[int, ...], tuple[int, ...]]


def slab_boxes(shape: tuple[int, ...], walk: tuple[int, ...], slab_rows: int, chunk: Box) -> Iterator[Box]:
    """The boxes a rows plan reads for one walked `chunk` (start, stop), in order: `slab_rows` rows
    at a time, the first slab starting at the chunk's first row."""
    begin, stop = chunk
    for r0 in range(begin[0], stop[0], slab_rows):
        yield (r0,) + tuple(begin[1:]), (min(r0 + slab_rows, stop[0]),) + tuple(stop[1:])


def _worst(g: BlockGrid) -> float:
    return max(g.amplification_a, g.amplification_b)


def _with_caches(
    grid: BlockGrid,
    tasks: Iterable[list[Box]],
    chunks: tuple[list[int], list[int]],
    itemsizes: tuple[int, int],
    task_bytes: int,
    task_cost: int,
    mem: MemoryPlan,
    skip: tuple[bool, bool] = (False, False),
) -> BlockGrid | None:
    """`grid` with each side whose chunks cross the tasks' boxes read through a decoded-chunk cache.

    `tasks` are the engine's tasks in order, each the boxes it reads in order; a task is charged
    `task_bytes` against the bytes in flight and costs `task_cost` of memory. The most tasks in
    flight that leave room for caches holding every chunk from its first use to its last win:
    the grid then says how many (`hold`: the charge per task that keeps the engine to them).
    When no number of tasks leaves that room, one task at a time and what the room holds, with
    the chunk decodes replayed. None when no cache fits."""
    room = 2 * mem.in_flight_bytes
    crossing = [not (streamed or _aligned(grid.shape, grid.block_shape, c)) for c, streamed in zip(chunks, skip)]
    one = [x and math.prod(c) * i > room - task_cost for x, c, i in zip(crossing, chunks, itemsizes)]
    if not any(crossing) or any(one):
        return None  # nothing to cache, or not even one chunk fits beside one task
    kept, n = [], 0
    for t in tasks:  # a long traversal is judged by its prefix: it repeats along the outer axes
        kept.append(t)
        n += len(t)
        if n >= MAX_CACHE_REPLAY:
            break
    sides = [_Uses(kept, c, math.prod(c) * size) if x else None for c, size, x in zip(chunks, itemsizes, crossing)]
    most = max(1, min(mem.in_flight, mem.in_flight_bytes // max(1, task_bytes)))
    for w in range(most, 0, -1):
        maybe = [u.cache_bytes(w) if u else 0 for u in sides]
        need = [n for n in maybe if n is not None]
        if len(need) == len(maybe) and sum(need) <= room - w * task_cost:
            amps = [1.0 if u else a for u, a in zip(sides, (grid.amplification_a, grid.amplification_b))]
            return replace(grid, amplification_a=amps[0], amplification_b=amps[1], cache_a=need[0], cache_b=need[1],
                           hold=mem.in_flight_bytes // w)  # fmt: skip
    left = room - task_cost
    if left <= 0:
        return None
    out = replace(grid, hold=mem.in_flight_bytes)
    for k, u in enumerate(sides):  # one task at a time; the room split between the sides by need
        if u is None:
            continue
        share = left * u.chunk_bytes // sum(x.chunk_bytes for x in sides if x)
        cap = share // u.chunk_bytes
        if cap < u.per_task:
            return None
        amp = lru_decodes(u.sequence, cap) / max(1, u.distinct)
        if k == 0:
            out = replace(out, amplification_a=amp, cache_a=cap * u.chunk_bytes)
        else:
            out = replace(out, amplification_b=amp, cache_b=cap * u.chunk_bytes)
    return out


class _Uses:
    """Which chunks of one side each task reads, in order, and what caching them takes."""

    def __init__(self, tasks: list[list[Box]], chunks: list[int], chunk_bytes: int):
        self.chunk_bytes = chunk_bytes
        self.per_task = 0
        self.tasks: list[set[tuple[int, ...]]] = []
        self.sequence: list[list[tuple[int, ...]]] = []  # per box, in reading order
        for boxes in tasks:
            touched: set[tuple[int, ...]] = set()
            for box in chunk_uses(boxes, chunks):
                self.sequence.append(box)
                touched.update(box)
            self.tasks.append(touched)
            self.per_task = max(self.per_task, len(touched))
        self.distinct = len(set().union(*self.tasks)) if self.tasks else 0

    def cache_bytes(self, window: int) -> int | None:
        """Cache that keeps each chunk from the first to the last task using it while `window`
        consecutive tasks are in flight (their reads interleave), and that reading the boxes in
        order through an LRU cache of that size decodes every chunk once; None when no size up
        to one task's chunks over the one-task need does."""
        fitting = self._fitting()
        return None if fitting is None else max(self._peak(window), fitting) * self.chunk_bytes

    def _peak(self, window: int) -> int:
        """Most chunks live at once: from when a window of tasks first reaches one to its last task."""
        first: dict[tuple[int, ...], int] = {}
        last: dict[tuple[int, ...], int] = {}
        for t, touched in enumerate(self.tasks):
            for k in touched:
                first.setdefault(k, t)
                last[k] = t
        events = [0] * (len(self.tasks) + window + 1)
        for k, f in first.items():
            events[max(0, f - window + 1)] += 1
            events[last[k] + 1] -= 1
        live = peak = 0
        for e in events:
            live += e
            peak = max(peak, live)
        return peak

    def _fitting(self) -> int | None:
        """Smallest of (one-task need, that plus one task's chunks) with which the LRU replay decodes
        every chunk once (a larger cache never decodes more: LRU is a stack algorithm), cached."""
        if not hasattr(self, "_fit"):
            peak = self._peak(1)
            self._fit = next(
                (c for c in (peak, peak + self.per_task) if lru_decodes(self.sequence, c) == self.distinct), None
            )
        return self._fit


def _aligned(shape: tuple[int, ...], block: tuple[int, ...], chunks: list[int]) -> bool:
    """Every block covers whole chunks (or the whole axis): no chunk is shared by two blocks."""
    return all(b % c == 0 or b >= n for n, b, c in zip(shape, block, chunks))


def chunk_uses(boxes: Iterable[Box], chunks: list[int]) -> list[list[tuple[int, ...]]]:
    """For each box, the grid indices of the chunks it overlaps."""
    out = []
    for start, stop in boxes:
        ranges = [range(s // c, (e - 1) // c + 1) for s, e, c in zip(start, stop, chunks)]
        out.append(list(itertools.product(*ranges)))
    return out


def lru_decodes(uses: list[list[tuple[int, ...]]], capacity: int) -> int:
    """Chunk decodes when the boxes are read in order through an LRU cache of `capacity` chunks
    (tensorstore's cache pool evicts the least recently used entry first)."""
    cache: OrderedDict[tuple[int, ...], bool] = OrderedDict()
    decodes = 0
    for touched in uses:
        for key in touched:
            if key in cache:
                cache.move_to_end(key)
                continue
            decodes += 1
            cache[key] = True
            while len(cache) > capacity:
                cache.popitem(last=False)
    return decodes
