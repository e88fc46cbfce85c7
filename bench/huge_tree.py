"""Huge trees: the cost per leaf, on checkpoints with many tiny leaves written by real orbax.

    python bench/huge_tree.py [--leaves 10000 30000 100000] [--chunks 1000 1000000] [--out bench/out/huge]
                              [--results bench/RESULTS.md] [--repeat 3]

A 405B model with AdamW state has thousands of leaves unscanned, mixture-of-experts trees tens of
thousands. Each checkpoint here is `params`/`mu`/`nu` x unscanned layers x 20 weights of 4x4 float32
(OCDBT + zarr, `StandardCheckpointer`), so the data is negligible and what is measured is the cost per
leaf: a structure-only diff and a value self-diff, wall time, CPU time (user+sys, robust to a busy
machine) and peak RSS from /usr/bin/time.

The chunk-count pair measures the cost per chunk instead: one orbax checkpoint holding a single
float32 vector, whose stored array is then rewritten in place by tensorstore as chunks of one element
(1k or 1M chunks in the same OCDBT database, as a checkpoint saved on many devices is). Planning and
streaming must not hold anything per chunk for the whole run, so the peak RSS of the two value
self-diffs should differ by little (target: 50 MB).

Each row runs `--repeat` times, its runs round-robin with the other rows of its checkpoint, and shows
the median wall time with the CPU time and peak RSS of that median-wall run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import TIME, machine, publish  # noqa: E402

WEIGHTS_PER_LAYER = 20
PARTS = ("params", "mu", "nu")


def write(path: str, leaves: int) -> None:
    """An orbax checkpoint of about `leaves` leaves (a multiple of 60)."""
    if os.path.isdir(path):
        return
    code = f"""
import os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np, orbax.checkpoint as ocp
rng = np.random.default_rng(0)
layers = max(1, {leaves} // ({len(PARTS)} * {WEIGHTS_PER_LAYER}))
tree = {{p: {{f"layers_{{i}}": {{f"w{{j}}": {{"kernel": rng.standard_normal((4, 4)).astype(np.float32)}}
          for j in range({WEIGHTS_PER_LAYER})}} for i in range(layers)}} for p in {PARTS!r}}}
with ocp.StandardCheckpointer() as c:
    c.save({os.path.abspath(path)!r}, tree)
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def write_chunked(path: str, chunks: int) -> None:
    """An orbax checkpoint of one float32 vector of `chunks` elements, stored one element per chunk."""
    if os.path.isdir(path):
        return
    code = f"""
import os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np, orbax.checkpoint as ocp, tensorstore as ts
n = {chunks}
with ocp.StandardCheckpointer() as c:
    c.save({os.path.abspath(path)!r}, {{"x": np.zeros(n, np.float32)}})
base = {{"driver": "file", "path": {os.path.abspath(path)!r} + "/"}}
kv = {{"driver": "ocdbt", "base": base, "path": "x/"}}
arr = ts.open({{"driver": "zarr", "kvstore": kv, "metadata": {{"shape": [n], "chunks": [1], "dtype": "<f4",
              "compressor": {{"id": "zstd", "level": 1}}}}}}, create=True, delete_existing=True).result()
with ts.Transaction() as txn:
    arr.with_transaction(txn)[...] = np.arange(n, dtype=np.float32)
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def measure(cmd: list[str], timeout: float) -> tuple[float, float, int, str]:
    """(wall s, cpu s, peak RSS bytes, exit code or 'timeout') of one process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        t0 = time.perf_counter()
        # A session of its own, so a timeout stops streamdiff too, not only /usr/bin/time.
        p = subprocess.Popen([TIME, "-f", "%U %S %M", "-o", out.name, *cmd], start_new_session=True)
        try:
            code = str(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            code = f"timeout ({timeout:.0f} s)"
        wall = time.perf_counter() - t0
        fields = (out.read().strip().splitlines() or ["nan nan 0"])[-1].split()
    if len(fields) != 3:  # killed: /usr/bin/time wrote a signal line instead
        fields = ["nan", "nan", "0"]
    return wall, float(fields[0]) + float(fields[1]), int(fields[2]) * 1024, code


def median_run(runs: list[tuple[float, float, int, str]]) -> tuple[float, float, int, str]:
    """The run of median wall time (the upper middle one of an even count), whole: its CPU and RSS
    belong to it."""
    ordered = sorted(runs, key=lambda r: r[0])
    return ordered[len(ordered) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leaves", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--chunks", type=int, nargs="*", default=[1_000, 1_000_000], help="chunk counts of the vector pair")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "huge"))
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds before a run is stopped and reported")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the table shows the median")
    args = ap.parse_args()
    sd = [sys.executable, "-m", "streamdiff"]
    rows = ["| checkpoint | run | wall | CPU | peak RSS | exit |", "|---|---|---|---|---|---|"]
    cases = [(f"{n:,} leaves", os.path.join(args.out, f"c{n}"), write, n) for n in args.leaves]
    cases += [(f"1 leaf, {n:,} chunks", os.path.join(args.out, f"chunks{n}"), write_chunked, n) for n in args.chunks]
    loads = [os.getloadavg()[0]]
    for name, path, writer, n in cases:
        writer(path, n)
        runs: dict[str, list[tuple[float, float, int, str]]] = {}
        for _ in range(args.repeat):  # round-robin: machine noise hits both runs alike
            for label, extra in (("structure-only", ["--structure-only"]), ("value self-diff", [])):  # stdout: -q
                runs.setdefault(label, []).append(measure([*sd, path, path, "-q", *extra], args.timeout))
                loads.append(os.getloadavg()[0])
        for label, got in runs.items():
            timed_out = [r for r in got if r[3].startswith("timeout")]
            if timed_out:  # killed with /usr/bin/time: no CPU or RSS figures
                rows.append(f"| {name} | {label} | > {timed_out[0][0]:.0f} s | - | - | {timed_out[0][3]} |")
            else:
                wall, cpu, rss, code = median_run(got)
                rows.append(f"| {name} | {label} | {wall:.1f} s | {cpu:.1f} s | {rss / 1e6:,.0f} MB | {code} |")
            print(rows[-1], flush=True)
    intro = (
        f"{machine()} `python bench/huge_tree.py --leaves {' '.join(map(str, args.leaves))} --chunks "
        f"{' '.join(map(str, args.chunks))} --repeat {args.repeat}`: orbax StandardCheckpointer, "
        f"{len(PARTS)} parts x layers x {WEIGHTS_PER_LAYER} weights of 4x4 float32; "
        "the chunk pair is one float32 vector stored one element "
        "per chunk. Default --max-memory (2G) and jobs. Medians of "
        f"{args.repeat} round-robin runs: wall is the median, CPU (user + sys of the process) and peak RSS are "
        f"those of the median-wall run. Load average (1 min) {min(loads):.1f}-{max(loads):.1f} during the runs."
    )
    publish(args.results, "Huge trees (bench/huge_tree.py)", intro, "\n".join(rows))


if __name__ == "__main__":
    main()
