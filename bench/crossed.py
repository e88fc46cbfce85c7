"""Crossed chunk grids: the same values saved on another mesh, compared at small budgets.

    python bench/crossed.py [--layers 2] [--repeat 3] [--budgets 256M 512M]

The pair (bench/make_pair.py --layout crossed, real orbax): A sharded on mesh data=4, model=2 and
B, the same values, on mesh data=8, model=1, so chunk grids cross (embedding [8192,512] against
[4096,1024], MLP kernels [256,L,2048] against [128,L,4096]). Each budget's streamdiff run and the
decode limit (bench/decode_limit.py: tensorstore decodes every chunk of both, discards it) run
round-robin in one invocation; the table gives medians, the ratio to the limit, the bytes read
against the bytes stored, the largest `read_amplification` any leaf reports, and the load average
(the machine is shared) around the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import PY, Measure, machine, publish, script  # noqa: E402


def ensure_crossed(out: str, layers: int) -> str:
    d = os.path.join(out, f"crossed_l{layers}")
    if not all(os.path.exists(os.path.join(d, x, "commit_success.txt")) for x in ("a", "b")):
        print(f"generating {d} with orbax ...", flush=True)
        subprocess.run(script("make_pair.py", d, "--layers", str(layers), "--layout", "crossed"), check=True)
    return d


def stored_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(path) for f in fs)


class Diff(Measure):
    """A streamdiff run that also keeps, per run, the bytes read and the largest amplification."""

    def __init__(self, label: str, a: str, b: str, budget: str):
        self.out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
        cmd = [PY, "-m", "streamdiff", a, b, "-q", "--max-memory", budget, "--json", self.out]
        super().__init__(label, cmd)
        self.bytes_read: list[int] = []
        self.amp: list[float] = []
        self.verdicts: list[int] = []

    def run(self) -> None:
        super().run()
        with open(self.out) as f:
            d = json.load(f)
        self.bytes_read.append(d["summary"]["bytes_read"])
        self.amp.append(max((leaf.get("read_amplification", 1.0) for leaf in d["leaves"]), default=1.0))
        self.verdicts.append(d["summary"]["equal"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2, help="pair size: ~0.35 GiB + ~0.17 GiB per layer a side")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budgets", nargs="+", default=["256M", "512M"])
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()
    d = ensure_crossed(args.out, args.layers)
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    stored = stored_bytes(a) + stored_bytes(b)
    limit = Measure("limit", script("decode_limit.py", a, b))
    diffs = [Diff(f"streamdiff {x}", a, b, x) for x in args.budgets]
    loads = [os.getloadavg()[0]]
    for k in range(args.repeat):
        for m in (limit, *diffs):
            print(f"[{k + 1}/{args.repeat}] {m.label}", flush=True)
            m.run()
            loads.append(os.getloadavg()[0])
    lines = [
        "| run | wall (median) | peak RSS | vs limit | bytes read / stored | max read_amplification |",
        "|---|---|---|---|---|---|",
        f"| decode limit | {limit.wall:.2f} s | {limit.peak / 2**20:,.0f} MB | 1.00x | - | - |",
    ]
    for m in diffs:
        ratio = max(m.bytes_read) / stored
        lines.append(
            f"| {m.label} | {m.wall:.2f} s | {m.peak / 2**20:,.0f} MB | {m.wall / limit.wall:.2f}x "
            f"| {ratio:.2f} ({max(m.bytes_read) / 1e9:.2f} / {stored / 1e9:.2f} GB) | {max(m.amp):g} |"
        )
    intro = (
        f"Machine: {machine()}. `python bench/crossed.py --layers {args.layers} --repeat {args.repeat}`: "
        f"pair {d} (orbax, meshes 4x2 and 8x1, same values), medians of {args.repeat} round-robin runs; "
        f"1-minute load average {min(loads):.1f}-{max(loads):.1f} during the runs (2 cores, shared)."
    )
    publish(args.results, "Crossed chunk grids", intro, "\n".join(lines))
    for m in diffs:
        os.remove(m.out)


if __name__ == "__main__":
    main()
