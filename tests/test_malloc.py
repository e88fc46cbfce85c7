"""malloc.reuse_freed_buffers undoes the fixed trim threshold Dask's nanny gives its workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# In a fresh process started as Dask's nanny starts a worker (MALLOC_TRIM_THRESHOLD_=65536): how many
# mmapped blocks glibc holds (mallinfo2().hblks) while a 1 MiB buffer is alive, before and after the call.
PROBE = """
import ctypes, numpy as np
from streamdiff import malloc

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info

def mmapped_while_alive():
    base = libc.mallinfo2().hblks
    x = np.ones(1 << 20, dtype=np.uint8)
    n = libc.mallinfo2().hblks - base
    del x
    return n

before = mmapped_while_alive()
malloc.reuse_freed_buffers()
print(before, mmapped_while_alive())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")
def test_reuse_freed_buffers_serves_a_1mib_buffer_from_the_heap_under_dasks_trim_threshold():
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert (before, after) == (1, 0)
