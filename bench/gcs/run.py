"""GCS benchmarks: streamdiff reading gs:// through tensorstore's gcs driver.

By default everything runs on this machine: fake-gcs-server (the tests' emulator) behind the
shaping proxy of bench/gcs/proxy.py (+latency per request, bandwidth cap), next to the same runs
straight against the emulator, and next to the whole-restore baseline reading gs:// through orbax.

    python bench/gcs/run.py [--latency-ms 50] [--bw-mbps 200] [--layers 3]
    python bench/gcs/run.py --bucket gs://my-bucket/streamdiff-bench     # a real bucket

With --bucket the checkpoints are uploaded under that prefix once (about 2 x 0.9 GB at the default
size, plus a 1,200-leaf checkpoint) and read back by every run. Credentials are found the way
tensorstore finds them (Application Default Credentials: `gcloud auth application-default login`
or a service account). Permissions: storage.objects.create and storage.objects.list/get on the
bucket. Cost: the storage of ~2 GB for as long as you keep it, plus egress if the machine is
outside the bucket's region (each value diff reads ~1.7 GB).

Printed per scenario: wall time, storage requests, bytes read, throughput as a fraction of the
shaped bandwidth, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(HERE))  # bench/run.py before this file (both are `run`)

import timeline  # noqa: E402
from gcs_emulator import Emulator, free_port, tensorstore_env, upload  # noqa: E402
from run import Measure, ensure_pair, gib, publish  # noqa: E402

PY = sys.executable


def many_leaves(path: str, n: int = 1200) -> None:
    import numpy as np
    import orbax.checkpoint as ocp

    if os.path.exists(os.path.join(path, "commit_success.txt")):
        return
    tree = {f"layer_{i:04d}": {"w": np.full((4,), i, np.float32)} for i in range(n)}
    ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_zarr3=True)).save(path, args=ocp.args.PyTreeSave(tree))


def streamdiff_run(label: str, a: str, b: str, env: dict, *extra: str, code: str = ROOT) -> tuple[Measure, dict]:
    """One run of the streamdiff in source tree `code` (run from there, so `-m streamdiff` finds it)."""
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    cmd = [PY, "-m", "streamdiff", a, b, "-q", "--json", out, *extra]
    m = Measure(label, cmd)
    old = dict(os.environ)
    here = os.getcwd()
    os.environ.update(env)
    os.environ["PYTHONPATH"] = code
    os.chdir(code)
    try:
        m.start = time.monotonic()
        m.run()
        m.end = time.monotonic()
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(old)
    with open(out) as f:
        summary = json.load(f)["summary"]
    os.remove(out)
    return m, summary


class Shaper:
    """bench/gcs/proxy.py in front of the emulator on one port, restarted per run when each run's
    request timeline is wanted (the proxy writes it when it stops)."""

    def __init__(self, upstream: int, latency_ms: float, bw_mbps: float):
        self.port = free_port()
        self.args = [PY, os.path.join(HERE, "proxy.py"), "--listen", str(self.port), "--upstream", str(upstream)]
        self.args += ["--latency-ms", str(latency_ms), "--bw-mbps", str(bw_mbps)]
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self, timeline: str | None = None) -> None:
        self.stop()
        self.proc = subprocess.Popen(self.args + (["--timeline", timeline] if timeline else []))
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None


def baseline_run(a: str, b: str, env: dict) -> Measure | str:
    m = Measure("baseline", [PY, os.path.join(ROOT, "bench", "baseline_restore.py"), a, b], ok_codes=(0,))
    old = dict(os.environ)
    os.environ.update(env)
    try:
        m.run()
    except SystemExit as e:  # orbax could not read gs:// here: say why instead of a number
        return str(e).strip().splitlines()[-1][:160]
    finally:
        os.environ.clear()
        os.environ.update(old)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--bw-mbps", type=float, default=200.0)
    ap.add_argument("--layers", type=int, default=3, help="size of the value-diff pair (~0.86 GiB each at 3)")
    ap.add_argument("--bucket", default=None, help="gs://bucket/prefix of a real bucket instead of the emulator")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "RESULTS.md"))
    ap.add_argument(
        "--before",
        default=None,
        help="another source tree of streamdiff (e.g. a `git archive` of an earlier commit): its value runs "
        "alternate with this tree's, labelled before/after",
    )
    ap.add_argument(
        "--timeline",
        action="store_true",
        help="record each shaped value run's requests at the proxy and print where the link sat idle (timeline.py)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the whole-restore baseline")
    args = ap.parse_args()
    codes = [("", ROOT)] if not args.before else [("before: ", os.path.abspath(args.before)), ("after: ", ROOT)]
    analyses: list[str] = []

    pair = ensure_pair(args.out, "sharded", args.layers)
    leaves = os.path.join(args.out, "many_leaves")
    many_leaves(leaves)
    size = gib(os.path.join(pair, "a")) + gib(os.path.join(pair, "b"))

    shaper: Shaper | None = None
    emu = None
    if args.bucket:
        u = urllib.parse.urlparse(args.bucket)
        bucket, prefix = u.netloc, u.path.strip("/")
        envs = {"bucket": {}}
    else:
        emu = Emulator(filesystem=True).__enter__()
        bucket, prefix = "bench", "ckpts"
        emu.create_bucket(bucket)
        shaper = Shaper(emu.port, args.latency_ms, args.bw_mbps)
        envs = {
            "direct": tensorstore_env(emu.url),
            f"shaped +{args.latency_ms:g} ms, {args.bw_mbps:g} MB/s": tensorstore_env(
                f"http://127.0.0.1:{shaper.port}"
            ),
        }
        os.environ.update(tensorstore_env(emu.url))  # uploads go straight to the emulator
    try:
        t0 = time.time()
        for name, local in (("a", os.path.join(pair, "a")), ("b", os.path.join(pair, "b")), ("leaves", leaves)):
            upload(local, bucket, f"{prefix}/{name}")
        print(f"uploaded {size:.2f} GiB + 1200 leaves in {time.time() - t0:.0f}s", flush=True)
        g = lambda x: f"gs://{bucket}/{prefix}/{x}"  # noqa: E731

        rows = []
        for link, env in envs.items():
            m, s = streamdiff_run("structure", g("leaves"), g("leaves"), env, "--structure-only")
            rows.append(("structure-only, 1200 leaves", link, m, s, None))
            shaped = link.startswith("shaped")
            cap = args.bw_mbps * 1e6 if shaped else None
            for budget in ("2G", "256M"):  # the default, and a small budget (fewer bytes in flight)
                for label, code in codes:  # before and after alternate: the same load for both
                    tl = None
                    if shaped and args.timeline and shaper is not None:
                        tl = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False).name
                        shaper.start(tl)
                    flags = ("--max-memory", budget, "--atol", "1e-6")
                    m, s = streamdiff_run("values", g("a"), g("b"), env, *flags, code=code)
                    name = f"{label}values differ, {size:.2f} GiB pair, --max-memory {budget}"
                    rows.append((name, link, m, s, cap))
                    if tl is not None and shaper is not None:
                        shaper.start()  # the stopped proxy wrote the timeline
                        res = timeline.analyse(timeline.load(tl), cap or 0, args.latency_ms / 1000, m.start, m.end)
                        analyses += [f"{name} ({link}):", *res.lines, ""]
                        os.remove(tl)
        base_env = next(iter(envs.values()))
        base = "skipped (--no-baseline)" if args.no_baseline else baseline_run(g("a"), g("b"), base_env)
    finally:
        if shaper is not None:
            shaper.stop()
        if emu is not None:
            emu.__exit__()

    # "of direct": the shaped run's throughput over the same scenario's straight to the emulator in
    # this invocation. On a busy machine the direct run is bound by the CPU left to it, so this says
    # how much of what the CPU allowed the shaped link reached, whatever the load.
    direct = {name: s["bytes_read"] / m.wall for name, link, m, s, cap in rows if link == "direct"}
    lines = [
        "| scenario | link | wall | requests | bytes read | throughput | of cap | of direct | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, link, m, s, cap in rows:
        mbps = s["bytes_read"] / m.wall / 1e6
        frac = f"{s['bytes_read'] / m.wall / cap:.0%}" if cap else "-"
        rel = f"{s['bytes_read'] / m.wall / direct[name]:.0%}" if cap and direct.get(name) else "-"
        lines.append(
            f"| {name} | {link} | {m.wall:.2f} s | {s['requests']} | {s['bytes_read'] / 1e6:,.0f} MB "
            f"| {mbps:,.0f} MB/s | {frac} | {rel} | {m.peak / 2**20:,.0f} MB |"
        )
    if isinstance(base, Measure):
        lines.append(
            f"| whole-restore baseline (orbax, gs://) | {next(iter(envs))} | {base.wall:.2f} s | - | - | - | - | - "
            f"| {base.peak / 2**20:,.0f} MB |"
        )
    else:
        lines.append(f"| whole-restore baseline (orbax, gs://) | - | n/a: {base} | | | | | | |")
    where = args.bucket or f"fake-gcs-server behind bench/gcs/proxy.py (+{args.latency_ms:g} ms, {args.bw_mbps:g} MB/s)"
    after = "\n".join(["Where the shaped link sat idle (bench/gcs/timeline.py):", "", "```", *analyses, "```"])
    publish(args.results, "GCS run", f"Storage: {where}. One run each.", "\n".join(lines), after if analyses else "")


if __name__ == "__main__":
    main()
