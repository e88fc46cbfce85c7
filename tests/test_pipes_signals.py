"""Pipes, signals and unwritable stdout, with real subprocesses and real pipes.

A reader that goes away (`| head -1`) does not change the answer: the exit code is the diff's own.
Stdout that cannot take the report (closed, a full disk) is one line and exit 2. Ctrl-C and
SIGTERM end with one line and exit 130, also under a local Dask cluster whose workers get the
signal too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import MAXTEXT

SAME = str(MAXTEXT / "v024_linen_scan/checkpoints")
OTHER = str(MAXTEXT / "v024_linen_scan_seed1/checkpoints")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
CMD = [sys.executable, "-m", "streamdiff"]


def closed_reader(*args: str) -> tuple[int, str]:
    """Run with stdout a pipe whose reading end is already closed: every write gets EPIPE."""
    p = subprocess.Popen([*CMD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    p.stdout.close()
    err = p.stderr.read().decode()
    return p.wait(timeout=120), err


@pytest.mark.parametrize("extra,other_code", [(["-v"], 1), (["--structure-only"], 0), (["--json", "-"], 1)])
def test_closed_pipe_keeps_the_diffs_exit_code_quietly(extra, other_code):
    """OTHER has the same structure as SAME and different values."""
    code, err = closed_reader(SAME, SAME, *extra)
    assert (code, err) == (0, "")
    code, err = closed_reader(SAME, OTHER, *extra)
    assert (code, err) == (other_code, "")


def test_head_in_a_shell_pipeline():
    """`streamdiff X X -v | head -1`: the first line, and exit 0 for identical inputs."""
    cmd = " ".join(f"'{c}'" for c in CMD) + f" '{SAME}' '{SAME}' -v | head -1; exit ${{PIPESTATUS[0]}}"
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("identical") and p.stderr == "", p.stderr


def test_json_to_a_full_disk_is_one_line_exit_2():
    with open("/dev/full", "w") as full:
        p = subprocess.run([*CMD, SAME, SAME, "--json", "-"], stdout=full, stderr=subprocess.PIPE, text=True, env=ENV)
    assert (
        p.returncode == 2 and p.stderr.strip() == "streamdiff: error: cannot write to stdout: No space left on device"
    )


@pytest.mark.parametrize("extra,code", [(["--json", "-"], 2), ([], 2), (["-q"], 0)])
def test_closed_stdout(extra, code):
    """Started with fd 1 closed (`>&-`): an error only when there is something to write."""
    cmd = " ".join(f"'{c}'" for c in [*CMD, SAME, SAME, *extra]) + " >&-"
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == code, p.stderr
    if code == 2:
        assert p.stderr.strip() == "streamdiff: error: cannot write to stdout: stdout is closed"
    else:
        assert p.stderr == ""


def _children(pid: int) -> list[str]:
    """Child processes of any thread of `pid` (Dask starts its workers from its event-loop thread)."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += f.read().split()
    except OSError:
        pass
    return out


def _workers(pid: int) -> list[int]:
    found = []
    for c in _children(pid):
        try:
            with open(f"/proc/{c}/cmdline") as f:
                if "spawn_main" in f.read():
                    found.append(int(c))
        except OSError:
            pass
    return found


def _local_dask_run(extra: list[str], started, new_session: bool) -> subprocess.Popen:
    """A self-diff on `--scheduler local:2`, returned once `started(pid)` finds a process (still running)."""
    pytest.importorskip("dask.distributed")
    p = subprocess.Popen(
        [*CMD, SAME, SAME, "--scheduler", "local:2", "--no-shortcut", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=new_session,
    )
    deadline = time.monotonic() + 90
    while not started(p.pid) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "finished before a worker started"
    return p


def test_worker_killed_at_start_is_one_line_not_dask_noise():
    """A Dask worker process SIGKILLed as soon as it exists: either Dask recovers (the verdict,
    nothing on stderr) or the run ends with one line; never a traceback or Dask's log lines."""
    p = _local_dask_run(["-q"], started=_workers, new_session=False)
    os.kill(_workers(p.pid)[0], signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    assert (p.returncode, err) == (0, "") or (
        p.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("streamdiff: error: ")
    ), (p.returncode, err)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_under_local_dask_is_one_line_exit_130(sig):
    """The whole process group gets the signal, as from a terminal's Ctrl-C: the Dask workers too.
    Sent as soon as the first child process exists (the cluster is starting)."""
    p = _local_dask_run([], started=_children, new_session=True)
    os.killpg(p.pid, sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err == "streamdiff: interrupted\n", err


def test_silent_scheduler_fails_within_the_timeout():
    """A Dask scheduler address that accepts connections and never answers: --timeout bounds the wait."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        t0 = time.monotonic()
        p = subprocess.run(
            [*CMD, SAME, SAME, "--scheduler", f"tcp://127.0.0.1:{port}", "--timeout", "2"],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        elapsed = time.monotonic() - t0
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "cannot reach Dask scheduler" in lines[0], p.stderr
    assert elapsed < 30, elapsed
