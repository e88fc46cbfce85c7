"""A loopback TCP proxy that makes a local GCS emulator behave like a distant bucket.

    client -> 127.0.0.1:LISTEN --(+latency per request, bandwidth cap)--> 127.0.0.1:UPSTREAM

* Latency: every byte the client sends is forwarded `latency_ms` after it arrived (order kept).
  With HTTP/1.1 each request is a fresh burst from the client, so each request's time to first
  byte grows by the latency: it plays the part of a round trip.
* Bandwidth: downloads (server -> client) of all connections share one token bucket.

This kernel has no netem, and shaping the shared loopback with tc is not allowed, hence user space.
Only listens on and connects to loopback.

    python bench/gcs/proxy.py --listen 9100 --upstream 9000 --latency-ms 50 --bw-mbps 200
"""

from __future__ import annotations

import argparse
import asyncio
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


async def _delayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward with a fixed delay per byte, keeping order (a FIFO of timestamped pieces)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump_in() -> None:
        while data := await reader.read(PIECE):
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


async def _capped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: Bucket) -> None:
    while data := await reader.read(PIECE):
        await bucket.take(len(data))
        writer.write(data)
        await writer.drain()
    _close(writer)


def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except Exception:  # noqa: BLE001 - the peer may already be gone
        pass


async def serve(listen: int, upstream: int, latency_ms: float, bw_mbps: float) -> None:
    bucket = Bucket(bw_mbps * 1e6)

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            _close(cw)
            return
        try:
            await asyncio.gather(_delayed(cr, uw, latency_ms / 1000), _capped(ur, cw, bucket))
        except (ConnectionError, OSError, asyncio.CancelledError):  # peer gone, or shutting down
            _close(cw)
            _close(uw)

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--bw-mbps", type=float, default=200.0, help="download cap in MB/s (10^6 bytes); 0 = none")
    a = ap.parse_args()
    asyncio.run(serve(a.listen, a.upstream, a.latency_ms, a.bw_mbps))


if __name__ == "__main__":
    main()
