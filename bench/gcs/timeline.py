"""Where a shaped link sits idle: an analysis of the request timeline bench/gcs/proxy.py writes.

    python bench/gcs/timeline.py TIMELINE.jsonl [--bw-mbps 200] [--start T0 --end T1]

Each line of the timeline is one request as the proxy saw it: [arrived, first response byte, last
response byte] (CLOCK_MONOTONIC seconds, the same clock in every process of the machine), body
bytes, connection, request line, byte range. `--start` / `--end` are the client process's own start
and exit on that clock (bench/gcs/run.py passes them), so the time before the first request
(interpreter start, imports, structure reads that hit no link) and after the last response count too.

The link is idle for `span - bytes / bandwidth` seconds. Each 5 ms slice's shortfall (bandwidth x
slice - bytes delivered in it) is charged to what the client was doing then:

* `no request outstanding`, split into before the first request, between requests, after the last
  response: the client asked for nothing (start-up, CPU, serial dependencies);
* `only waiting for first bytes`: requests outstanding, none transferring: too few requests in
  flight to cover the round trip (each must be issued a latency ahead of the link needing it);
* `transferring below the cap`: some bytes flowing, not enough of them: too few bytes in flight.

Slices are judged alone, so the categories add up to a little more than the idle time when bytes
arrive above the cap in bursts (the proxy's token bucket allows 20 ms of them): they rank causes;
the first line gives the total.

Printed besides: requests and bytes outstanding over the run (mean, and the share of time below the
bandwidth-delay product), the metadata phase (until the first read of 1 MiB or more), the tail
(from when fewer than 4 requests stay outstanding to the end) and the longest gaps with nothing
outstanding, with the requests either side of them.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

SLICE = 0.005
BIG = 1 << 20


@dataclass(frozen=True)
class Request:
    arrived: float
    first: float
    end: float
    nbytes: int
    conn: int
    line: str
    range: tuple[int, int] | None

    @property
    def asked(self) -> int:
        """Bytes asked for: the range's length, or what came back when there was no range."""
        if self.range and self.range[0] >= 0 and self.range[1] >= 0:
            return self.range[1] - self.range[0] + 1
        return max(self.nbytes, 0)

    def what(self) -> str:
        path = self.line.split(" ")[1] if " " in self.line else self.line
        path = path.split("?")[0].rsplit("/o/", 1)[-1].replace("%2F", "/")
        rng = f" [{self.range[0]}-{self.range[1]}]" if self.range else ""
        return f"{path[-60:]}{rng} {self.nbytes / 2**20:.2f} MiB"


def load(path: str) -> list[Request]:
    out = []
    with open(path) as f:
        for line in f:
            a, first, end, n, conn, req, rng = json.loads(line)
            out.append(Request(a, first, end, n, conn, req, tuple(rng) if rng else None))
    return sorted(out, key=lambda r: r.arrived)


@dataclass
class Analysis:
    span: float
    nbytes: int
    requests: int
    utilisation: float
    idle: dict[str, float]
    mean_outstanding: float
    mean_bytes_outstanding: float
    below_bdp: float  # share of the time between first request and last response with < BDP outstanding
    metadata_phase: float
    metadata_requests: int
    tail: float
    gaps: list[tuple[float, float, str, str]]
    lines: list[str]


