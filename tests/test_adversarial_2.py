"""Adversarial tests of the code merged on 2026-11-29 (OCDBT node decoder, --sample, crossed grids,
the engine's error policy, typed metadata, the collector pause): each pins a defect found by attacking it."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import numpy as np

import streamdiff


def save_orbax(path: Path, tree: dict) -> Path:
    import orbax.checkpoint as ocp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=True)).save(path, args=ocp.args.PyTreeSave(tree))
    return path


def test_diff_keeps_objects_the_caller_froze_frozen_and_freezes_none_of_its_own(tmp_path):
    """A server that calls gc.freeze() before forking must find its objects still frozen after a
    library diff, and the diff must not leave its own objects in the permanent generation."""
    a = save_orbax(tmp_path / "a", {"w": np.arange(6, dtype=np.float32)})
    b = save_orbax(tmp_path / "b", {"w": np.arange(6, dtype=np.float32) + 1})
    held = [[object()] for _ in range(1000)]  # the caller's objects, frozen by the caller
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        assert before >= len(held)
        r = streamdiff.diff(str(a), str(b))
        assert [x.status for x in r.leaves] == ["different"]
        # Frozen objects freed by reference counting meanwhile leave the count: it may only shrink.
        assert 0 < gc.get_freeze_count() <= before
        tracked = {id(o) for o in gc.get_objects()}  # the permanent generation is not listed
        assert not any(id(x) in tracked for x in held)
        assert gc.isenabled()
    finally:
        gc.unfreeze()
