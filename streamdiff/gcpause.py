"""Python's cyclic garbage collector kept off the leaf graph, which holds no cycles worth collecting.

A tree of N leaves is a few hundred thousand small objects built in one go and kept for the whole
run. Each full collection walks every object alive, and CPython starts one whenever the objects
that survived the young generations grow by a quarter, so building the tree and later streaming
values (whose buffers, futures and frames keep triggering collections) spent about as much time
walking the leaves as using them.

`paused()` turns the collector off while metadata is read and mapped (reference counting still
frees everything acyclic at once) and, on the way out, moves every object alive into the permanent
generation (`gc.freeze`): otherwise the first collection after re-enabling would walk every object
allocated meanwhile, and each full collection during the value stage would walk the leaves again.
`unfreezes` on the whole run gives the collector everything back at its end (`gc.unfreeze`), so
cyclic garbage made meanwhile is still collected afterwards. A caller that froze objects itself
(`gc.freeze()` before forking workers) keeps them frozen: `gc.unfreeze` cannot tell its objects from
ours, so such a run only pauses the collector and freezes nothing.
"""

from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

#: Per thread: whether `paused` may freeze (False inside an `unfreezes` run whose caller froze objects).
_may_freeze = threading.local()


@contextmanager
def paused() -> Iterator[None]:
    """Collector off inside the block; what is alive at its end is frozen (see `unfreezes`)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if getattr(_may_freeze, "value", True):
            gc.freeze()
        if was:
            gc.enable()


def unfreezes(f: Callable[P, R]) -> Callable[P, R]:
    """`f`, after which objects frozen by `paused` return to the collector's care (`gc.unfreeze`)."""

    @functools.wraps(f)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        ours = gc.get_freeze_count() == 0  # else the caller's frozen objects: leave them, add none
        outer = getattr(_may_freeze, "value", True)
        _may_freeze.value = ours and outer
        try:
            return f(*args, **kwargs)
        finally:
            _may_freeze.value = outer
            if ours:
                gc.unfreeze()

    return run
