"""Keep native libraries' log lines off the user's terminal.

tensorstore logs from C++ through absl straight to file descriptor 2 (`I1129 15:56:20.905081 19916
google_auth_provider.cc:136] Using GOOGLE_AUTH_TOKEN_FOR_TESTING`, or an `E...` line when gs:// has
no credentials), before Python sees the error. absl's own switches (--minloglevel,
--stderrthreshold) are command-line flags of the C++ program, out of reach from Python, and
TENSORSTORE_VERBOSE_LOGGING only adds lines. So for the CLI, fd 2 becomes a pipe that a thread
reads, dropping absl-formatted lines and passing everything else on; Python's own stderr
(`sys.stderr`: our one-line errors, the progress bar) writes to the real stderr directly and keeps
its terminal detection. Child processes started meanwhile (Dask workers) inherit the pipe, so
their native lines are dropped too, and after `mute()` (Ctrl-C) all of their output is: the
interruption is reported once, by us.

Set STREAMDIFF_NATIVE_LOGS=1 (or TENSORSTORE_VERBOSE_LOGGING / TENSORSTORE_CURL_VERBOSE, which ask
for those lines) to see them.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator

#: absl's prefix: severity letter, MMDD, time, thread id, file:line].
ABSL_LINE = re.compile(rb"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\s\]]+:\d+\] ")
_WANTS_LOGS = ("STREAMDIFF_NATIVE_LOGS", "TENSORSTORE_VERBOSE_LOGGING", "TENSORSTORE_CURL_VERBOSE")

_muted = threading.Event()


def mute() -> None:
    """Drop everything that reaches fd 2 from now on (native code, child processes)."""
    _muted.set()


@contextlib.contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Filter fd 2 for the duration; a no-op when stderr is not the process's own fd 2 (tests
    that capture it in memory) or when the user asked for native logs."""
    if any(os.environ.get(v) for v in _WANTS_LOGS) or not _is_fd2(sys.stderr):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    original = sys.stderr
    sys.stderr = io.TextIOWrapper(
        os.fdopen(saved, "wb", buffering=0, closefd=False),
        encoding=original.encoding or "utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    _muted.clear()
    pump = threading.Thread(target=_pump, args=(r, saved), name="native-stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = original
        os.dup2(saved, 2)  # our end of the pipe closes here; the pump drains what is left
        pump.join(0.5)  # children holding the pipe open must not delay the exit
        if not pump.is_alive():  # else it may still write there: the fd must not be reused
            os.close(saved)


#: Bytes read from the log pipe at a time: Linux's default pipe capacity, so one read drains it.
PIPE_READ_BYTES = 1 << 16


def _is_fd2(stream: object) -> bool:
    try:
        return stream is sys.__stderr__ and sys.__stderr__ is not None and sys.__stderr__.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _pump(r: int, out: int) -> None:
    rest = b""
    while True:
        try:
            data = os.read(r, PIPE_READ_BYTES)
        except OSError:
            break
        if not data:
            break
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        keep = [ln + b"\n" for ln in lines if not ABSL_LINE.match(ln)]
        if keep and not _muted.is_set():
            _write(out, b"".join(keep))
    if rest and not ABSL_LINE.match(rest) and not _muted.is_set():
        _write(out, rest)
    os.close(r)


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass
