"""A loopback TCP proxy that makes a local GCS emulator behave like a distant bucket.

    client -> 127.0.0.1:LISTEN --(+latency per request, bandwidth cap)--> 127.0.0.1:UPSTREAM

* Latency: every byte the client sends is forwarded `latency_ms` after it arrived (order kept).
  With HTTP/1.1 each request is a fresh burst from the client, so each request's time to first
  byte grows by the latency: it plays the part of a round trip.
* Bandwidth: downloads (server -> client) of all connections share one token bucket.

This kernel has no netem, and shaping the shared loopback with tc is not allowed, hence user space.
* Requests in flight (--stats FILE): each request the client sends is outstanding until the last
  byte of its response (Content-Length) has gone back; the count over all connections is sampled
  every 10 ms while any is outstanding, and on exit FILE gets one JSON line: samples, mean, max,
  and the share of samples at each count. It tells whether a client keeps enough requests in
  flight to fill the link (bandwidth x latency bytes).

Only listens on and connects to loopback.

    python bench/gcs/proxy.py --listen 9100 --upstream 9000 --latency-ms 50 --bw-mbps 200 [--stats FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import signal
import time

PIECE = 256 * 1024


class Bucket:
    """Token bucket in bytes per second (rate <= 0: unlimited)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.burst = max(rate * 0.02, PIECE)
        self.tokens = self.burst
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        async with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)


class Flight:
    """Requests outstanding on all connections: a request counts from its first byte to the last
    byte of its response."""

    def __init__(self) -> None:
        self.now = 0
        self.samples: collections.Counter = collections.Counter()


_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.I)


class Responses:
    """Finds where each HTTP/1.1 response ends in a connection's download stream: headers, then
    Content-Length bytes of body, or chunks up to the last (zero-length) one."""

    def __init__(self) -> None:
        self.head = b""
        self.body_left: int | None = None  # None: in headers; -1: chunked
        self.tail = b""
        self.lengths: list[int] = []  # Content-Length of each response begun, not yet taken (-1: chunked)

    def feed(self, data: bytes) -> int:
        """Responses completed by `data` (the length of each response begun is appended to `lengths`)."""
        done = 0
        while data:
            if self.body_left is None:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return done
                m = _LENGTH.search(self.head[:end])
                data, self.head, self.tail = self.head[end + 4 :], b"", b"\r\n"
                self.body_left = int(m.group(1)) if m else -1
                self.lengths.append(self.body_left)
            if self.body_left < 0:  # chunked: ends with an empty chunk
                seen = self.tail + data
                end = seen.find(b"\r\n0\r\n\r\n")
                if end < 0:
                    self.tail = seen[-6:]
                    return done
                data = seen[end + 7 :]
                self.body_left = None
                done += 1
                continue
            take = min(self.body_left, len(data))
            self.body_left -= take
            data = data[take:]
            if self.body_left == 0:
                self.body_left = None
                done += 1
        return done


_RANGE = re.compile(rb"range:\s*bytes=(\d*)-(\d*)", re.I)


class Connection:
    """One client connection's requests sent and responses completed, kept in a shared `Flight`;
    with a `timeline`, one record per request: [arrived, first response byte, last response byte
    (monotonic seconds), body bytes, connection, request line, range]."""

    def __init__(self, flight: Flight, timeline: list | None = None, number: int = 0) -> None:
        self.flight = flight
        self.open = 0
        self.responses = Responses()
        self.timeline = timeline
        self.number = number
        self.queue: collections.deque = collections.deque()  # records of requests sent, not answered
        self.sending = b""

    def sent(self, data: bytes) -> None:
        n = data.count(b" HTTP/1.1\r\n")  # one request line per request
        self.open += n
        self.flight.now += n
        if self.timeline is None:
            return
        self.sending += data
        while (end := self.sending.find(b"\r\n\r\n")) >= 0:  # GETs only: no request bodies
            head, self.sending = self.sending[:end], self.sending[end + 4 :]
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            r = _RANGE.search(head)
            rng = [int(r.group(1) or -1), int(r.group(2) or -1)] if r else None
            self.queue.append([time.monotonic(), None, None, 0, self.number, line, rng])

    def received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.timeline is not None and self.queue and self.queue[0][1] is None:
            self.queue[0][1] = now
        n = min(self.open, self.responses.feed(data))
        self.open -= n
        self.flight.now -= n
        if self.timeline is None:
            del self.responses.lengths[:]
            return
        for _ in range(n):
            length = self.responses.lengths.pop(0) if self.responses.lengths else -1
            if not self.queue:
                break
            rec = self.queue.popleft()
            rec[1] = rec[1] or now
            rec[2], rec[3] = now, length
            self.timeline.append(rec)
            if self.queue and self.responses.lengths:  # the next response has begun
                self.queue[0][1] = now

    def close(self) -> None:
        self.flight.now -= self.open
        self.open = 0


async def _delayed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, conn: Connection | None = None
) -> None:
    """Forward with a fixed delay per byte, keeping order (a FIFO of timestamped pieces)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump_in() -> None:
        while data := await reader.read(PIECE):
            if conn is not None:
                conn.sent(data)
            await queue.put((time.monotonic() + delay, data))
        await queue.put((0.0, b""))

    async def pump_out() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    await asyncio.gather(pump_in(), pump_out())
    _close(writer)


async def _capped(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: Bucket, conn: Connection | None = None
) -> None:
    while data := await reader.read(PIECE):
        await bucket.take(len(data))
        if conn is not None:
            conn.received(data)
        writer.write(data)
        await writer.drain()
    _close(writer)


def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except Exception:  # noqa: BLE001 - the peer may already be gone
        pass


async def serve(
    listen: int, upstream: int, latency_ms: float, bw_mbps: float, stats: str | None = None, timeline: str | None = None
) -> None:
    bucket = Bucket(bw_mbps * 1e6)
    flight = Flight() if stats or timeline else None
    records: list | None = [] if timeline else None
    numbers = iter(range(1 << 62))

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            _close(cw)
            return
        conn = Connection(flight, records, next(numbers)) if flight else None
        try:
            await asyncio.gather(_delayed(cr, uw, latency_ms / 1000, conn), _capped(ur, cw, bucket, conn))
        except (ConnectionError, OSError, asyncio.CancelledError):  # peer gone, or shutting down
            _close(cw)
            _close(uw)
        finally:
            if conn is not None:
                conn.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.01)
            if flight.now > 0:
                flight.samples[flight.now] += 1

    sampler = asyncio.ensure_future(sample()) if flight else None
    async with server:
        await stop.wait()
    if timeline is not None:
        with open(timeline, "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    if stats is not None and flight is not None:
        sampler.cancel()
        n = sum(flight.samples.values())
        mean = sum(k * v for k, v in flight.samples.items()) / n if n else 0.0
        share = {k: round(v / n, 4) for k, v in sorted(flight.samples.items())} if n else {}
        with open(stats, "w") as f:
            json.dump({"samples": n, "mean": mean, "max": max(flight.samples, default=0), "share": share}, f)
            f.write("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--bw-mbps", type=float, default=200.0, help="download cap in MB/s (10^6 bytes); 0 = none")
    ap.add_argument("--stats", default=None, help="write requests-in-flight statistics (JSON) here on exit")
    ap.add_argument("--timeline", default=None, help="write one JSON line per request here on exit (timeline.py)")
    a = ap.parse_args()
    asyncio.run(serve(a.listen, a.upstream, a.latency_ms, a.bw_mbps, a.stats, a.timeline))


if __name__ == "__main__":
    main()
