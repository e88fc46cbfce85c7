"""Misbehaving GCS: a fault-injecting proxy (tests/fault_proxy.py) between tensorstore and
fake-gcs-server. A stall, a stall mid-body, resets and truncations that do not go away end the run
with exit 2 and one line naming the object, within a bound derived from `--timeout`; transient
faults (503, 429, a reset, one request in five stalled, one listing 404) still give the answer a
clean run gives. Runs the real CLI in subprocesses: tensorstore reads its curl timeouts once per
process, so each run needs a fresh one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
from fault_proxy import Fault, FaultProxy
from gcs_emulator import Emulator, tensorstore_env, upload
from helpers import one_error_line, save

BUCKET = "faults"
TIMEOUT = 2  # seconds: each try gets 1 s without progress, 4 tries


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.err.strip().splitlines()

    @property
    def json(self) -> dict:
        return json.loads(self.out)


def write_checkpoint(path, w_delta: float = 0.0) -> None:
    """Per-leaf zarr2 directories (no OCDBT), so each array's chunk is its own object: a fault
    can hit one leaf's data and nothing else."""
    tree = {
        "w": np.arange(64, dtype=np.float32).reshape(8, 8) + np.float32(w_delta) * (np.arange(64) == 5).reshape(8, 8),
        "b": np.linspace(0, 1, 16, dtype=np.float32),
    }
    save(path, tree, use_ocdbt=False)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_checkpoint(root / "a")
    write_checkpoint(root / "same")
    write_checkpoint(root / "diff", w_delta=0.5)
    with Emulator() as emu:
        os.environ.update(tensorstore_env(emu.url))
        emu.create_bucket(BUCKET)
        for name in ("a", "same", "diff"):
            upload(str(root / name), BUCKET, name)
        with FaultProxy(emu.port) as p:
            p.local = root
            yield p


@pytest.fixture
def fault(proxy):
    """Set `proxy.fault` for one test; always cleared afterwards."""

    def _set(mode: str, match: str = "", **kw) -> Fault:
        proxy.fault = Fault(mode, match, **kw)
        return proxy.fault

    yield _set
    proxy.fault = None


