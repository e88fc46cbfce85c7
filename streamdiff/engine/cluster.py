"""Connecting to Dask: an existing scheduler, or a local cluster started for one run, with Dask's own
log noise kept off the user's terminal and its failures put in words.

    --scheduler tcp://host:8786     an existing cluster (its workers need streamdiff installed)
    --scheduler local:N             a local cluster of N worker processes
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ..errors import StreamdiffError, UsageError
from ..plan import MemoryPlan
from ..reader.storage import DEFAULT_TIMEOUT
from .sides import one_line

#: Loggers of Dask that report, on stderr, what streamdiff already reports per leaf (a task
#: retried or lost with its worker, "cancelled for reason: already forgotten", a worker killed).
_NOISY_LOGGERS = ("distributed", "dask", "tornado", "asyncio")


def quiet_dask_logs() -> None:
    """Keep Dask's own log lines (scheduler ERRORs, worker restarts) off the user's terminal."""
    for name in _NOISY_LOGGERS:
        log = logging.getLogger(name)
        log.setLevel(logging.CRITICAL + 1)
        log.propagate = False
    # "Port 8787 is already in use" and the like, here and in the worker processes started next.
    warnings.filterwarnings("ignore", module=r"distributed(\.|$)")
    os.environ.setdefault("PYTHONWARNINGS", "ignore:::distributed.node")


def connect(scheduler: str, mem: MemoryPlan, timeout: float = DEFAULT_TIMEOUT) -> tuple[Any, Any]:
    """(dask Client, the LocalCluster it started or None): Dask is untyped, hence Any."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:
        raise UsageError("--scheduler needs Dask: pip install 'streamdiff[dask]'") from e
    quiet_dask_logs()
    if scheduler.startswith("local:"):
        try:
            n = int(scheduler.split(":", 1)[1])
        except ValueError as e:
            raise UsageError(f"--scheduler local:N needs a number of workers, not {scheduler!r}") from e
        if not 1 <= n <= 1024:
            raise UsageError(f"--scheduler local:N needs 1 to 1024 workers, not {n}")
        # Worker processes start with SIGINT blocked (the mask is inherited through fork and exec):
        # a terminal's Ctrl-C reaches the whole process group, and only this process should act
        # on it. Here it stays pending until the cluster is up, then interrupts the run.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        # The worker processes get /dev/null as stderr: a Ctrl-C that reaches one while its
        # interpreter is still starting (before the mask above applies in it) prints a traceback
        # there, and nothing a local worker prints is for the user (errors come back through Dask).
        stderr_fd = _silence_fd2()
        try:
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,  # one batch at a time per worker; the batch has its own threads
                processes=True,
                memory_limit=mem.budget,
                dashboard_address=None,
                silence_logs=logging.CRITICAL + 1,
            )
            return Client(cluster, timeout=f"{timeout}s"), cluster
        except Exception as e:  # noqa: BLE001 - e.g. "Nanny failed to start" when a worker dies at start-up
            raise StreamdiffError(f"cannot start a local Dask cluster ({scheduler}): {batch_error(e)}") from e
        finally:
            _restore_fd2(stderr_fd)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return _bounded_client(Client, scheduler, timeout), None


def _silence_fd2() -> int | None:
    """Point fd 2 at /dev/null (children started meanwhile inherit it); the saved fd, or None."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return saved
    except (OSError, ValueError, AttributeError):
        return None


def _restore_fd2(saved: int | None) -> None:
    if saved is not None:
        os.dup2(saved, 2)
        os.close(saved)


def _bounded_client(client_cls: Callable[..., Any], scheduler: str, timeout: float) -> Any:
    """Client(scheduler) with a hard bound: an address that accepts TCP and never completes
    Dask's handshake makes Client() wait far past its own `timeout`, so it runs in a daemon thread
    that is abandoned after the timeout."""
    box: dict[str, Any] = {}

    def connect() -> None:
        try:
            box["client"] = client_cls(scheduler, timeout=f"{timeout}s")
        except Exception as e:  # noqa: BLE001 - OSError/TimeoutError unreachable, ValueError bad address
            box["error"] = e

    t = threading.Thread(target=connect, name="dask-connect", daemon=True)
    t.start()
    t.join(timeout + 1)
    if "client" in box:
        return box["client"]
    if "error" in box:
        e = box["error"]
        raise UsageError(f"cannot reach Dask scheduler {scheduler}: {str(e).splitlines()[0] if str(e) else e}") from e
    raise UsageError(f"cannot reach Dask scheduler {scheduler}: no answer within {timeout:g} s (--timeout)")


def lost(e: BaseException) -> bool:
    """A batch Dask itself lost (its worker died, the scheduler forgot it), not one that raised."""
    name = type(e).__name__
    text = str(e)
    return (
        name in ("KilledWorker", "CancelledError", "FutureCancelledError")
        or "cancelled" in text
        or ("already forgotten" in text)
    )


def batch_error(e: BaseException) -> str:
    """A batch Dask gave up on, in words: a worker that died (killed, out of memory) leaves Dask's
    own texts ("cancelled for reason: already forgotten", KilledWorker's task keys)."""
    if type(e).__name__ == "KilledWorker":
        return "the Dask workers running this leaf's batch kept dying (killed, or out of memory?)"
    if lost(e):
        return "the Dask batch holding this leaf was lost (its worker died or the scheduler went away)"
    return one_line(e)
