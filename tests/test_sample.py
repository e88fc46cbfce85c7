"""`--sample FRACTION`: a seeded, spread-out share of each leaf's blocks is read and compared, and the
verdict says so (never "identical").

Stores are written by zarr-python (uncompressed, so a chunk's file size is what a read of it costs)
and by orbax. Which blocks a run compared is read back from the report alone: in the `marked` pair,
chunk c of B differs from A in exactly 2**c elements, so the sampled leaf's mismatch count, a sum of
distinct powers of two, names the chunks that were compared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from helpers import one_error_line, save

import streamdiff
from streamdiff.datatypes import Kind, LeafResult, Report, Status, Verdict
from streamdiff.plan import Sample

ROWS_PER_CHUNK = 2
COLS = 1000
ITEM = 4  # float32
ONE_CHUNK = ROWS_PER_CHUNK * COLS * ITEM * 2  # block_bytes (both sides) that make a block one chunk


def write_zarr(path: Path, arrays: dict[str, np.ndarray], chunks: tuple[int, ...], attrs: dict | None = None) -> Path:
    """A zarr v2 group written by zarr-python, chunks stored uncompressed."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    for name, a in arrays.items():
        z = root.create_array(name, shape=a.shape, dtype=a.dtype, chunks=chunks, fill_value=0, compressors=None)
        z[...] = a
        if attrs:
            z.attrs.update(attrs)
    return path


def read_zarr(path: Path, name: str) -> np.ndarray:
    import zarr

    return zarr.open_group(str(path), mode="r")[name][...]


def chunk_files(path: Path, name: str) -> list[Path]:
    return [p for p in (path / name).iterdir() if not p.name.startswith(".")]


