"""The engine's contracts that the reports alone do not show: a bug in streamdiff escapes with its
traceback while a storage failure marks only its leaf; a run holds the stores of the pairs in flight,
not of the whole tree; the heap is trimmed only when the program asked for it."""

from __future__ import annotations

import os
import subprocess
import sys
import weakref

import numpy as np
import pytest
from helpers import save

import streamdiff
from streamdiff import malloc
from streamdiff.engine import threads, work
from streamdiff.plan import DEFAULT_MAX_MEMORY, memory_plan

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def many_leaves(tmp_path_factory):
    """30 small float32 leaves, equal on both sides except `l7`."""
    d = tmp_path_factory.mktemp("many")
    tree = {f"l{k}": RNG.standard_normal((40, 8), dtype=np.float32) for k in range(30)}
    save(d / "a", tree, use_ocdbt=False)
    other = dict(tree)
    other["l7"] = tree["l7"] + 1
    save(d / "b", other, use_ocdbt=False)
    return d


def test_a_type_error_in_the_per_task_work_escapes_diff_with_its_own_type(many_leaves, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("a bug in streamdiff")

    monkeypatch.setattr(work, "block_stats", broken)
    with pytest.raises(TypeError, match="a bug in streamdiff"):
        streamdiff.diff(str(many_leaves / "a"), str(many_leaves / "b"), shortcut=False)


def test_a_corrupt_chunk_marks_only_its_leaf_error_and_the_rest_is_compared(tmp_path):
    tree = {"w": RNG.standard_normal((64, 16), dtype=np.float32), "ok": np.arange(10, dtype=np.float32)}
    save(tmp_path / "a", tree, use_ocdbt=False)
    save(tmp_path / "b", tree, use_ocdbt=False)
    chunks = [f for f in (tmp_path / "b" / "w").rglob("*") if f.is_file() and not f.name.startswith(".z")]
    assert chunks, "orbax wrote no chunk file for w"
    for f in chunks:
        f.write_bytes(b"\x28\xb5\x2f\xfd" + b"\xff" * (f.stat().st_size - 4))  # a zstd magic, then garbage
    r = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), shortcut=False)
    status = {"/".join(x.path): x for x in r.leaves}
    assert status["w"].status == "error" and status["w"].message.startswith("reading values failed: ")
    assert status["ok"].status == "equal"
    assert r.exit_code == 2


def test_stores_open_at_once_stay_within_the_pairs_in_flight(many_leaves, monkeypatch):
    live: weakref.WeakSet = weakref.WeakSet()
    peak = [0, 0]  # most alive at once, opened in all

    class Tracked(threads.OpenSide):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            live.add(self)
            peak[0] = max(peak[0], len(live))
            peak[1] += 1

    monkeypatch.setattr(threads, "OpenSide", Tracked)
    r = streamdiff.diff(str(many_leaves / "a"), str(many_leaves / "b"), jobs=2)
    assert [x.name for x in r.leaves if x.status == "different"] == ["l7"]
    in_flight = memory_plan(DEFAULT_MAX_MEMORY, 2).in_flight
    assert peak[1] == 60  # every side of the 30 pairs opened exactly once
    assert peak[0] <= 2 * (in_flight + 1)  # the pairs with a task in flight, and the one being submitted
    assert len(live) == 0  # nothing kept after the run


