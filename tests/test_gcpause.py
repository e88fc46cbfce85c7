"""The collector pause around metadata work (streamdiff.gcpause) leaves the process as it found it:
collector on, nothing frozen, also when the run fails; and a diff run through it still sees values."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from helpers import save

import streamdiff
from streamdiff import gcpause
from streamdiff.errors import StreamdiffError


def test_paused_turns_the_collector_off_inside_and_back_on_after_even_on_error():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gcpause.paused():
            assert not gc.isenabled()
            raise RuntimeError("boom")
    assert gc.isenabled()
    gc.unfreeze()


def test_unfreezes_hands_frozen_objects_back_after_the_call_even_when_it_raises():
    @gcpause.unfreezes
    def work(fail: bool) -> None:
        with gcpause.paused():
            pass
        assert gc.get_freeze_count() > 0
        if fail:
            raise ValueError("x")

    work(False)
    assert gc.get_freeze_count() == 0
    with pytest.raises(ValueError):
        work(True)
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_diff_leaves_the_collector_on_and_nothing_frozen_and_still_finds_a_difference(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save(a, {"w": np.arange(6, dtype=np.float32)}, use_ocdbt=True)
    save(b, {"w": np.arange(6, dtype=np.float32) + 1}, use_ocdbt=True)
    r = streamdiff.diff(str(a), str(b))
    assert [x.status for x in r.leaves] == ["different"]
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with pytest.raises(StreamdiffError):
        streamdiff.diff(str(tmp_path / "missing"), str(b))
    assert gc.isenabled() and gc.get_freeze_count() == 0