@pytest.fixture(scope="module")
def many_chunks(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A (and a copy), and B = A + 1 everywhere: one leaf of 200 chunks of 2 x 1000 float32."""
    d = tmp_path_factory.mktemp("many")
    a = np.random.default_rng(0).standard_normal((200 * ROWS_PER_CHUNK, COLS)).astype("float32")
    chunks = (ROWS_PER_CHUNK, COLS)
    return (
        write_zarr(d / "a.zarr", {"w": a}, chunks),
        write_zarr(d / "same.zarr", {"w": a}, chunks),
        write_zarr(d / "plus1.zarr", {"w": a + 1}, chunks),
    )


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> tuple[Path, Path]:
    """One leaf of 10 chunks of one row; chunk c of B differs from A in its first 2**c elements."""
    d = tmp_path_factory.mktemp("marked")
    a = np.random.default_rng(1).standard_normal((10, 1024)).astype("float32")
    b = a.copy()
    for c in range(10):
        b[c, : 2**c] += 1
    return write_zarr(d / "a.zarr", {"w": a}, (1, 1024)), write_zarr(d / "b.zarr", {"w": b}, (1, 1024))


def leaf(r: Report, name: str = "w") -> LeafResult:
    return next(x for x in r.leaves if x.name == name)


def compared_chunks(r: Report) -> set[int]:
    """The chunks of the `marked` pair a report compared, from its mismatch count (see module doc)."""
    m = leaf(r).stats.mismatches
    return {c for c in range(10) if m >> c & 1}


def test_bytes_read_scale_with_the_fraction_one_chunk_per_sampled_block(many_chunks):
    a, same, _ = many_chunks
    stored = sum(p.stat().st_size for p in chunk_files(a, "w")) + sum(p.stat().st_size for p in chunk_files(same, "w"))
    chunk = chunk_files(a, "w")[0].stat().st_size
    full = streamdiff.diff(str(a), str(same), block_bytes=ONE_CHUNK)
    metadata = full.bytes_read - stored  # what every run reads besides chunks
    assert 0 <= metadata < stored / 100
    for fraction, blocks in ((0.1, 20), (0.5, 100), (0.001, 1)):
        r = streamdiff.diff(str(a), str(same), block_bytes=ONE_CHUNK, sample=fraction)
        assert leaf(r).stats.sampled_count == blocks and leaf(r).stats.blocks == 200
        assert r.bytes_read - metadata == 2 * blocks * chunk, fraction
        assert leaf(r).stats.count == blocks * ROWS_PER_CHUNK * COLS


def test_at_a_tiny_fraction_every_leaf_compares_one_block(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {f"w{i}": rng.standard_normal((40, 100)).astype("float32") for i in range(3)}
    a = write_zarr(tmp_path / "a.zarr", arrays, (4, 100))
    b = write_zarr(tmp_path / "b.zarr", arrays, (4, 100))
    r = streamdiff.diff(str(a), str(b), block_bytes=4 * 100 * 4 * 2, sample=1e-6)
    assert r.exit_code == 0 and r.verdict is Verdict.NO_DIFFERENCES_SAMPLED
    for name in arrays:
        s = leaf(r, name).stats
        assert (s.blocks, s.sampled_count, s.count) == (10, 1, 4 * 100)


def test_a_pair_differing_everywhere_is_caught_at_one_percent(many_chunks):
    a, _, plus1 = many_chunks
    va, vb = read_zarr(a, "w"), read_zarr(plus1, "w")
    assert (va != vb).all()
    r = streamdiff.diff(str(a), str(plus1), block_bytes=ONE_CHUNK, sample=0.01)
    assert r.exit_code == 1 and r.verdict_text == "1 of 1 leaves differ (in the 1.0% sampled)"
    s = leaf(r).stats
    assert (s.blocks, s.sampled_count) == (200, 2)
    assert s.mismatches == s.count == 2 * ROWS_PER_CHUNK * COLS
    assert s.max_abs_diff == pytest.approx(np.abs(va - vb).max(), rel=1e-6)


def test_cli_sampled_run_reports_sampled_fraction_seed_and_sampled_count_in_the_json(many_chunks):
    a, _, plus1 = many_chunks
    r = run_cli(a, plus1, "--sample", "0.01", "--sample-seed", "7", "--json", "-", "-q")
    assert r.code == 1, r.err
    d = r.json
    assert (d["sampled"], d["sample_seed"]) == (0.01, 7)
    assert run_cli(a, plus1, "--json", "-", "-q").json["sample_seed"] is None
    assert d["verdict"] == "1 of 1 leaves differ (in the 1.0% sampled)"
    (w,) = d["leaves"]
    # the CLI's default blocks group chunks (here the whole leaf is one block): at least one is read
    assert w["status"] == "different" and w["sampled_count"] == 1 and w["blocks"] >= 1
    assert w["mismatches"] == w["count"] > 0


def test_orbax_pair_differing_everywhere_is_caught_at_one_percent_in_every_leaf(tmp_path):
    rng = np.random.default_rng(3)
    tree = {"dense": {"kernel": rng.standard_normal((64, 256)).astype("float32")}, "bias": np.arange(512.0)}
    save(tmp_path / "a", tree, chunk_bytes=1024)
    save(tmp_path / "b", {"dense": {"kernel": tree["dense"]["kernel"] * 2 + 1}, "bias": tree["bias"] - 3}, 1024)
    r = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), block_bytes=2048, sample=0.01)
    assert r.exit_code == 1 and r.sample == 0.01
    for name in ("dense/kernel", "bias"):
        s = leaf(r, name).stats
        assert leaf(r, name).status == Status.DIFFERENT and s.blocks > 1 and s.sampled_count == 1
        assert s.mismatches == s.count > 0


def test_a_difference_in_one_unsampled_chunk_is_missed_and_the_verdict_says_sampled_never_identical(tmp_path):
    va = np.random.default_rng(4).standard_normal((200 * ROWS_PER_CHUNK, COLS)).astype("float32")
    picked = {i for i in Sample(0.01).picks(200, "w")}
    missed = next(c for c in range(200) if c not in picked)
    vb = va.copy()
    vb[missed * ROWS_PER_CHUNK, 7] += 1
    a = write_zarr(tmp_path / "a.zarr", {"w": va}, (ROWS_PER_CHUNK, COLS))
    b = write_zarr(tmp_path / "b.zarr", {"w": vb}, (ROWS_PER_CHUNK, COLS))
    assert (read_zarr(a, "w") != read_zarr(b, "w")).sum() == 1
    assert streamdiff.diff(str(a), str(b), block_bytes=ONE_CHUNK).exit_code == 1
    r = streamdiff.diff(str(a), str(b), block_bytes=ONE_CHUNK, sample=0.01)
    assert r.exit_code == 0 and r.verdict is Verdict.NO_DIFFERENCES_SAMPLED
    assert r.verdict_text == "no differences in the 1.0% sampled: 1 leaves (not a full comparison)"
    assert "identical" not in r.verdict_text and not r.identical
    j = streamdiff.to_json(r)
    assert j["identical"] is False and j["sampled"] == 0.01 and j["leaves"][0]["mismatches"] == 0


def test_same_seed_compares_the_same_chunks_in_another_process_and_other_seeds_other_chunks(marked):
    a, b = marked
    r = streamdiff.diff(str(a), str(b), block_bytes=1024 * 4 * 2, sample=0.3)
    chosen = compared_chunks(r)
    # three chunks, one in each third of the leaf (strata [0, 3), [3, 6), [6, 10))
    assert len(chosen) == 3 and leaf(r).stats.sampled_count == 3
    assert sorted(c * 3 // 10 for c in chosen) == [0, 1, 2]
    code = (
        "import streamdiff, sys; "
        f"r = streamdiff.diff({str(a)!r}, {str(b)!r}, block_bytes=8192, sample=0.3); "
        "print(next(x for x in r.leaves if x.name == 'w').stats.mismatches)"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(Path(__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == leaf(r).stats.mismatches
    again = streamdiff.diff(str(a), str(b), block_bytes=8192, sample=0.3, sample_seed=0)
    assert compared_chunks(again) == chosen  # 0 is the default seed
    seeds = {
        frozenset(compared_chunks(streamdiff.diff(str(a), str(b), block_bytes=8192, sample=0.3, sample_seed=s)))
        for s in range(1, 6)
    }
    assert len(seeds | {frozenset(chosen)}) > 1


def test_json_leaves_are_compared_in_full_when_sampling(tmp_path):
    v = np.zeros((8, 10), "float32")
    a = write_zarr(tmp_path / "a.zarr", {"w": v}, (1, 10), attrs={"units": "m"})
    b = write_zarr(tmp_path / "b.zarr", {"w": v}, (1, 10), attrs={"units": "km"})
    r = streamdiff.diff(str(a), str(b), block_bytes=80, sample=0.01)
    attr = next(x for x in r.leaves if x.kind == Kind.JSON)
    assert attr.status == Status.DIFFERENT and attr.stats is None
    assert r.exit_code == 1 and leaf(r).status == Status.EQUAL and leaf(r).stats.sampled_count == 1


def test_sample_of_one_is_an_ordinary_full_diff(marked):
    a, b = marked
    r = run_cli(a, a, "--sample", "1", "--json", "-", "-q")
    assert r.code == 0 and r.json["identical"] is True and r.json["sampled"] is None
    assert "sampled_count" not in r.json["leaves"][0]
    full = streamdiff.diff(str(a), str(b), block_bytes=8192, sample=1.0)
    assert compared_chunks(full) == set(range(10)) and full.exit_code == 1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--sample", "0.1", "--structure-only"], "--structure-only reads none"),
        (["--sample", "0"], "--sample must be a fraction in (0, 1]"),
        (["--sample", "1.5"], "--sample must be a fraction in (0, 1]"),
        (["--sample", "nan"], "--sample must be a fraction in (0, 1]"),
        (["--sample", "-0.1"], "--sample must be a fraction in (0, 1]"),
        (["--sample", "0.1", "--sample-seed", "-1"], "--sample-seed must be an integer >= 0"),
        (["--sample", "tenth"], "'tenth' is not a valid float"),
    ],
)
def test_bad_sample_options_are_one_line_usage_errors(marked, args, needle):
    a, b = marked
    r = run_cli(a, b, *args)
    assert r.code == 2 and r.out == ""
    lines = r.err.strip().splitlines()
    assert lines[0].startswith("streamdiff: error: ") and needle in lines[0], r.err
    one_error_line(r, needle)  # exactly one line, no traceback


def test_sampled_verdict_exits_0_only_when_nothing_else_keeps_it_from_0():
    from streamdiff.stats import LeafStats

    same = LeafStats(count=4, n_defined=4).result((4,))  # what an equal leaf's statistics are
    eq = LeafResult(path=("w",), status=Status.EQUAL, kind=Kind.ARRAY, stats=same)
    bad = LeafResult(path=("x",), status=Status.ERROR, kind=Kind.ARRAY, message="boom")
    odd = LeafResult(path=("y",), status=Status.NOT_COMPARED, kind=Kind.ARRAY, message="?")
    base = dict(a="A", b="B", atol=0.0, rtol=0.0, nan_equal=True, structure_only=False, sample=0.05)
    assert Report(leaves=(eq,), **base).verdict is Verdict.NO_DIFFERENCES_SAMPLED
    assert Report(leaves=(eq,), **base).exit_code == 0
    assert Report(leaves=(eq, bad), **base).exit_code == 2
    assert Report(leaves=(eq, odd), **base).exit_code == 2
    assert Report(leaves=(), **base).exit_code == 2
    assert Report(leaves=(eq,), **dict(base, sample=None)).verdict is Verdict.IDENTICAL


def test_picks_on_a_grid_of_10_to_the_12_blocks_are_one_per_stratum_ascending_and_computed_lazily():
    n = 10**12
    s = Sample(1e-9, seed=7)
    picks = list(s.picks(n, "layers/kernel"))
    assert len(picks) == 1000 == s.count(n)
    assert all(j * n // 1000 <= p < (j + 1) * n // 1000 for j, p in enumerate(picks))
    assert Sample(0.1).count(100) == 10 and Sample(0.07).count(100) == 7 and Sample(0.5).count(3) == 2
    assert list(Sample(0.5).picks(0, "x")) == [] and list(Sample(1.0).picks(4, "x")) == [0, 1, 2, 3]


def test_sampled_diff_on_dask_compares_the_same_blocks_as_on_threads(marked):
    pytest.importorskip("dask.distributed")
    a, b = marked
    threads = streamdiff.diff(str(a), str(b), block_bytes=8192, sample=0.3, sample_seed=3)
    dask = streamdiff.diff(str(a), str(b), block_bytes=8192, sample=0.3, sample_seed=3, scheduler="local:2")
    assert compared_chunks(dask) == compared_chunks(threads) and len(compared_chunks(threads)) == 3
    assert leaf(dask).stats == leaf(threads).stats
    assert dask.exit_code == threads.exit_code == 1


def test_terminal_report_says_the_statistics_are_of_the_sampled_elements(many_chunks):
    a, _, plus1 = many_chunks
    r = run_cli(a, plus1, "--sample", "0.01")
    assert r.code == 1
    lines = r.out.splitlines()
    assert lines[0].startswith("1 of 1 leaves differ (in the 1.0% sampled)")
    assert "  sampled: 1.0% of each leaf's blocks (at least one); figures are of those only" in lines


def test_big_chunks_streamed_in_slabs_are_sampled_chunk_by_chunk(marked):
    a, b = marked
    r = streamdiff.diff(str(a), str(b), block_bytes=2048, sample=0.3)  # a chunk (4 KiB a side) exceeds a block
    s = leaf(r).stats
    assert s.streamed is True and (s.blocks, s.sampled_count) == (10, 3)
    assert len(compared_chunks(r)) == 3 and s.count == 3 * 1024


@pytest.mark.parametrize(
    "fraction,text", [(0.01, "1.0%"), (0.1, "10.0%"), (0.125, "12.5%"), (0.0005, "0.05%"), (0.9999, "99.99%")]
)
def test_the_sampled_fraction_is_printed_without_rounding_to_everything(fraction, text):
    from streamdiff.report import percent

    assert percent(fraction) == text
