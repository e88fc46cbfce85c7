"""Remote metadata is refused by size before it is read, like local metadata (test_hostile.py):
objects of fake-gcs-server on 127.0.0.1, read by tensorstore's real `gcs` driver.

Each hostile object is a real upload bigger than the 64 MiB metadata limit; the CLI runs in a child
process whose peak RSS (wait4) must stay far below what reading that object would take."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from gcs_emulator import Emulator, tensorstore_env, upload
from helpers import save

from streamdiff.errors import CorruptCheckpointError
from streamdiff.reader.storage import Dir, Storage, io_counters
from streamdiff.reader.validate import MAX_METADATA_BYTES

BUCKET = "capped"
#: Size of every hostile object: twice the limit, so a whole read would show in the child's RSS.
HOSTILE = 2 * MAX_METADATA_BYTES
#: What a refused read may add to the peak RSS of a normal run of the same CLI on the same store.
RSS_SLACK = 40 << 20


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    with Emulator(filesystem=True) as emu:  # the hostile objects stay on disk, not in the server's RAM
        os.environ.update(tensorstore_env(emu.url))  # before tensorstore's first GCS use
        emu.create_bucket(BUCKET)
        yield emu


ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    code: int
    err: list[str]  # stderr lines, without tensorstore's INFO line about the test token and time's exit note
    peak_rss: int


def run_measured(*args: str) -> Run:
    """The CLI in a grandchild under /usr/bin/time, which reports that process's own peak RSS (the
    test's direct child would carry this big pytest process's peak into its exec'ed image)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "streamdiff", *args, "-q"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    *err, kib = p.stderr.rstrip("\n").split("\n")
    lines = [x for x in err if not (x[:1] == "I" and x[1:5].isdigit()) and not x.startswith("Command exited")]
    return Run(p.returncode, lines, int(kib) << 10)


def put(key: str, value: bytes) -> None:
    import tensorstore as ts

    ts.KvStore.open({"driver": "gcs", "bucket": BUCKET}).result().write(key, value).result()


def put_hostile_json(key: str) -> None:
    """Valid JSON (an object padded with spaces) over the limit: only its size is wrong. Written by a
    child process, so this test process's peak RSS (which its later children inherit) stays small."""
    script = (
        "import sys, tensorstore as ts; "
        "kv = ts.KvStore.open({'driver': 'gcs', 'bucket': sys.argv[1]}).result(); "
        "kv.write(sys.argv[2], b'{}' + b' ' * (int(sys.argv[3]) - 2)).result()"
    )
    subprocess.run([sys.executable, "-c", script, BUCKET, key, str(HOSTILE)], check=True, capture_output=True)


@pytest.mark.parametrize("size", [0, 1, 999, 1000])
def test_a_remote_object_up_to_the_cap_is_read_whole_in_two_requests(gcs, size):
    value = bytes(range(256)) * 4
    put(f"unit/ok_{size}", value[:size])
    d = Dir(Storage.open(f"gs://{BUCKET}/unit"))
    _, before = io_counters()
    assert d.read(f"ok_{size}", max_bytes=1000) == value[:size]
    assert io_counters()[1] - before == 2  # the probe at offset 1000, then the object


@pytest.mark.parametrize("size", [1001, 5000])
def test_a_remote_object_over_the_cap_is_refused_after_one_byte(gcs, size):
    put(f"unit/big_{size}", b"x" * size)
    d = Dir(Storage.open(f"gs://{BUCKET}/unit"))
    nbytes, requests = io_counters()
    with pytest.raises(CorruptCheckpointError, match=rf"unit/big_{size}: over the 1000 bytes limit"):
        d.read(f"big_{size}", max_bytes=1000)
    assert io_counters()[0] - nbytes == 1 and io_counters()[1] - requests == 1


def test_a_missing_remote_object_costs_one_request(gcs):
    d = Dir(Storage.open(f"gs://{BUCKET}/unit"))
    _, before = io_counters()
    assert d.read("nothing_here", max_bytes=1000) is None
    assert io_counters()[1] - before == 1


def test_no_limit_reads_a_remote_object_whole_in_one_request(gcs):
    put("unit/unlimited", b"y" * 5000)
    d = Dir(Storage.open(f"gs://{BUCKET}/unit"))
    _, before = io_counters()
    assert d.read("unlimited", max_bytes=None) == b"y" * 5000
    assert io_counters()[1] - before == 1


def test_exists_sees_empty_remote_objects_and_reads_no_bytes_of_big_ones(gcs):
    put("unit/empty", b"")
    put("unit/large", b"z" * (1 << 20))
    d = Dir(Storage.open(f"gs://{BUCKET}/unit"))
    before, _ = io_counters()
    assert d.exists("empty") and d.exists("large") and not d.exists("absent")
    assert io_counters()[0] - before < 4096  # the objects' metadata (JSON) only


@pytest.fixture(scope="module")
def stores(gcs, tmp_path_factory):
    """An orbax checkpoint (OCDBT) and a zarr-python v2 group (numbers and strings), uploaded clean."""
    import zarr

    root = tmp_path_factory.mktemp("cap")
    save(root / "ckpt", {"w": np.arange(12, dtype=np.float32).reshape(3, 4)})
    upload(str(root / "ckpt"), BUCKET, "clean/ckpt")
    g = zarr.open_group(str(root / "zarr"), mode="w", zarr_format=2)
    g.create_array("x", shape=(4,), dtype="int32")[:] = np.arange(4, dtype=np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr-python: strings are not in the v2 spec
        g.create_array("names", shape=(3,), dtype=str)[...] = ["ab", "c", "d"]
    upload(str(root / "zarr"), BUCKET, "clean/zarr")
    return root


CASES = {
    "_METADATA": ("ckpt", "_METADATA"),
    "_CHECKPOINT_METADATA": ("ckpt", "_CHECKPOINT_METADATA"),
    "manifest.ocdbt": ("ckpt", "manifest.ocdbt"),  # read whole by tensorstore itself, not by streamdiff
    ".zarray": ("zarr", "x/.zarray"),
    "string chunk": ("zarr", "names/0"),  # strings are read whole, for zarr-python to decode
}


@pytest.mark.parametrize("case", list(CASES))
def test_remote_metadata_over_the_limit_is_one_line_exit_2_with_bounded_memory(gcs, stores, case):
    store, key = CASES[case]
    upload(str(stores / store), BUCKET, f"{case}/{store}")
    put_hostile_json(f"{case}/{store}/{key}")
    clean = run_measured(f"gs://{BUCKET}/clean/{store}", f"gs://{BUCKET}/clean/{store}")
    assert clean.code == 0, clean.err
    r = run_measured(f"gs://{BUCKET}/{case}/{store}", f"gs://{BUCKET}/clean/{store}")
    assert r.code == 2 and len(r.err) == 1 and r.err[0].startswith("streamdiff: error: "), r.err
    assert f"{key}: over the 64 MiB limit" in r.err[0], r.err
    assert r.peak_rss < clean.peak_rss + RSS_SLACK, (r.peak_rss >> 20, clean.peak_rss >> 20)
