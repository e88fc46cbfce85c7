"""Run the value diff on Dask distributed: one diff, many machines, the same answer.

The client builds the trees and the plan from metadata, as for a local run, and cuts the task
list into batches of about BATCH_BYTES of decoded data. Each batch is a Dask task. A worker
re-plans only the pairs its batch touches (plans are deterministic), reads the blocks straight
from storage with tensorstore, and returns only mergeable statistics. The client merges them with
the same code the threads use. No array data passes through the client or the scheduler.

    --scheduler tcp://host:8786     an existing cluster (its workers need streamdiff installed)
    --scheduler local:N             a local cluster of N worker processes

`--max-memory` applies per worker process. A batch that raises is retried by Dask (a worker that
dies has its tasks rescheduled). A block that still fails to read marks its leaf `error`, and the
rest of the diff completes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import uuid
import warnings
from typing import Any

from .errors import StreamdiffError, UsageError
from .plan import MemoryPlan, Sample
from .stats import LeafStats
from .storage import DEFAULT_TIMEOUT, configure_http, io_counters, make_context
from .stream import ProgressFn, _Engine, _one_line, _Task

#: Decoded bytes (both sides) per Dask task: tens to hundreds of MB keeps scheduler overhead
#: (a few ms per task) far below the time a task spends reading.
BATCH_BYTES = 256 << 20
RETRIES = 2

_CONTEXTS: dict[tuple[bool, bool], Any] = {}


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


def _client(scheduler: str, mem: MemoryPlan, timeout: float = DEFAULT_TIMEOUT):
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
    return _connect(Client, scheduler, timeout), None


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


def _connect(client_cls, scheduler: str, timeout: float):
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


def batches(tasks: list[_Task], target: int = BATCH_BYTES) -> list[list[_Task]]:
    """Consecutive tasks grouped until about `target` decoded bytes (reads stay in key order)."""
    out: list[list[_Task]] = []
    cur: list[_Task] = []
    size = 0
    for t in tasks:
        cur.append(t)
        size += t.progress
        if size >= target:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out


def compare_on_dask(
    pairs,
    policies,
    contexts,
    mem: MemoryPlan,
    progress: ProgressFn | None,
    shortcut: bool,
    scheduler,
    timeout: float = DEFAULT_TIMEOUT,
    sample: Sample | None = None,
):
    """Returns the outcomes by pair index and the workers' (bytes read, requests)."""
    engine = _Engine(pairs, policies, contexts, mem, shortcut, None, sample=sample)  # picks sampled blocks here
    todo = [t for t in engine.tasks() if not engine.outcomes[t.pair_index].error]
    remote = tuple(_remote(side) for side in next(iter(engine.sides.values()), (None, None)))
    client, cluster = _client(scheduler, mem, timeout)
    try:
        from dask.distributed import as_completed

        before = client.run(io_counters)
        state = client.scatter((uuid.uuid4().hex, pairs, policies, mem, shortcut, remote, timeout), broadcast=True)
        futures = {client.submit(_run_batch, state, b, pure=False, retries=RETRIES): b for b in batches(todo)}
        for fut in as_completed(futures):
            batch = futures[fut]
            try:
                results = fut.result()
            except Exception as e:  # noqa: BLE001 - the batch failed after Dask's retries
                results = [(t.pair_index, None, batch_error(e)) for t in batch]
            for i, stats, error in results:
                engine.outcomes[i].absorb(stats, error)
            if progress:
                progress(sum(t.progress for t in batch))
        after = client.run(io_counters)
        worker_io = tuple(sum(after[w][k] - before.get(w, (0, 0))[k] for w in after) for k in (0, 1))
    except Exception as e:  # noqa: BLE001 - the scheduler or the cluster itself failed mid-run
        raise StreamdiffError(f"the Dask run failed: {batch_error(e)}") from e
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
    return engine.outcomes, worker_io


def batch_error(e: BaseException) -> str:
    """A batch Dask gave up on, in words: a worker that died (killed, out of memory) leaves Dask's
    own texts ("cancelled for reason: already forgotten", KilledWorker's task keys)."""
    name = type(e).__name__
    if name == "KilledWorker":
        return "the Dask workers running this leaf's batch kept dying (killed, or out of memory?)"
    if name in ("CancelledError", "FutureCancelledError") or "already forgotten" in str(e) or "cancelled" in str(e):
        return "the Dask batch holding this leaf was lost (its worker died or the scheduler went away)"
    return _one_line(e)


def _remote(side) -> bool:
    return side is not None and side.leaf.source is not None and not side.leaf.source.is_local


def _run_batch(state, batch: list[_Task]) -> list[tuple[int, LeafStats | None, str | None]]:
    """On a worker: plan the batch's pairs, run its tasks with local threads, return statistics."""
    _, pairs, policies, mem, shortcut, remote, timeout = state
    if any(remote):
        configure_http(timeout)  # before this worker's first remote request
    key = tuple(remote) if len(remote) == 2 else (False, False)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = (make_context(key[0]), make_context(key[1]))
    only = {t.pair_index for t in batch}
    engine = _Engine(pairs, policies, _CONTEXTS[key], mem, shortcut, None, only=only)
    outcomes = engine.run(batch)
    return [(i, None if outcomes[i].error else outcomes[i].stats, outcomes[i].error) for i in sorted(only)]
