"""Where bytes come from: a user string becomes a tensorstore kvstore, and a `Dir` addresses into it.

All reads go through tensorstore kvstores, so local disk and `gs://` take one code path. Listing a
directory's immediate children uses `os.scandir` on local disk (tensorstore's file listing is
recursive, which is wasteful on a manager root full of steps) and a prefix listing elsewhere.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import tensorstore as ts

from .errors import NotFoundError, StreamdiffError
from .localfs import check_file
from .validate import MAX_METADATA_BYTES

#: Retries for remote storage: a dead endpoint must fail within seconds, not minutes.
GCS_RETRIES = {"max_retries": 3, "initial_delay": "100ms", "max_delay": "1s"}


#: Cache for OCDBT manifests and B-tree nodes (named pool, referenced by every ocdbt kvstore spec):
#: without it each chunk read would fetch and decode the root node again.
META_CACHE = "cache_pool#meta"
META_CACHE_BYTES = 16 << 20


#: Parallel requests to a remote store. tensorstore's default is 32; a GCS bucket serves far more,
#: and every round trip (20-100 ms) that is not overlapped is lost time.
DEFAULT_IO_CONCURRENCY = 64


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


@dataclass(frozen=True)
class Storage:
    """The kvstore a checkpoint lives in; `root` is the user's path, always ending in '/'."""

    url: str  # what the user typed, normalised for display
    base: dict[str, Any] = field(hash=False, compare=False)  # kvstore spec of the root directory
    context: ts.Context = field(hash=False, compare=False)
    local_root: str | None  # absolute local path, or None for remote stores
    _kv: list = field(default_factory=list, hash=False, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, hash=False, compare=False, repr=False)

    @staticmethod
    def open(url: str, io_concurrency: int | None = None) -> Storage:
        """Parse a path, `file://` URL or `gs://bucket/path` into a Storage."""
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme in ("", "file"):
            path = parsed.path if parsed.scheme == "file" else url
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
            ctx = make_context(True, io_concurrency)
            return Storage(url=url.rstrip("/"), base=base, context=ctx, local_root=None)
        raise StreamdiffError(f"unsupported URL scheme {parsed.scheme!r} in {url} (use a path, file:// or gs://)")

    @property
    def is_local(self) -> bool:
        return self.local_root is not None

    @property
    def kv(self) -> ts.KvStore:
        """The root kvstore, opened once (cheap for file and gcs drivers)."""
        with self._lock:
            if not self._kv:
                try:
                    self._kv.append(ts.KvStore.open(self.base, context=self.context).result())
                except Exception as e:  # e.g. an invalid bucket name
                    raise storage_error(e, self.url) from e
            return self._kv[0]

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

    def read_async(self, name: str, max_bytes: int = MAX_METADATA_BYTES) -> ts.Future:
        """Read a metadata file. On local disk it is checked first: a FIFO or device is refused
        (tensorstore would block on it or read without end), and so is a file over `max_bytes`."""
        if self.storage.is_local:
            path = os.path.join(self.storage.local_root, self.relpath + name)
            check_file(path, self.display + "/" + name, max_bytes)
        return self.storage.kv.read(self.relpath + name)

    def read(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        return result_bytes(self.read_async(name), self.display + "/" + name)

    def list_children(self) -> dict[str, str]:
        """Immediate children: name -> 'file' or 'dir'."""
        if self.storage.is_local:
            path = os.path.join(self.storage.local_root, self.relpath)
            try:
                with os.scandir(path) as it:
                    return {e.name: ("dir" if e.is_dir() else "file") for e in it}
            except FileNotFoundError:
                return {}
            except OSError as e:
                raise StreamdiffError(f"cannot list {self.display}: {e.strerror}") from e
        return {name: kind for name, kind in _remote_children(self)}

    def list_recursive(self) -> list[str]:
        """Every key below this directory, relative to it."""
        prefix = self.relpath.encode()
        keys = _list(self.storage.kv, prefix, self.display)
        return [k[len(prefix) :].decode() for k in keys]


def _list(kv: ts.KvStore, prefix: bytes, what: str) -> list[bytes]:
    rng = ts.KvStore.KeyRange(inclusive_min=prefix, exclusive_max=_successor(prefix)) if prefix else None
    try:
        return kv.list(rng).result() if rng else kv.list().result()
    except Exception as e:  # tensorstore raises ValueError/OSError with a status message
        raise storage_error(e, what) from e


def _remote_children(d: Dir):
    prefix = d.relpath.encode()
    seen: dict[str, str] = {}
    for key in _list(d.storage.kv, prefix, d.display):
        rest = key[len(prefix) :].decode()
        head, sep, _ = rest.partition("/")
        if head:
            seen[head] = "dir" if sep else seen.get(head, "file")
    return seen.items()


def _successor(prefix: bytes) -> bytes:
    """Smallest key greater than every key starting with `prefix`."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b""
    b[-1] += 1
    return bytes(b)


def result_bytes(future: ts.Future, what: str) -> bytes | None:
    try:
        r = future.result()
    except Exception as e:
        raise storage_error(e, what) from e
    return bytes(r.value) if r.state == "value" else None


def storage_error(e: BaseException, what: str) -> StreamdiffError:
    """Turn a tensorstore status into a one-line user error."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    low = msg.lower()
    if "not_found" in low or "not found" in low or "does not exist" in low:
        return NotFoundError(f"{what}: not found ({msg})")
    if "permission" in low or "unauthenticated" in low or "forbidden" in low:
        return StreamdiffError(f"{what}: permission denied ({msg})")
    if "unavailable" in low or "deadline" in low or "connect" in low:
        return StreamdiffError(f"{what}: storage unreachable ({msg})")
    return StreamdiffError(f"{what}: {msg}")


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
