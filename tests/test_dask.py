"""One diff on a local Dask cluster gives the same report as on threads (apart from timings and
storage counters), with rules, stacking views and transposes in play; failures stay per leaf."""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import MAXTEXT
from helpers import free_port

import streamdiff
from streamdiff.engine.dask import RunState, WorkerCache, batches, worker_cache

pytest.importorskip("dask.distributed")

VOLATILE = {"seconds", "bytes_read", "requests"}


def comparable(report) -> dict:
    j = streamdiff.to_json(report)
    j["summary"] = {k: v for k, v in j["summary"].items() if k not in VOLATILE}
    return j


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


CASES = [
    # Linen scanned vs unscanned: the unscanned side is a stacked view (ts.stack of 3 leaves)
    (MAXTEXT / "v024_linen_scan/checkpoints", MAXTEXT / "v024_linen_noscan/checkpoints", {}),
    # Linen vs converter NNX: presets rename on both sides
    (MAXTEXT / "v024_linen_scan/checkpoints", MAXTEXT / "conv_pr283f88b_linen_scan_to_nnx/items", {}),
    # small blocks: many tasks per leaf, chunks streamed in slabs, merged out of order
    (MAXTEXT / "v024_linen_scan/checkpoints/0", MAXTEXT / "v024_linen_scan/checkpoints/1", {"block_bytes": 4096}),
    # per-layer statistics and values at max |a-b| merged from many blocks, one stacked side
    (
        MAXTEXT / "v024_linen_scan/checkpoints",
        MAXTEXT / "v024_linen_noscan/checkpoints",
        {"block_bytes": 4096, "per_layer": True},
    ),
]


@pytest.mark.parametrize("a,b,kw", CASES)
def test_dask_report_equals_threads(cluster, a, b, kw):
    threads = streamdiff.diff(str(a), str(b), atol=1e-6, **kw)
    dask = streamdiff.diff(str(a), str(b), atol=1e-6, scheduler=cluster, **kw)
    assert comparable(dask) == comparable(threads)
    assert dask.exit_code == threads.exit_code
    assert dask.bytes_read > 0  # the workers' reads are counted


def test_dask_with_transpose_rule_equals_threads(cluster, tmp_path):
    rules = tmp_path / "t.toml"
    rules.write_text('[[rule]]\nop = "transpose"\npath = "**/layers/mlp/*/kernel"\naxes = [1, 0, 2]\n')
    a = str(MAXTEXT / "v024_linen_scan/checkpoints")
    b = str(MAXTEXT / "v024_linen_scan_seed1/checkpoints")
    threads = streamdiff.diff(a, b, rules=[str(rules)], block_bytes=8192)
    dask = streamdiff.diff(a, b, rules=[str(rules)], block_bytes=8192, scheduler=cluster)
    assert any(x.source_a and x.source_a.startswith("transpose(") for x in dask.leaves)
    assert comparable(dask) == comparable(threads)


def test_unreadable_block_marks_its_leaf_and_the_rest_completes(cluster, corpus, copy_ckpt):
    import os

    root, _ = corpus
    ckpt = copy_ckpt(root / "chunked_noocdbt")
    os.truncate(ckpt / "np_big/0.0", 100)
    r = streamdiff.diff(str(ckpt), str(root / "chunked_noocdbt"), scheduler=cluster, shortcut=False)
    status = {"/".join(x.path): x.status for x in r.leaves}
    assert r.exit_code == 2 and status["np_big"] == "error" and status["small"] == "equal"
    assert "reading values failed" in next(x.message for x in r.leaves if x.status == "error")


def test_local_scheduler_spec_and_bad_addresses(tmp_path):
    a = str(MAXTEXT / "v024_linen_scan_seed1/checkpoints")
    r = streamdiff.diff(a, a, scheduler="local:1")
    assert r.exit_code == 0 and r.identical
    with pytest.raises(streamdiff.StreamdiffError, match="needs a number of workers"):
        streamdiff.diff(a, a, scheduler="local:x")
    t0 = time.monotonic()
    with pytest.raises(streamdiff.StreamdiffError, match="cannot reach Dask scheduler"):
        streamdiff.diff(a, a, scheduler=f"tcp://127.0.0.1:{free_port()}", timeout=5)
    assert time.monotonic() - t0 < 30  # the wait is bounded by `timeout` (default 30 s)


