"""CPU cost of the comparison kernel alone: `stats.block_stats` on float32 block pairs, this
worktree's code against an earlier commit's, round-robin in one process, results checked equal.

Blocks are what the engine hands over for the sharded bench pair at --max-memory 256M (B = A +
1e-4 noise, as bench/make_pair.py writes; 1.25 MiB of float32 per side; tile 2**17), cycled from a
pool larger than the last-level cache so every block arrives cold, as a freshly decoded one does.
The figure is CPU seconds of the comparing threads alone (`--threads` comparing at once, and with
`--neighbour-mib`, a thread streaming memory meanwhile as tensorstore's decoding does) per GiB of
float32 per side. `--set NAME=VALUE` overrides a constant of the new stats module, to try variants.

    PYTHONPATH=$PWD python bench/stats_kernel.py [--ref 67d06ef] [--repeat 5] [--block-mib 1.25]

`--ref` names the commit whose streamdiff/stats.py is "before" (default: the branch point of the
issue-13 kernel work). Every statistic (including each per-tile sum of squares) of both versions
must be equal, else the script exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from types import ModuleType
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BEFORE = "67d06ef"


def load_stats(ref: str | None) -> ModuleType:
    """streamdiff.stats as of git `ref` (None: this worktree's), loaded as a module of the
    streamdiff package so its relative imports resolve against this worktree."""
    import streamdiff.stats

    if ref is None:
        return streamdiff.stats
    src = subprocess.run(
        ["git", "-C", ROOT, "show", f"{ref}:streamdiff/stats.py"], check=True, capture_output=True, text=True
    ).stdout
    name = f"streamdiff._stats_{ref.replace('-', '_').replace('~', '_').replace('^', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "streamdiff"
    sys.modules[name] = mod
    exec(compile(src, f"{ref}:streamdiff/stats.py", "exec"), mod.__dict__)
    return mod


def make_pool(pool_mib: int, block_mib: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    n = int(block_mib * 2**20) // 4
    pool = []
    for _ in range(max(1, int(pool_mib / block_mib))):
        a = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
        b = a + rng.standard_normal(n, dtype=np.float32) * np.float32(1e-4)
        shape = (n // 1024, 1024) if n % 1024 == 0 else (n,)
        pool.append((a.reshape(shape), b.reshape(shape)))
    return pool


class Neighbour(threading.Thread):
    """What runs beside the comparison in a real diff: tensorstore decoding the next blocks, which
    streams memory through the shared last-level cache. Copies `mib` MiB back and forth until stopped
    (numpy releases the GIL while copying)."""

    def __init__(self, mib: int) -> None:
        super().__init__(daemon=True)
        self.src = np.ones(mib << 17)
        self.dst = np.empty_like(self.src)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            np.copyto(self.dst, self.src)


def run(mod: ModuleType, pool: list, policy: Any, tile: int, threads: int, rounds: int) -> tuple[float, float, Any]:
    """(CPU s of the comparing threads alone, wall s, merged statistics) of `rounds` passes over the
    pool on `threads` threads."""
    full = (len(pool) * pool[0][0].shape[0],) + pool[0][0].shape[1:]
    spent: list[float] = []

    def one(k: int) -> Any:
        a, b = pool[k % len(pool)]
        start = ((k % len(pool)) * a.shape[0],) + (0,) * (a.ndim - 1)
        c0 = time.thread_time()
        s = mod.block_stats(a, b, policy, start, full, tile)
        spent.append(time.thread_time() - c0)
        return s

    jobs = range(rounds * len(pool))
    w0 = time.perf_counter()
    if threads == 1:
        parts = [one(k) for k in jobs]
    else:
        with ThreadPoolExecutor(threads) as ex:
            parts = list(ex.map(one, jobs))
    w1 = time.perf_counter()
    acc = mod.LeafStats()
    for p in parts[: len(pool)]:  # one pass over the pool: the statistics compared between versions
        acc.merge(p)
    return sum(spent), w1 - w0, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default=BEFORE, help="commit whose stats.py is 'before'")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the pool per measurement")
    ap.add_argument("--pool-mib", type=int, default=256, help="MiB per side of distinct blocks")
    ap.add_argument("--block-mib", type=float, default=1.25, help="MiB per side of one block (the sharded pair's)")
    ap.add_argument("--tile", type=int, default=1 << 17, help="plan tile (--max-memory 256M with 2 jobs: 2**17)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--neighbour-mib", type=int, default=0, help="a thread copying this many MiB meanwhile")
    ap.add_argument("--set", action="append", default=[], help="NAME=VALUE: override a constant of the 'after' stats")
    ap.add_argument("--atol", type=float, default=1e-6)
    ap.add_argument("--rtol", type=float, default=1e-5)
    args = ap.parse_args()

    before, after = load_stats(args.ref), load_stats(None)
    for kv in args.set:
        k, v = kv.split("=")
        setattr(after, k, type(getattr(after, k))(v))
    pool = make_pool(args.pool_mib, args.block_mib, seed=0)
    gib = args.rounds * sum(a.nbytes for a, _ in pool) / 2**30
    kinds = {"before": before, "after": after}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    results: dict[str, Any] = {}
    neighbour = Neighbour(args.neighbour_mib) if args.neighbour_mib else None
    if neighbour:
        neighbour.start()
    for _ in range(args.repeat):
        for k, mod in kinds.items():
            pol = mod.Policy(atol=args.atol, rtol=args.rtol)
            c, w, acc = run(mod, pool, pol, args.tile, args.threads, args.rounds)
            cpus[k].append(c / gib)
            walls[k].append(w / gib)
            results[k] = acc
    if neighbour:
        neighbour.halt.set()
        neighbour.join()
    same = asdict(results["before"]) == asdict(results["after"])
    print(
        f"float32 blocks of {args.block_mib:g} MiB per side, pool {args.pool_mib} MiB per side, tile {args.tile}, "
        f"atol {args.atol:g} rtol {args.rtol:g}, {args.threads} thread(s), neighbour copying "
        f"{args.neighbour_mib} MiB, {args.repeat} round-robin runs "
        f"of {gib:.2f} GiB per side; before = {args.ref}"
    )
    for k in kinds:
        print(
            f"{k:>6}: CPU {statistics.median(cpus[k]):.3f} s/GiB (min {min(cpus[k]):.3f}), "
            f"wall {statistics.median(walls[k]):.3f} s/GiB"
        )
    ratio = statistics.median(cpus["after"]) / statistics.median(cpus["before"])
    print(f"after/before CPU: {ratio:.2f}; statistics identical (every field, each tile's sum of squares): {same}")
    if not same:
        print("before:", asdict(results["before"]))
        print("after: ", asdict(results["after"]))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
