"""`make bench`: one table, from one invocation, of streamdiff against today's alternative and
against what this machine can do at all.

For every scenario it runs, each as a separate process measured with os.wait4 (peak RSS of that
process alone) and wall time:

* baseline: orbax restores both checkpoints whole, then np.allclose per leaf (bench/baseline_restore.py);
* limit: tensorstore decodes every chunk of both and discards it (bench/decode_limit.py), or, for
  identical pairs, reads every chunk's stored bytes (bench/read_stored.py);
* streamdiff with a memory budget.

Peak RSS is measured with /usr/bin/time (%M) around each process.
Runs are repeated (--repeat) round-robin so machine noise hits all alike; the table shows medians
and ratios of medians. Pairs are generated on first use with bench/make_pair.py (real orbax).

    python bench/run.py [--repeat 3] [--layers 8] [--out bench/out] [--results bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
TIME = shutil.which("time", path="/usr/bin") or shutil.which("gtime")


@dataclass
class Measure:
    label: str
    cmd: list[str]
    ok_codes: tuple[int, ...] = (0, 1)
    walls: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    def run(self) -> None:
        """Wall time, and peak RSS from /usr/bin/time: a process's high-water mark survives exec,
        so a child forked straight from a big parent would report the parent's size."""
        with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
            cmd = [TIME, "-f", "%M", "-o", rss.name, *self.cmd] if TIME else self.cmd
            t0 = time.perf_counter()
            p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wall = time.perf_counter() - t0
            err = p.stderr.decode(errors="replace")
            if p.returncode not in self.ok_codes:
                raise SystemExit(f"{self.label}: exit {p.returncode}\n{' '.join(self.cmd)}\n{err[-2000:]}")
            kb = int(rss.read().strip().splitlines()[-1]) if TIME else 0
        self.walls.append(wall)
        self.rss.append(kb * 1024)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def peak(self) -> int:
        return max(self.rss)


def streamdiff(a: str, b: str, budget: str, *extra: str) -> list[str]:
    return [PY, "-m", "streamdiff", a, b, "-q", "--max-memory", budget, "--atol", "1e-6", "--rtol", "1e-5", *extra]


def script(name: str, *args: str) -> list[str]:
    return [PY, os.path.join(HERE, name), *args]


def ensure_pair(out: str, layout: str, layers: int) -> str:
    d = os.path.join(out, f"{layout}_l{layers}")
    if not all(os.path.exists(os.path.join(d, x, "commit_success.txt")) for x in ("a", "a2", "b")):
        print(f"generating {d} with orbax ...", flush=True)
        subprocess.run(script("make_pair.py", d, "--layers", str(layers), "--layout", layout), check=True)
    return d


def publish(results: str, title: str, intro: str, table: str, after: str = "") -> None:
    """Print a table and append it, dated, to the results file."""
    print()
    print(table)
    if after:
        print(after)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with open(results, "a") as f:
        f.write(f"\n## {title} of {stamp}\n\n{intro}\n\n{table}\n" + (f"\n{after}\n" if after else ""))
    print(f"appended to {results}")


def gib(path: str) -> float:
    total = 0
    for dp, _, fs in os.walk(path):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    return total / 2**30


def machine() -> str:
    from importlib.metadata import version

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, numpy {version('numpy')}, tensorstore {version('tensorstore')}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layers", type=int, default=8, help="size of the large pairs (~240 MiB per layer)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--no-baseline", action="store_true", help="skip the (slow, memory-hungry) whole restore")
    args = ap.parse_args()

    # ~0.34 GiB of embeddings plus ~0.17 GiB per layer: (L - 2) // 2 layers is half the size of L.
    small = ensure_pair(args.out, "sharded", max(1, (args.layers - 2) // 2))
    big = ensure_pair(args.out, "sharded", args.layers)
    npy = ensure_pair(args.out, "numpy", args.layers)

    def P(d, x):
        return os.path.join(d, x)

    def base(d: str, x: str) -> Measure | None:
        if args.no_baseline:
            return None
        return Measure("baseline", script("baseline_restore.py", P(d, "a"), P(d, x)), ok_codes=(0,))

    def row(name: str, d: str, x: str, limit: str, budget: str, note: str, baseline: bool = True):
        """(scenario, baseline, limit, streamdiff, note) for pair d/a vs d/x."""
        return (
            name,
            base(d, x) if baseline else None,
            Measure("limit", script(limit, P(d, "a"), P(d, x))),
            Measure("streamdiff", streamdiff(P(d, "a"), P(d, x), budget)),
            note,
        )

    decode, stored = "decode every chunk, discard", "read every chunk's stored bytes"
    rows = [
        row(f"(i) values differ, sharded ({gib(P(big, 'a')):.2f} GiB each)", big, "b", "decode_limit.py", "256M",
            f"--max-memory 256M; limit = {decode}"),
        row("(ii) identical (two saves of one tree), sharded", big, "a2", "read_stored.py", "256M",
            f"--max-memory 256M; limit = {stored}"),
        row("(iii) values differ, numpy single chunks up to 128 MiB", npy, "b", "decode_limit.py", "64M",
            "--max-memory 64M: chunks stream through zstd in slabs"),
        row("(iii') identical, numpy single chunks", npy, "a2", "read_stored.py", "64M",
            f"--max-memory 64M; limit = {stored}", baseline=False),
        row(f"(iv) values differ, sharded, half size ({gib(P(small, 'a')):.2f} GiB each)", small, "b",
            "decode_limit.py", "256M", "", baseline=False),
    ]  # fmt: skip
    half = rows[-1][3]

    measures = [m for r in rows for m in r[1:4] if m is not None]
    for k in range(args.repeat):
        for m in measures:
            shown = " ".join(os.path.relpath(c) if os.sep in c else c for c in m.cmd[1:])
            print(f"[{k + 1}/{args.repeat}] {m.label}: {shown}", flush=True)
            m.run()

    def fmt_mb(n: int) -> str:
        return f"{n / 2**20:,.0f} MB"

    lines = [
        "| scenario | baseline wall / RSS | limit wall / RSS | streamdiff wall / RSS "
        "| streamdiff vs baseline | vs limit | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, b, lim, sd, note in rows:
        bcol = f"{b.wall:.2f} s / {fmt_mb(b.peak)}" if b else "-"
        speed = f"{b.wall / sd.wall:.1f}x faster, {b.peak / sd.peak:.0f}x less memory" if b else "-"
        lines.append(
            f"| {name} | {bcol} | {lim.wall:.2f} s / {fmt_mb(lim.peak)} | {sd.wall:.2f} s / {fmt_mb(sd.peak)} "
            f"| {speed} | {sd.wall / lim.wall:.2f}x | {note} |"
        )
    big_sd = rows[0][3]
    growth = big_sd.peak / half.peak - 1
    ratio = gib(P(big, "a")) / gib(P(small, "a"))
    summary = (
        f"Peak RSS at {ratio:.2f}x the size: {fmt_mb(half.peak)} -> {fmt_mb(big_sd.peak)} ({growth:+.0%}) "
        f"with --max-memory 256M."
    )
    intro = (
        f"Machine: {machine()}. Medians of {args.repeat} round-robin runs; "
        f"RSS is the maximum peak RSS of the process (/usr/bin/time %M)."
    )
    publish(args.results, "Run", intro, "\n".join(lines), summary)


if __name__ == "__main__":
    main()