class Task(NamedTuple):
    """What `batches` reads of a task: the decoded bytes it accounts for."""

    name: int
    progress: int


def by_progress(t: Task) -> int:
    return t.progress


def test_batches_group_consecutive_tasks_until_target_bytes_and_keep_order():
    tasks = [Task(i, 100) for i in range(25)]
    out = list(batches(tasks, 1000, by_progress))
    assert [len(b) for b in out] == [10, 10, 5]
    assert [t for b in out for t in b] == tasks
    uneven = list(batches([Task(0, 900), Task(1, 200), Task(2, 5000), Task(3, 1)], 1000, by_progress))
    assert [[t.name for t in b] for b in uneven] == [[0, 1], [2], [3]]


def test_io_concurrency_reaches_the_workers_and_their_remote_contexts(cluster):
    from dask.distributed import Client

    a = str(MAXTEXT / "v024_linen_scan/checkpoints/0")
    streamdiff.diff(a, a, scheduler=cluster, io_concurrency=7)

    def seen() -> int | None:
        c = worker_cache()
        return None if c is None else c.state.io_concurrency  # None: this worker ran no batch

    with Client(cluster) as client:
        per_worker = [v for v in client.run(seen).values() if v is not None]
    assert per_worker and all(v == 7 for v in per_worker)
    remote = WorkerCache(RunState("r", [], [], None, True, (True, True), 30.0, 7, False))
    assert [c["gcs_request_concurrency"].to_json() for c in remote.contexts] == [{"limit": 7}] * 2


def test_dask_crossed_grids_read_through_a_chunk_cache_built_on_the_worker(cluster, tmp_path):
    """Blocks of A's chunk with B's crossing chunks read through a decoded-chunk cache (plan.pair_grid):
    the worker builds the cached context itself, so the workers read every stored byte once, as the
    threads do (without the cache each B chunk is decoded by the two blocks it spans)."""
    import numpy as np
    import tensorstore as ts
    from dask.distributed import Client

    from streamdiff.plan import memory_plan, pair_grid

    shape, chunks_a, chunks_b = (64, 48), (16, 24), (8, 48)
    a = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    b = a.copy()
    b[40, 30] -= 2.0
    for name, values, chunks in (("a", a, chunks_a), ("b", b, chunks_b)):
        md = {"shape": list(shape), "chunks": list(chunks), "compressor": None, "dtype": "<f4"}
        spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": f"{tmp_path / name}/"}, "metadata": md}
        ts.open(spec, create=True).result().write(values).result()
    g = pair_grid(shape, chunks_a, chunks_b, (4, 4), memory_plan(2 << 30, 2, 1600))
    assert g.cache_a == 0 and g.cache_b > 0
    pa, pb = str(tmp_path / "a"), str(tmp_path / "b")
    stored = sum(f.stat().st_size for p in (pa, pb) for f in Path(p).iterdir() if not f.name.startswith("."))
    meta = streamdiff.diff(pa, pb, structure_only=True).bytes_read
    dask = streamdiff.diff(pa, pb, block_bytes=1600, scheduler=cluster)
    assert dask.bytes_read - meta == stored
    leaf = dask.leaves[0]
    assert leaf.stats.mismatches == 1 and leaf.stats.max_abs_diff == pytest.approx(2.0, rel=1e-6)

    def cache_limits() -> list | None:
        c = worker_cache()
        if c is None or not c.state.caches[1]:
            return None  # this worker ran no batch of this run
        return [None if x is None else x["cache_pool"].to_json()["total_bytes_limit"] for x in c.sides.cached]

    with Client(cluster) as client:
        seen = [v for v in client.run(cache_limits).values() if v is not None]
    assert seen and all(v[0] is None and v[1] >= g.cache_b for v in seen)


