"""A loopback HTTP proxy in front of fake-gcs-server that misbehaves on request, for the fault tests.

    client (tensorstore) -> 127.0.0.1:proxy.port -> 127.0.0.1:upstream (fake-gcs-server)

One request per client connection: the proxy reads a request, forwards it upstream with
`Connection: close`, and relays the whole response (which then carries `Connection: close`, so
curl opens a fresh connection for its next request). A `Fault` picks requests by a substring of
the request line and misbehaves on them:

    stall        read the request, then send nothing, forever (the connection stays open)
    stall_body   send the response headers and half the body, then nothing
    status       answer with an HTTP error status (503, 429, 403, 404...) and a GCS-like JSON body
    reset        read the request, then close with a TCP reset
    truncate     send the headers and half the body, then close the connection

`times` bounds how many matching requests misbehave (None: all of them); `every` makes only one
matching request in `every` misbehave (a partial outage). Runs its event loop in a daemon thread,
so a test can change `proxy.fault` while a subprocess talks to it. Loopback only, stdlib only.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from dataclasses import dataclass, field

MODES = ("stall", "stall_body", "status", "reset", "truncate")


@dataclass
class Fault:
    mode: str
    match: str = ""  # substring of the request line ("GET /storage/v1/b/bucket/o?prefix=..."); "" = all
    status: int = 503
    times: int | None = None  # misbehave on the first N matching requests only
    every: int = 1  # misbehave on one matching request in `every`
    seen: int = field(default=0, init=False)
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}")

    def applies(self, request_line: str) -> bool:
        if self.match not in request_line:
            return False
        self.seen += 1
        if (self.seen - 1) % self.every:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


class FaultProxy:
    """`with FaultProxy(upstream_port) as p:` listens on `p.url`; set `p.fault` to misbehave."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.fault: Fault | None = None
        self.requests: list[str] = []  # request lines seen, in order
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()

    def _pick(self, request_line: str) -> Fault | None:
        with self._lock:
            self.requests.append(request_line)
            f = self.fault
            return f if f is not None and f.applies(request_line) else None

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            head = await cr.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await cr.readexactly(length) if length else b""
            fault = self._pick(lines[0])
            if fault is not None and fault.mode == "stall":
                await self._stop.wait()
                return
            if fault is not None and fault.mode == "reset":
                _reset(cw)
                return
            if fault is not None and fault.mode == "status":
                cw.write(_error_response(fault.status))
                await cw.drain()
                return
            response = await self._forward(lines, body)
            if fault is None:
                cw.write(response)
                await cw.drain()
                return
            split = response.index(b"\r\n\r\n") + 4
            half = split + max(1, (len(response) - split) // 2)
            cw.write(response[:half])
            await cw.drain()
            if fault.mode == "stall_body":
                await self._stop.wait()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            try:
                cw.close()
            except Exception:  # noqa: BLE001 - the peer may already be gone
                pass

    async def _forward(self, lines: list[str], body: bytes) -> bytes:
        """The whole upstream response to one request (test objects are small)."""
        kept = [ln for ln in lines[1:] if ln and ln.split(":", 1)[0].strip().lower() != "connection"]
        head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        try:
            uw.write(head + body)
            await uw.drain()
            return await ur.read()
        finally:
            uw.close()


def _error_response(status: int) -> bytes:
    reason = {403: "Forbidden", 404: "Not Found", 429: "Too Many Requests", 503: "Service Unavailable"}.get(
        status, "Error"
    )
    body = json.dumps({"error": {"code": status, "message": f"injected {status} {reason}"}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: SO_LINGER on, timeout 0."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
