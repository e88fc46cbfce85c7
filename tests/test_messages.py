"""Option values that cannot be honoured and inputs that used to leak Python exception text:
each is one line starting `streamdiff: error: `, exit 2, and says what to fix."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from conftest import MAXTEXT, run_cli
from helpers import one_error_line, save

GOOD = MAXTEXT / "v024_linen_scan/checkpoints"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--max-memory", "1e400"], "--max-memory"),
        (["--max-memory", "9" * 400], "too large"),
        (["--scheduler", "local:0"], "1 to 1024 workers"),
        (["--atol", "inf", "--json", "-"], "--atol must be a finite number"),
        (["--timeout", "0"], "--timeout must be 1 to 86400 seconds"),
        (["--timeout", "-3"], "--timeout must be"),
        (["--timeout", "nan"], "--timeout must be"),
        (["--timeout", "inf"], "--timeout must be"),
        (["--jobs", "0"], "--jobs"),
        (["--io-concurrency", "0"], "--io-concurrency"),
        (["--bogus-option"], "No such option"),
        (["--json", ""], "--json"),
        (["--scheduler", " "], "--scheduler"),
        (["--layer-axis", "-1"], "--layer-axis"),
    ],
)
def test_option_values_that_cannot_be_honoured(args, needle):
    one_error_line(run_cli(GOOD, GOOD, *args), needle)


def test_scheduler_local_zero_fails_at_once():
    """It used to wait 30 s for workers that never come, then raise TimeoutError."""
    import time

    t0 = time.monotonic()
    one_error_line(run_cli(GOOD, GOOD, "--scheduler", "local:0"), "local:N")
    assert time.monotonic() - t0 < 10


def test_binary_rules_file(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_bytes(b"[[rule]]\nmatch = '\xff\xfe\x00\x01'\n")
    one_error_line(run_cli(GOOD, GOOD, "--rules", rules), "rules.toml is not TOML text", "byte 18")


def test_file_url_with_percent_encoded_space(tmp_path):
    spaced = tmp_path / "my ckpt"
    shutil.copytree(GOOD, spaced)
    url = "file://" + str(spaced).replace(" ", "%20")
    r = run_cli(url, GOOD, "-q")
    assert r.code == 0, r.err


def _per_leaf(path, zarr3: bool):
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    save(path, tree, use_ocdbt=False, use_zarr3=zarr3)
    return path


def _edit(path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_zarr2_shape_not_a_list_names_the_field(tmp_path):
    ref = _per_leaf(tmp_path / "ref", zarr3=False)
    bad = _per_leaf(tmp_path / "bad", zarr3=False)
    _edit(bad / "w/.zarray", lambda d: d.update(shape=6))
    r = run_cli(bad, ref)
    line = one_error_line(
        r, "w: checkpoint A: unreadable zarr metadata", "w/.zarray: `shape` must be a list of integers >= 0, got 6"
    )
    assert "not iterable" not in line


def test_zarr3_missing_configuration_names_the_field(tmp_path):
    ref = _per_leaf(tmp_path / "ref", zarr3=True)
    bad = _per_leaf(tmp_path / "bad", zarr3=True)
    _edit(bad / "w/zarr.json", lambda d: d["chunk_grid"].pop("configuration"))
    line = one_error_line(run_cli(bad, ref), "w/zarr.json: `chunk_grid.configuration` must be an object, got null")
    assert ": 'configuration'" not in line


def test_dask_batch_errors_in_words():
    """What Dask raises for a batch whose worker died, or that the scheduler forgot."""
    pytest.importorskip("dask.distributed")
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker

    from streamdiff.engine.cluster import batch_error

    killed = batch_error(KilledWorker("('batch-1', 0)", "tcp://127.0.0.1:1", 3))
    assert "workers" in killed and "dying" in killed and "batch-1" not in killed
    lost = batch_error(CancelledError("_run_batch-abc cancelled for reason: already forgotten"))
    assert "already forgotten" not in lost and "lost" in lost


def test_native_log_filter_drops_absl_lines_only(tmp_path):
    """The fd-2 filter in a real subprocess: absl-formatted lines go, anything else stays."""
    import subprocess

    code = (
        "import os, sys\n"
        "from streamdiff.native_log import filtered_native_stderr\n"
        "with filtered_native_stderr():\n"
        "    os.write(2, b'E1129 16:00:00.123456   42 google_auth_provider.cc:188] no creds\\n')\n"
        "    os.write(2, b'plain native text\\n')\n"
        "    print('streamdiff: error: x', file=sys.stderr)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), env=_env())
    assert sorted(p.stderr.splitlines()) == ["plain native text", "streamdiff: error: x"], p.stderr


def _env() -> dict:
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("STREAMDIFF_NATIVE_LOGS", "TENSORSTORE_VERBOSE_LOGGING")}
    env["PYTHONPATH"] = root
    return env