def write_zarr_pair(root: Path) -> tuple[str, str]:
    """Two zarr-python v2 groups, B differing from A at a few points: `blocks` (chunks of 8 rows,
    many blocks at a 4 KiB block budget) and `streamed` (raw 8 KiB chunks, over that budget: a task
    each, streamed in slabs)."""
    import numpy as np
    import zarr

    rng = np.random.default_rng(5)
    a = {"blocks": rng.standard_normal((256, 64)).astype(np.float32)}
    a["streamed"] = rng.standard_normal((256, 64)).astype(np.float32)
    b = {k: v.copy() for k, v in a.items()}
    b["blocks"][[3, 100, 250], [1, 2, 63]] += 0.5
    b["streamed"][[0, 128, 255], [0, 7, 9]] -= 1.5
    out = []
    for name, arrays in (("a", a), ("b", b)):
        g = zarr.open_group(str(root / name), mode="w", zarr_format=2)
        g.create_array("blocks", shape=(256, 64), chunks=(8, 64), dtype="f4")[...] = arrays["blocks"]
        g.create_array("streamed", shape=(256, 64), chunks=(32, 64), dtype="f4", compressors=None)[...] = arrays[
            "streamed"
        ]
        out.append(str(root / name))
    return out[0], out[1]


def count_cells(monkeypatch) -> list[int]:
    """How many blocks every task generator builds, in this process (BlockGrid.cells yields one per task)."""
    from streamdiff.plan import BlockGrid

    built = [0]
    cells = BlockGrid.cells

    def counted(self, picks=None):
        for cell in cells(self, picks):
            built[0] += 1
            yield cell

    monkeypatch.setattr(BlockGrid, "cells", counted)
    return built


@pytest.mark.parametrize("sample", [None, 0.5])
def test_task_k_of_a_pair_is_generated_alone_and_equals_the_kth_of_the_whole_stream(tmp_path, sample):
    from streamdiff.datatypes import PairStatus
    from streamdiff.engine.plans import plan_pairs
    from streamdiff.engine.tasks import pair_tasks
    from streamdiff.pair import pair_trees
    from streamdiff.plan import Sample, memory_plan
    from streamdiff.reader.locate import locate
    from streamdiff.reader.tree import read_item
    from streamdiff.stats import Policy

    a, b = write_zarr_pair(tmp_path)
    leaves = [read_item(locate(x).items[0]).leaves for x in (a, b)]
    pairs = [p for p in pair_trees(*leaves) if p.status is PairStatus.COMPARE]
    mem = memory_plan(2 << 30, 2, 4096)
    plans = plan_pairs(pairs, [Policy()] * len(pairs), mem, True)
    assert sorted(plans[i].rows is None for i in plans) == [False, True]  # one streamed, one in blocks
    s = Sample(sample) if sample else None
    for i, p in enumerate(pairs):
        whole = list(pair_tasks(i, p, plans[i], mem, s))
        assert len(whole) >= 4
        assert [t for k in range(len(whole)) for t in pair_tasks(i, p, plans[i], mem, s, k, k + 1)] == whole
        assert list(pair_tasks(i, p, plans[i], mem, s, 3, None)) == whole[3:]
        assert list(pair_tasks(i, p, plans[i], mem, s, len(whole), len(whole) + 5)) == []


@pytest.mark.filterwarnings("ignore:Port .* is already in use")  # in-process workers
def test_a_pair_split_into_one_batch_per_task_builds_each_task_once_and_equals_threads(tmp_path, monkeypatch):
    """Every task its own Dask batch (in-process workers, so the generators can be counted): the
    client builds each task once to cut batches, the workers once to run it; before, a batch built
    every task of its pair before its own (n**2 / 2 per pair)."""
    from dask.distributed import LocalCluster

    import streamdiff.engine.dask as engine_dask

    a, b = write_zarr_pair(tmp_path)
    built = count_cells(monkeypatch)
    threads = streamdiff.diff(a, b, block_bytes=4096)
    tasks = built[0]
    assert tasks == 32 + 8 and threads.exit_code == 1  # 32 blocks of `blocks`, 8 chunks of `streamed`
    monkeypatch.setattr(engine_dask, "BATCH_BYTES", 1)
    monkeypatch.setattr(engine_dask, "MIN_BATCH_BYTES", 1)
    built[0] = 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        dask = streamdiff.diff(a, b, block_bytes=4096, scheduler=c.scheduler_address)
    assert built[0] == 2 * tasks
    assert comparable(dask) == comparable(threads)
