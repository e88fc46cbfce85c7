"""glibc allocator settings that keep resident memory close to live memory (Linux; no-op elsewhere).

With glibc's defaults, chunk buffers freed by tensorstore's threads linger in per-thread arenas and
in holes of the heap, so peak RSS grows with checkpoint size although live memory does not (`make
bench` shows it). One arena plus an occasional `malloc_trim` keeps it flat without the page-fault
cost of mmapping every large buffer (a fixed mmap threshold also flattens RSS, but slows the run).
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: glibc's own ceiling for its adaptive mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): a
#: freed buffer up to this size goes back to the heap, to be reused, instead of to the OS.
MMAP_THRESHOLD_MAX = 32 << 20
_trim_enabled = [False]  # set by the program (the CLI), never by a library call
_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim  # noqa: B018 - glibc only (musl has no malloc_trim)
    except (OSError, AttributeError):
        _libc = None


def limit_arenas(n: int = 1) -> None:
    """At most `n` malloc arenas; call before threads start (the CLI does). Fewer arenas also
    means fewer fresh pages to fault in, so reading is faster, not slower."""
    if _libc is not None:
        _libc.mallopt(_M_ARENA_MAX, n)


def reuse_freed_buffers() -> None:
    """Undo a fixed small trim threshold inherited from the environment: Dask's nanny starts its
    workers with MALLOC_TRIM_THRESHOLD_=65536, and any such setting turns off glibc's adaptive
    thresholds, so every chunk buffer over 128 KiB is mmapped fresh and unmapped when freed and
    each of its pages faults in again (system time about equal to the decoding time). Fixing the
    thresholds where the adaptive ones end up restores the reuse; `trim` still returns the heap."""
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        _libc.mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)


def trim() -> None:
    """Return free heap pages to the OS (cheap: a few hundred microseconds)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def enable_trim() -> None:
    """Let the engine trim the heap every few tasks (the CLI does; a program embedding streamdiff
    decides for itself, since trimming costs time and touches the whole process's allocator)."""
    _trim_enabled[0] = True


def trim_enabled() -> bool:
    return _trim_enabled[0]
