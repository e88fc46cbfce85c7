"""Where bytes come from: a user string becomes a tensorstore kvstore, and a `Dir` addresses into it.

All reads go through tensorstore kvstores, so local disk and `gs://` take one code path. Listing a
directory's immediate children uses `os.scandir` on local disk (tensorstore's file listing is
recursive, which is wasteful on a manager root full of steps) and a prefix listing elsewhere.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import tensorstore as ts

from ..errors import CorruptCheckpointError, NotFoundError, StreamdiffError, UsageError
from ..units import human_bytes
from .localfs import check_file
from .validate import MAX_METADATA_BYTES

#: Retries for remote storage: a dead endpoint must fail within seconds, not minutes.
MAX_RETRIES = 3
GCS_RETRIES = {"max_retries": MAX_RETRIES, "initial_delay": "100ms", "max_delay": "1s"}
TRIES = MAX_RETRIES + 1

#: Seconds a remote request may make no progress (`--timeout`). Each try gets half of it, so with
#: TRIES tries a store that stalls completely fails after about twice the timeout.
DEFAULT_TIMEOUT = 30.0
MIN_TIMEOUT, MAX_TIMEOUT = 1.0, 86400.0  # curl counts whole seconds; a day is "no timeout"
_timeout = [DEFAULT_TIMEOUT, math.ceil(DEFAULT_TIMEOUT / 2)]  # as configured: --timeout, seconds per try


def configure_http(timeout: float = DEFAULT_TIMEOUT) -> None:
    """Bound every GCS request before tensorstore makes its first HTTP request in this process.

    tensorstore has no context option for a stall timeout: its curl transport reads
    TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS (abort a transfer that moves fewer than
    TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES per second for that long: 60 s by default, retried, so a
    stalled bucket took minutes) and TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS once, when its curl
    handle factory is created. So they are set here, in-process, before the first remote use; a
    later call in the same process cannot change them (the API documents this). The aborted try
    is DEADLINE_EXCEEDED, which the gcs driver retries like a 503 (see GCS_RETRIES).
    """
    ok = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    if not (ok and math.isfinite(timeout) and MIN_TIMEOUT <= timeout <= MAX_TIMEOUT):
        raise UsageError(f"--timeout must be {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g} seconds, got {timeout!r}")
    per_try = max(1, math.ceil(timeout / 2))
    os.environ["TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS"] = str(per_try)
    os.environ["TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS"] = str(per_try)
    _timeout[:] = [float(timeout), per_try]


#: Cache for OCDBT manifests and B-tree nodes (named pool, referenced by every ocdbt kvstore spec):
#: without it each chunk read would fetch and decode the root node again.
META_CACHE = "cache_pool#meta"
META_CACHE_BYTES = 16 << 20


#: Parallel requests to a remote store. tensorstore's default is 32; a GCS bucket serves far more,
#: and every round trip (20-100 ms) that is not overlapped is lost time.
DEFAULT_IO_CONCURRENCY = 64
#: Largest --io-concurrency the CLI takes (tensorstore opens that many connections).
MAX_IO_CONCURRENCY = 4096


def make_context(remote: bool, io_concurrency: int | None = None) -> ts.Context:
    """One context per checkpoint: no chunk cache (memory is budgeted), a metadata cache, and for
    remote stores bounded retries (a dead endpoint fails in about a second, not minutes) and a
    request concurrency."""
    spec: dict[str, Any] = {
        "cache_pool": {"total_bytes_limit": 0},
        META_CACHE: {"total_bytes_limit": META_CACHE_BYTES},
    }
    if remote:
        spec["gcs_request_retries"] = GCS_RETRIES
        spec["gcs_request_concurrency"] = {"limit": io_concurrency or DEFAULT_IO_CONCURRENCY}
    return ts.Context(spec)


def cached_context(parent: ts.Context, nbytes: int) -> ts.Context:
    """`parent` with a decoded-chunk cache of `nbytes` (the planner's, see plan.pair_grid): stores
    opened with it keep each decoded chunk until newer ones push it out, least recently used first.
    Everything else (metadata cache, request limits, retries) is the parent's."""
    slack = nbytes // 64 + (64 << 10)  # the pool counts a little bookkeeping per entry too
    return ts.Context(ts.Context.Spec({"cache_pool": {"total_bytes_limit": nbytes + slack}}), parent=parent)


@dataclass(frozen=True)
class Storage:
    """The kvstore a checkpoint lives in; `root` is the user's path, always ending in '/'."""

    url: str  # what the user typed, normalised for display
    base: dict[str, Any] = field(hash=False, compare=False)  # kvstore spec of the root directory
    context: ts.Context = field(hash=False, compare=False)
    local_root: str | None  # absolute local path, or None for remote stores
    _kv: list[ts.KvStore] = field(default_factory=list, hash=False, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, hash=False, compare=False, repr=False)
    #: Remote listings by prefix: locating a root lists it for its children and again to look for
    #: zarr arrays below it; one request series serves both.
    _listings: dict[str, list[bytes]] = field(default_factory=dict, hash=False, compare=False, repr=False)

    @staticmethod
    def open(url: str, io_concurrency: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> Storage:
        """Parse a path, `file://` URL or `gs://bucket/path` into a Storage."""
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme in ("", "file"):
            # file:// URLs are percent-encoded (a space is %20); plain paths are taken as typed.
            path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else url
            if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
                raise StreamdiffError(f"file:// URLs need an absolute path: {url}")
            path = os.path.abspath(os.path.expanduser(path))
            path = "/" + path.lstrip("/")  # POSIX keeps a leading '//', tensorstore refuses it
            if not os.path.exists(path):
                raise NotFoundError(f"no such file or directory: {url}")
            base = {"driver": "file", "path": path.rstrip("/") + "/"}
            return Storage(url=path, base=base, context=make_context(False), local_root=path)
        if parsed.scheme == "gs":
            if not parsed.netloc:
                raise StreamdiffError(f"gs:// URL without a bucket: {url}")
            prefix = parsed.path.strip("/")
            base = {"driver": "gcs", "bucket": parsed.netloc, "path": prefix + "/" if prefix else ""}
            configure_http(timeout)
            ctx = make_context(True, io_concurrency)
            return Storage(url=url.rstrip("/"), base=base, context=ctx, local_root=None)
        raise StreamdiffError(f"unsupported URL scheme {parsed.scheme!r} in {url} (use a path, file:// or gs://)")

    @property
    def is_local(self) -> bool:
        return self.local_root is not None

    def forget_listings(self) -> None:
        with self._lock:
            self._listings.clear()

    @property
    def root_path(self) -> str:
        """The local root directory (local storage only)."""
        if self.local_root is None:
            raise ValueError(f"{self.url}: a remote store has no local path")
        return self.local_root

    @property
    def kv(self) -> ts.KvStore:
        """The root kvstore, opened once (cheap for file and gcs drivers)."""
        with self._lock:
            if not self._kv:
                try:
                    self._kv.append(ts.KvStore.open(self.base, context=self.context).result())
                except Exception as e:  # e.g. an invalid bucket name
                    raise storage_error(e, self.url) from e
            kv: ts.KvStore = self._kv[0]
            return kv

    def spec(self, relpath: str) -> dict[str, Any]:
        """kvstore spec of `relpath` (a directory when it ends in '/')."""
        spec = dict(self.base)
        spec["path"] = self.base["path"] + relpath
        return spec

    def display(self, relpath: str) -> str:
        root = self.url.rstrip("/")
        return f"{root}/{relpath}".rstrip("/") if relpath else root


@dataclass(frozen=True)
class Dir:
    """A directory inside a Storage (relpath '' is the root; otherwise it ends in '/')."""

    storage: Storage
    relpath: str = ""

    @property
    def name(self) -> str:
        if self.relpath:
            return self.relpath.rstrip("/").rsplit("/", 1)[-1]
        return self.storage.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def display(self) -> str:
        return self.storage.display(self.relpath)

    def child(self, name: str) -> Dir:
        return Dir(self.storage, self.relpath + name.strip("/") + "/")

    def kv_spec(self) -> dict[str, Any]:
        return self.storage.spec(self.relpath)

    def read_async(self, name: str, max_bytes: int | None = MAX_METADATA_BYTES) -> ts.Future[ts.KvStore.ReadResult]:
        """Read a metadata file whole, refusing one over `max_bytes` (None: no limit) before its
        bytes are read. On local disk it is `stat`ed first: a FIFO or device is refused too
        (tensorstore would block on it or read without end). Remote: see `read_capped`."""
        display = self.display + "/" + name
        if self.storage.is_local:
            check_file(os.path.join(self.storage.root_path, self.relpath + name), display, max_bytes)
        elif max_bytes is not None:
            return read_capped(self.storage.kv, self.relpath + name, max_bytes, display)
        return self.storage.kv.read(self.relpath + name)

    def refuse_big(self, names: list[str], max_bytes: int = MAX_METADATA_BYTES) -> SizeChecks:
        """Begin checking that none of `names` holds more than `max_bytes`, for files tensorstore reads
        whole by itself (an OCDBT manifest): on local disk at once (`check_file`), on a remote store
        with the one-byte probe of `read_capped`, all at once; `SizeChecks.wait` raises for the first
        one over the limit. A missing file passes: whoever reads it reports it."""
        if self.storage.is_local:
            for name in names:
                check_file(
                    os.path.join(self.storage.root_path, self.relpath + name), self.display + "/" + name, max_bytes
                )
            return SizeChecks([], max_bytes)
        return SizeChecks(
            [(self.display + "/" + n, _probe(self.storage.kv, self.relpath + n, max_bytes)) for n in names], max_bytes
        )

    def exists(self, name: str) -> bool:
        """Whether the object exists, reading none of its bytes (it may be a 1 GB file)."""
        if self.storage.is_local:
            path = os.path.join(self.storage.root_path, self.relpath + name)
            return check_file(path, self.display + "/" + name) is not None
        return _stat(self.storage.kv, self.relpath + name).result().state == "value"

    def read(self, name: str, max_bytes: int | None = MAX_METADATA_BYTES) -> bytes | None:
        """The file's bytes, or None when it does not exist; over `max_bytes` it is refused."""
        return result_bytes(self.read_async(name, max_bytes), self.display + "/" + name)

    def list_children(self) -> dict[str, str]:
        """Immediate children: name -> 'file' or 'dir'."""
        if self.storage.is_local:
            path = os.path.join(self.storage.root_path, self.relpath)
            try:
                with os.scandir(path) as it:
                    return {e.name: ("dir" if e.is_dir() else "file") for e in it}
            except FileNotFoundError:
                return {}
            except OSError as e:
                raise StreamdiffError(f"cannot list {self.display}: {e.strerror}") from e
        return _remote_children(self)

    def list_recursive(self) -> list[str]:
        """Every key below this directory, relative to it."""
        prefix = self.relpath.encode()
        keys = _listing(self)
        return [k[len(prefix) :].decode() for k in keys]


def read_capped(kv: ts.KvStore, key: str, max_bytes: int, display: str) -> ts.Future[ts.KvStore.ReadResult]:
    """A remote object read whole, unless it holds more than `max_bytes`: then the future fails with
    a `CorruptCheckpointError` and at most one byte of it was read.

    tensorstore's kvstore API gives no object size (its listing has keys only, a 0-byte "stat" read
    only the generation), and it fails a byte range the object cannot fill, so a single capped read
    of an object of unknown size does not exist. Hence two requests: first the one byte at offset
    `max_bytes`, which exists only when the object is too big (the server answers 416, without a
    body, for every smaller one), then the whole object. A missing object costs only the probe.
    The read is chained to the probe (no caller waits between them), so many objects still
    overlap their round trips. An object replaced by a bigger one between the two requests would
    escape the cap: streamdiff reads checkpoints at rest.
    """
    promise, future = ts.Promise[ts.KvStore.ReadResult].new()

    def forward(done: ts.Future[ts.KvStore.ReadResult]) -> None:
        try:
            promise.set_result(done.result())
        except Exception as e:  # noqa: BLE001 - handed to whoever waits on the future
            promise.set_exception(e)

    def probed(probe: ts.Future[ts.KvStore.ReadResult]) -> None:
        try:
            r = _probe_result(probe)
        except Exception as e:  # noqa: BLE001 - handed to whoever waits on the future
            promise.set_exception(e)
            return
        if r is None:  # smaller than the limit: read it
            try:
                kv.read(key).add_done_callback(forward)
            except Exception as e:  # noqa: BLE001 - raised in a tensorstore callback it would be lost: hand it on
                promise.set_exception(e)
        elif r.state == "value":
            promise.set_exception(_over_limit(display, max_bytes))
        else:  # missing: nothing more to read
            promise.set_result(r)

    _probe(kv, key, max_bytes).add_done_callback(probed)
    return future


@dataclass(frozen=True)
class SizeChecks:
    """Probes begun by `Dir.refuse_big`: (display name, read of the byte at the limit)."""

    probes: list[tuple[str, ts.Future[ts.KvStore.ReadResult]]]
    max_bytes: int

    def wait(self) -> None:
        for display, probe in self.probes:
            try:
                r = _probe_result(probe)
            except Exception as e:
                raise storage_error(e, display) from e
            if r is not None and r.state == "value":
                raise _over_limit(display, self.max_bytes)


def _probe(kv: ts.KvStore, key: str, max_bytes: int) -> ts.Future[ts.KvStore.ReadResult]:
    """A read of the one byte at offset `max_bytes`: it exists only in an object over the limit."""
    return kv.read(key, byte_range=slice(max_bytes, max_bytes + 1))


def _probe_result(probe: ts.Future[ts.KvStore.ReadResult]) -> ts.KvStore.ReadResult | None:
    """A `_probe`'s answer: None when the object ends before the limit (the server answers 416),
    else the read (state "value": over the limit; "missing": no such object). Other errors raise."""
    try:
        return probe.result()
    except Exception as e:
        if _unsatisfiable(e):
            return None
        raise


def _over_limit(display: str, max_bytes: int) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{display}: over the {human_bytes(max_bytes)} limit for a metadata file")


def _stat(kv: ts.KvStore, key: str | bytes) -> ts.Future[ts.KvStore.ReadResult]:
    """A read of no bytes: whether the object exists (or why it cannot be read), without its body
    (the gcs driver asks for the object's metadata instead of its media)."""
    return kv.read(key, byte_range=slice(0, 0))


def _unsatisfiable(e: BaseException) -> bool:
    """Whether a byte-range read failed because the object ends before the range starts."""
    text = str(e)
    return text.startswith("OUT_OF_RANGE") or "http_response_code='416'" in text


def _list(kv: ts.KvStore, prefix: bytes, what: str, remote: bool = False) -> list[bytes]:
    rng = ts.KvStore.KeyRange(inclusive_min=prefix, exclusive_max=_successor(prefix)) if prefix else None
    try:
        keys = kv.list(rng).result() if rng else kv.list().result()
        if keys or not remote:
            return keys
        # tensorstore's gcs listing turns a non-retryable HTTP error (403, 401, 404) into an empty
        # listing. A read does report them: probe one, then list once more (a passing 404), so
        # that only a listing that is empty twice means "no objects".
        _stat(kv, prefix + b"_METADATA").result()
        time.sleep(LIST_RECHECK_SECONDS)
        return kv.list(rng).result() if rng else kv.list().result()
    except Exception as e:  # tensorstore raises ValueError/OSError with a status message
        raise storage_error(e, what) from e


def _listing(d: Dir) -> list[bytes]:
    """Every key under `d`, listed once per Storage (a remote listing is many round trips)."""
    if d.storage.is_local:
        return _list(d.storage.kv, d.relpath.encode(), d.display)
    with d.storage._lock:
        cached = d.storage._listings.get(d.relpath)
        if cached is None:
            # A listing of a folder above (locating a step lists the root) holds this one's keys too.
            prefix = d.relpath.encode()
            above = next((keys for rp, keys in d.storage._listings.items() if d.relpath.startswith(rp)), None)
            if above is not None:
                cached = [k for k in above if k.startswith(prefix)] or None  # empty: list it afresh
    if cached is None:
        cached = _list(d.storage.kv, d.relpath.encode(), d.display, remote=True)
        with d.storage._lock:
            d.storage._listings[d.relpath] = cached
    return cached


#: Pause before listing an empty remote prefix a second time.
LIST_RECHECK_SECONDS = 0.5


def _remote_children(d: Dir) -> dict[str, str]:
    prefix = d.relpath.encode()
    seen: dict[str, str] = {}
    for key in _listing(d):
        rest = key[len(prefix) :].decode()
        head, sep, _ = rest.partition("/")
        if head:
            seen[head] = "dir" if sep else seen.get(head, "file")
    return seen


def _successor(prefix: bytes) -> bytes:
    """Smallest key greater than every key starting with `prefix`."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b""
    b[-1] += 1
    return bytes(b)


def result_bytes(future: ts.Future[ts.KvStore.ReadResult], what: str) -> bytes | None:
    try:
        r = future.result()
    except Exception as e:
        raise storage_error(e, what) from e
    return bytes(r.value) if r.state == "value" else None


def storage_error(e: BaseException, what: str) -> StreamdiffError:
    """Turn a tensorstore status into a one-line user error naming the object (a StreamdiffError,
    such as a size refused by `read_capped`, already is one)."""
    if isinstance(e, StreamdiffError):
        return type(e)(*e.args)  # a copy: callers raise it `from e`
    text = describe(e)
    if text.startswith("not found"):
        return NotFoundError(f"{what}: {text}")
    return StreamdiffError(f"{what}: {text}")


_HTTP_CODE = re.compile(r"http_response_code='(\d+)'")
_CURL_ERROR = re.compile(r"CURL error ([^\[]+?)(?::| \[|$)")
_OBJECT = re.compile(r"Error (?:reading|writing|listing) (\w+://[^\s:]+(?::[^\s:]+)*?):? ")


def describe(e: BaseException, with_object: bool = False) -> str:
    """What went wrong with a storage request, in words a user can act on (one line, no status
    dumps): tensorstore's messages carry a status code, nested retry text, curl codes and the
    whole HTTP error body. `with_object` puts the object tensorstore names (gs://b/k) first."""
    text = _describe(e)
    obj = _OBJECT.search(str(e)) if with_object else None
    return f"{obj.group(1)}: {text}" if obj else text


def _describe(e: BaseException) -> str:
    full = str(e).strip()
    first = full.splitlines()[0] if full else type(e).__name__
    low = full.lower()
    http = _HTTP_CODE.search(full)
    code = int(http.group(1)) if http else None
    retried = "retry attempts failed" in low
    tries = f" after {TRIES} tries" if retried else ""
    if "curl_code='28'" in low or "operation too slow" in low or "timed out" in low or "deadline_exceeded" in low:
        return (
            f"storage stalled: no data for {_timeout[1]} s on each of {TRIES} tries "
            f"(--timeout {_timeout[0]:g}); is the endpoint reachable and responsive?"
        )
    if code in (401, 403) or "unauthenticated" in low:
        return (
            f"permission denied (HTTP {code or 401}): check the credentials "
            "(gcloud auth application-default login, GOOGLE_APPLICATION_CREDENTIALS) and the bucket's IAM"
        )
    if "permission_denied" in low or "permission denied" in low:
        return f"permission denied ({first})"
    if "credentials" in low and ("could not" in low or "not running on gce" in low):
        return (
            "no Google Cloud credentials: run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS"
        )
    if code == 404 or "not_found" in low or "does not exist" in low:
        return "not found" if code == 404 else f"not found ({first})"
    if code in (429, 500, 502, 503, 504):
        return f"storage unavailable{tries} (HTTP {code}); try again later"
    curl = _CURL_ERROR.search(full)
    if curl or "unavailable" in low or "connect" in low:
        detail = curl.group(1).strip() if curl else first
        return f"storage unreachable{tries} ({detail})"
    if "invalid gcs bucket name" in low:
        return first.split(": ", 1)[-1]
    return first


#: Base kvstore drivers whose metrics count real storage traffic (ocdbt/zarr sit on top of them).
_BASE_DRIVERS = ("file", "gcs", "gcs_grpc", "http", "s3")


def io_counters() -> tuple[int, int]:
    """(bytes read, read/list requests) so far in this process, from tensorstore's own metrics."""
    nbytes = requests = 0
    for m in ts.experimental_collect_matching_metrics("/tensorstore/kvstore/"):
        parts = m["name"].split("/")
        if len(parts) != 5 or parts[3] not in _BASE_DRIVERS:
            continue
        value = m["values"][0].get("value", 0) if m.get("values") else 0
        if parts[4] == "bytes_read":
            nbytes += int(value or 0)
        elif parts[4] in ("read", "list"):
            requests += int(value or 0)
    return nbytes, requests