def analyse(
    reqs: Sequence[Request], bw: float, latency: float = 0.05, start: float | None = None, end: float | None = None
) -> Analysis:
    """`bw`: the link's bytes per second; `latency`: its added round trip (for the bandwidth-delay product)."""
    if not reqs:
        raise SystemExit("no requests in the timeline")
    t0 = min(r.arrived for r in reqs) if start is None else start
    t1 = max(r.end for r in reqs) if end is None else end
    first_req = min(r.arrived for r in reqs)
    last_end = max(r.end for r in reqs)
    n = max(1, math.ceil((t1 - t0) / SLICE))
    delivered = [0.0] * n
    waiting = [0] * n
    moving = [0] * n
    out_bytes = [0.0] * n

    def idx(t: float) -> int:
        return min(n - 1, max(0, int((t - t0) / SLICE)))

    for r in reqs:
        for i in range(idx(r.arrived), idx(r.first) + 1):
            waiting[i] += 1
            out_bytes[i] += r.nbytes
        lo, hi = idx(r.first), idx(r.end)
        dur = max(r.end - r.first, 1e-9)
        for i in range(lo, hi + 1):
            a = max(r.first, t0 + i * SLICE)
            b = min(r.end, t0 + (i + 1) * SLICE)
            if b > a or lo == hi:
                delivered[i] += r.nbytes * ((b - a) / dur if lo != hi else 1.0)
            if i > lo:
                moving[i] += 1
                out_bytes[i] += r.nbytes * max(0.0, (r.end - (t0 + i * SLICE)) / dur)
    cap = bw * SLICE
    idle = {
        "no request outstanding: before the first request": 0.0,
        "no request outstanding: between requests": 0.0,
        "no request outstanding: after the last response": 0.0,
        "only waiting for first bytes": 0.0,
        "transferring below the cap": 0.0,
    }
    for i in range(n):
        short = max(0.0, cap - delivered[i]) / bw
        t = t0 + (i + 0.5) * SLICE
        if waiting[i] == 0 and moving[i] == 0:
            if t < first_req:
                idle["no request outstanding: before the first request"] += short
            elif t > last_end:
                idle["no request outstanding: after the last response"] += short
            else:
                idle["no request outstanding: between requests"] += short
        elif moving[i] == 0:
            idle["only waiting for first bytes"] += short
        else:
            idle["transferring below the cap"] += short
    active = [i for i in range(n) if first_req <= t0 + i * SLICE <= last_end]
    outstanding = [waiting[i] + moving[i] for i in active]
    bdp = bw * latency
    total = sum(r.nbytes for r in reqs)
    big = [r for r in reqs if r.asked >= BIG]
    meta_end = min((r.arrived for r in big), default=last_end)
    meta = [r for r in reqs if r.arrived < meta_end]
    # The tail: from the last moment at least 4 requests were outstanding.
    tail_from = first_req
    for i in active:
        if waiting[i] + moving[i] >= 4:
            tail_from = t0 + (i + 1) * SLICE
    gaps = _gaps(reqs)
    span = t1 - t0
    a = Analysis(
        span=span,
        nbytes=total,
        requests=len(reqs),
        utilisation=total / bw / span,
        idle=idle,
        mean_outstanding=sum(outstanding) / max(1, len(outstanding)),
        mean_bytes_outstanding=sum(out_bytes[i] for i in active) / max(1, len(active)),
        below_bdp=sum(1 for i in active if out_bytes[i] < bdp) / max(1, len(active)),
        metadata_phase=meta_end - t0,
        metadata_requests=len(meta),
        tail=t1 - tail_from,
        gaps=gaps,
        lines=[],
    )
    a.lines = _lines(a, bw, bdp, first_req - t0, t1 - last_end)
    return a


def _gaps(reqs: Sequence[Request]) -> list[tuple[float, float, str, str]]:
    """Intervals with no request outstanding between the first request and the last response,
    longest first: (start, length, the request that ended it... before, the request after)."""
    events = sorted([(r.arrived, 1, r) for r in reqs] + [(r.end, -1, r) for r in reqs], key=lambda e: (e[0], -e[1]))
    open_ = 0
    last: Request | None = None
    since = 0.0
    out = []
    for t, d, r in events:
        if d < 0:
            open_ -= 1
            if open_ == 0:
                since, last = t, r
        else:
            if open_ == 0 and last is not None and t - since > 0.002:
                out.append((since, t - since, last.what(), r.what()))
            open_ += 1
    return sorted(out, key=lambda g: -g[1])


def _lines(a: Analysis, bw: float, bdp: float, before: float, after: float) -> list[str]:
    ideal = a.nbytes / bw
    out = [
        f"span {a.span:.2f} s, {a.requests} requests, {a.nbytes / 1e6:,.0f} MB: the link alone needs {ideal:.2f} s, "
        f"utilisation {a.utilisation:.1%}, idle {a.span - ideal:.2f} s",
        f"  first request {before:.2f} s after the start, process exit {after:.2f} s after the last response",
    ]
    for k, v in a.idle.items():
        out.append(f"  idle {v:6.2f} s  {k}")
    out.append(
        f"  outstanding (first request to last response): {a.mean_outstanding:.1f} requests, "
        f"{a.mean_bytes_outstanding / 1e6:.1f} MB on average; below the bandwidth-delay product "
        f"({bdp / 1e6:.0f} MB) {a.below_bdp:.0%} of the time"
    )
    out.append(f"  metadata phase: {a.metadata_phase:.2f} s from the start, {a.metadata_requests} requests")
    out.append(f"  tail with fewer than 4 requests outstanding: {a.tail:.2f} s")
    if a.gaps:
        total = sum(g[1] for g in a.gaps)
        out.append(f"  {len(a.gaps)} gaps with nothing outstanding, {total:.2f} s in all; longest:")
        for _start, length, before_r, after_r in a.gaps[:5]:
            out.append(f"    {length * 1000:6.0f} ms after {before_r}  ->  {after_r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("timeline")
    ap.add_argument("--bw-mbps", type=float, default=200.0)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--start", type=float, default=None, help="client process start (CLOCK_MONOTONIC s)")
    ap.add_argument("--end", type=float, default=None, help="client process exit (CLOCK_MONOTONIC s)")
    a = ap.parse_args()
    res = analyse(load(a.timeline), a.bw_mbps * 1e6, a.latency_ms / 1000, a.start, a.end)
    print("\n".join(res.lines))


if __name__ == "__main__":
    main()