def test_a_library_call_in_a_fresh_process_never_trims_the_heap(many_leaves):
    """The flag is process-wide and the CLI sets it, so the library default is checked in a new process."""
    code = (
        "import sys, streamdiff\n"
        "from streamdiff import malloc\n"
        "calls = []\n"
        "malloc.trim = lambda: calls.append(1)\n"
        "streamdiff.diff(sys.argv[1], sys.argv[2], shortcut=False)\n"
        "print(malloc.trim_enabled(), len(calls))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(many_leaves / "a"), str(many_leaves / "b")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    assert out == ["False", "0"]


def test_with_trim_enabled_the_heap_is_trimmed_every_trim_every_tasks(many_leaves, monkeypatch):
    calls = []
    monkeypatch.setattr(malloc, "trim", lambda: calls.append(1))
    monkeypatch.setattr(malloc, "trim_enabled", lambda: True)
    streamdiff.diff(str(many_leaves / "a"), str(many_leaves / "b"), shortcut=False)
    assert len(calls) == 30 // threads.TRIM_EVERY  # one task per leaf, one trim every TRIM_EVERY settled
    assert calls  # TRIM_EVERY above the 30 tasks would make the count above 0 == 0


def test_leaves_planned_alike_in_one_ocdbt_item_keep_their_own_statistics(tmp_path):
    # Every leaf has the same metadata document, so the engine plans the first and reuses the plan;
    # chunk values are inline in the OCDBT B-tree and compared from the reader's walk.
    tree = {f"l{k}": RNG.standard_normal((8, 4), dtype=np.float32) for k in range(12)}
    other = dict(tree)
    other["l3"] = tree["l3"] + np.float32(1)
    other["l9"] = tree["l9"] * np.float32(3)
    save(tmp_path / "a", tree)
    save(tmp_path / "b", other)
    r = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"))
    got = {x.name: x for x in r.leaves}
    assert sorted(k for k, x in got.items() if x.status == "different") == ["l3", "l9"]
    assert all(x.status == "equal" for k, x in got.items() if k not in ("l3", "l9"))
    for k in ("l3", "l9"):
        want = np.abs(other[k].astype(np.float64) - tree[k].astype(np.float64)).max()
        assert got[k].stats.max_abs_diff == pytest.approx(want, rel=1e-6)


def test_uncompressed_chunks_that_differ_are_compared_from_the_bytes_the_shortcut_read_not_read_twice(tmp_path):
    tree = {f"w{k}": RNG.standard_normal((64, 64), dtype=np.float32) for k in range(4)}
    moved = {k: v + np.float32(0.5) for k, v in tree.items()}
    for name, t in (("a", tree), ("same", tree), ("moved", moved)):
        save(tmp_path / name, t, use_compression=False, use_ocdbt=False)
    equal = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "same"))
    differ = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "moved"))
    assert all(x.status == "equal" for x in equal.leaves)
    assert all(x.status == "different" for x in differ.leaves)
    stored = 2 * sum(v.nbytes for v in tree.values())
    assert equal.bytes_read >= stored
    assert differ.bytes_read < 1.1 * equal.bytes_read  # was twice: read again to decode
    for x in differ.leaves:
        k = x.name
        want = np.abs(moved[k].astype(np.float64) - tree[k].astype(np.float64))
        assert x.stats.max_abs_diff == pytest.approx(want.max(), rel=1e-6)
        assert x.stats.rms_diff == pytest.approx(np.sqrt((want**2).mean()), rel=1e-5)


def test_remote_runs_submit_pairs_largest_block_first_with_the_same_results(tmp_path, monkeypatch):
    """On remote stores (pretended here: `threads._remote`), pairs are submitted by decreasing block
    size, so the run ends on its smallest tasks; the statistics do not depend on the order."""
    tree = {
        "a_small": RNG.standard_normal((4,), dtype=np.float32),
        "b_big": RNG.standard_normal((256, 64), dtype=np.float32),
        "c_mid": RNG.standard_normal((64, 64), dtype=np.float32),
    }
    save(tmp_path / "a", tree, use_ocdbt=False)
    save(tmp_path / "b", {k: v + 1 for k, v in tree.items()}, use_ocdbt=False)
    in_order = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), shortcut=False)
    submitted: list[str] = []
    submit = threads.ThreadRun._submit

    def recording(self, pool, t):
        path = "/".join(self.pairs[t.pair_index].path)
        if path not in submitted:
            submitted.append(path)
        return submit(self, pool, t)

    monkeypatch.setattr(threads, "_remote", lambda p: True)
    monkeypatch.setattr(threads.ThreadRun, "_submit", recording)
    largest_first = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), shortcut=False)
    assert submitted == ["b_big", "c_mid", "a_small"]
    assert largest_first.leaves == in_order.leaves
