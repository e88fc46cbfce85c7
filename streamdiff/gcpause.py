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
cyclic garbage made meanwhile is still collected afterwards.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def paused() -> Iterator[None]:
    """Collector off inside the block; what is alive at its end is frozen (see `unfreezes`)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()


def unfreezes(f: Callable[P, R]) -> Callable[P, R]:
    """`f`, after which objects frozen by `paused` return to the collector's care (`gc.unfreeze`)."""

    @functools.wraps(f)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return f(*args, **kwargs)
        finally:
            gc.unfreeze()

    return run