def run(proxy: FaultProxy, *args: str, timeout: float = TIMEOUT, env: dict | None = None) -> Run:
    env = env or dict(os.environ, **tensorstore_env(proxy.url))
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "streamdiff", *args, "--timeout", str(timeout)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return Run(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


def gs(name: str) -> str:
    return f"gs://{BUCKET}/{name}"


#: A chunk of leaf `w` in checkpoint `a` (zarr2 key `w/0.0`), as it appears in the request line.
W_CHUNK = "a%2Fw%2F0.0?"


def test_clean_run_through_the_proxy(proxy):
    r = run(proxy, gs("a"), gs("diff"), "--json", "-", "-q")
    assert r.code == 1 and r.json["summary"]["different"] == 1, r.err
    w = next(x for x in r.json["leaves"] if x["path"] == "w")
    assert w["mismatches"] == 1 and w["max_abs_diff"] == 0.5


def test_full_stall_fails_in_seconds_not_minutes(proxy, fault):
    """The endpoint accepts and then says nothing: not 242 s, but ~2x --timeout (+ start-up)."""
    fault("stall")
    r = run(proxy, gs("a"), gs("same"))
    one_error_line(r, "gs://faults/", "stalled", "--timeout 2")
    assert r.seconds < 2 * TIMEOUT + 35, r.seconds


def test_stalled_chunk_fails_its_leaf_and_names_it(proxy, fault):
    fault("stall", W_CHUNK)
    r = run(proxy, gs("a"), gs("same"), "--json", "-", "-q")
    one_error_line(r, "w:", "stalled")
    by_path = {x["path"]: x["status"] for x in r.json["leaves"]}
    assert by_path == {"w": "error", "b": "equal"}
    assert r.seconds < 2 * TIMEOUT + 35, r.seconds


def test_stall_mid_body_fails_its_leaf(proxy, fault):
    """Headers and half the body, then nothing: curl's low-speed window (a few seconds of
    history) adds to each try, so the bound is looser than for a silent endpoint."""
    fault("stall_body", W_CHUNK)
    r = run(proxy, gs("a"), gs("same"), "--json", "-", "-q")
    one_error_line(r, "w:", "stalled")
    assert r.seconds < 60, r.seconds


@pytest.mark.parametrize("mode", ["reset", "truncate"])
def test_broken_connections_that_persist_fail_the_leaf(proxy, fault, mode):
    fault(mode, W_CHUNK)
    r = run(proxy, gs("a"), gs("same"))
    one_error_line(r, "w:", "unreachable after 4 tries")
    assert r.seconds < 30, r.seconds


@pytest.mark.parametrize(
    "mode,kw",
    [
        ("status", {"status": 503, "times": 3}),
        ("status", {"status": 429, "times": 3}),
        ("reset", {"times": 2}),
        ("truncate", {"times": 2}),
        ("stall_body", {"times": 1}),
        ("stall", {"every": 5}),  # one request in five stalls: retried, not fatal
    ],
)
def test_transient_faults_still_give_the_right_answer(proxy, fault, mode, kw):
    clean = run(proxy, gs("a"), gs("diff"), "--json", "-", "-q")
    f = fault(mode, "alt=media", **kw)
    r = run(proxy, gs("a"), gs("diff"), "--json", "-", "-q")
    assert f.hits >= 1
    assert r.code == 1 and r.err.strip() == "", r.err
    volatile = ("seconds", "bytes_read", "requests")
    strip = [{k: v for k, v in x.items() if k not in volatile} for x in r.json["leaves"]]
    assert strip == [{k: v for k, v in x.items() if k not in volatile} for x in clean.json["leaves"]]


def test_permission_denied_is_not_reported_as_missing(proxy, fault):
    """tensorstore's gcs listing turns a 403 into an empty listing; it must not read as 'no objects'."""
    fault("status", status=403)
    r = run(proxy, gs("a"), gs("same"))
    one_error_line(r, "gs://faults/a", "permission denied (HTTP 403)")
    assert "no objects" not in r.err


def test_transient_listing_404_is_listed_again(proxy, fault):
    f = fault("status", "/o?", status=404, times=1)
    r = run(proxy, gs("a"), gs("same"), "-q")
    assert f.hits == 1 and r.code == 0, r.err


def test_missing_path_is_still_no_objects(proxy):
    r = run(proxy, gs("nothing/here"), gs("same"))
    one_error_line(r, "gs://faults/nothing/here", "no objects under this path")


def test_server_errors_that_persist_fail_in_seconds(proxy, fault):
    fault("status", W_CHUNK, status=503)
    r = run(proxy, gs("a"), gs("same"))
    one_error_line(r, "w:", "HTTP 503")
    assert r.seconds < 30, r.seconds


def test_no_credentials_is_one_line_without_native_log_lines(proxy, fault, tmp_path):
    """No token, no credentials file, not on GCE: tensorstore logs an `E... google_auth_provider.cc`
    line from C++, goes on without credentials and the bucket answers 401. The user sees one line;
    with STREAMDIFF_NATIVE_LOGS=1 the C++ line is there (so the filter is what removes it).
    Every address is loopback: the GCS endpoint and the GCE metadata server (GCE_METADATA_ROOT,
    which tensorstore probes to learn whether it runs on GCE) are the proxy, which answers 401 to
    both; HOME / CLOUDSDK_CONFIG are empty directories."""
    fault("status", status=401)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GOOGLE_AUTH_TOKEN_FOR_TESTING", "GOOGLE_APPLICATION_CREDENTIALS")
    }
    env.update(
        TENSORSTORE_GCS_HTTP_URL=proxy.url,
        GCE_METADATA_ROOT=f"127.0.0.1:{proxy.port}",
        HOME=str(tmp_path),
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
    )
    proxy.requests.clear()
    r = run(proxy, gs("a"), gs("same"), env=env)
    one_error_line(r, "gs://faults/a", "permission denied (HTTP 401)", "credentials")
    assert any("/computeMetadata/" in line for line in proxy.requests), proxy.requests  # the GCE probe came here
    assert r.seconds < 60
    raw = run(proxy, gs("a"), gs("same"), env=dict(env, STREAMDIFF_NATIVE_LOGS="1"))
    assert raw.code == 2 and "google_auth_provider.cc" in raw.err, raw.err
