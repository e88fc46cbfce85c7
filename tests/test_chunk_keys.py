"""Two stores that spell chunk keys differently ('0.0', '0/0', 'c/0/0', 'c.0.0', legacy nested
'0/0' without dimension_separator, arrays inside OCDBT) still compare value for value.

The equal-bytes shortcut reads stored chunks by key. Reading side B with side A's spelling finds
no chunk there, and "missing on both sides" would settle a block as fill value on both: an all-zero
array against a random one reported identical. Every case is written by the real writer
(zarr-python, or tensorstore for OCDBT), read back by it, and its numbers checked against numpy,
with the shortcut on (the default), off, and on the streaming path (chunks over the block budget).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr
from conftest import run_cli
from reference import assert_stats_match, expected_stats

import streamdiff

SHAPE, CHUNKS = (64, 64), (16, 16)

#: name -> (zarr_format, chunk_key_encoding, legacy): legacy drops dimension_separator from
#: .zarray afterwards, the layout zarr-python 2's NestedDirectoryStore wrote.
SPELLINGS = {
    "v2_dot": (2, {"name": "v2", "separator": "."}, False),
    "v2_slash": (2, {"name": "v2", "separator": "/"}, False),
    "v2_legacy_nested": (2, {"name": "v2", "separator": "/"}, True),
    "v3_default_slash": (3, {"name": "default", "separator": "/"}, False),
    "v3_default_dot": (3, {"name": "default", "separator": "."}, False),
    "v3_v2_dot": (3, {"name": "v2", "separator": "."}, False),
}
#: (A's spelling, B's spelling): every pair the shortcut may try (same format) plus the reverses
#: and a v2/v3 mix; and v3 '.' against itself ('c.0.0', once looked up as 'c/0.0' on both sides).
PAIRS = [
    ("v2_dot", "v2_slash"),
    ("v2_slash", "v2_dot"),
    ("v2_dot", "v2_legacy_nested"),
    ("v2_legacy_nested", "v2_dot"),
    ("v3_default_slash", "v3_default_dot"),
    ("v3_default_dot", "v3_default_slash"),
    ("v3_default_slash", "v3_v2_dot"),
    ("v3_v2_dot", "v3_default_dot"),
    ("v3_default_dot", "v3_default_dot"),
    ("v2_slash", "v3_default_slash"),
]


def zeros_vs_random() -> tuple[np.ndarray, np.ndarray]:
    """A: all fill value (zarr-python stores no chunk at all); B: random everywhere."""
    return np.zeros(SHAPE, np.float32), np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def one_value_in_fill_chunk() -> tuple[np.ndarray, np.ndarray]:
    """Equal data except one value of B in a chunk that is all fill value (not stored) on A."""
    a = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    a[16:32, 32:48] = 0
    b = a.copy()
    b[20, 40] = 3.5
    return a, b


def write_zarr(path: Path, spelling: str, data: np.ndarray, chunks=CHUNKS) -> np.ndarray:
    """Write `data` with zarr-python in that spelling; return it as zarr-python reads it back."""
    fmt, enc, legacy = SPELLINGS[spelling]
    z = zarr.create_array(
        store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=0, zarr_format=fmt,
        chunk_key_encoding=enc,
    )  # fmt: skip
    z[...] = data
    back = zarr.open_array(str(path), mode="r")[...]
    if legacy:
        doc = json.loads((path / ".zarray").read_text())
        del doc["dimension_separator"]
        (path / ".zarray").write_text(json.dumps(doc))
    return back


def cli(a: Path, b: Path, *extra: str):
    r = run_cli(a, b, "--json", "-", "-q", *extra)
    return r, json.loads(r.out)


@pytest.mark.parametrize("data", [zeros_vs_random, one_value_in_fill_chunk])
@pytest.mark.parametrize("shortcut", [True, False], ids=["shortcut", "no_shortcut"])
@pytest.mark.parametrize(("sa", "sb"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_differently_spelled_chunk_keys_exit_1_with_numpys_numbers(tmp_path, sa, sb, shortcut, data):
    xa, xb = data()
    ra = write_zarr(tmp_path / "a", sa, xa)
    rb = write_zarr(tmp_path / "b", sb, xb)
    assert not np.array_equal(ra, rb)
    r, doc = cli(tmp_path / "a", tmp_path / "b", *(() if shortcut else ("--no-shortcut",)))
    assert r.code == 1, r.err
    (leaf,) = doc["leaves"]
    assert leaf["status"] == "different"
    assert_stats_match(leaf, expected_stats(ra, rb), f"{sa} vs {sb}")


@pytest.mark.parametrize(("sa", "sb"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_differently_spelled_chunk_keys_equal_data_exit_0_through_the_shortcut(tmp_path, sa, sb):
    """The same values in two spellings: exit 0, and (same format) settled by equal stored bytes,
    which shows the shortcut read each side's chunks under that side's own keys."""
    x, _ = one_value_in_fill_chunk()
    ra = write_zarr(tmp_path / "a", sa, x)
    rb = write_zarr(tmp_path / "b", sb, x)
    assert np.array_equal(ra, rb)
    r, doc = cli(tmp_path / "a", tmp_path / "b")
    assert r.code == 0, r.err
    (leaf,) = doc["leaves"]
    if SPELLINGS[sa][0] == SPELLINGS[sb][0]:
        assert leaf["shortcut_chunks"] == 16  # every chunk of the 4x4 grid, the unstored one included


@pytest.mark.parametrize("shortcut", [True, False], ids=["shortcut", "no_shortcut"])
@pytest.mark.parametrize("data", [zeros_vs_random, one_value_in_fill_chunk])
@pytest.mark.parametrize(("sa", "sb"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_differently_spelled_keys_streaming_chunks_over_the_block_budget(tmp_path, sa, sb, data, shortcut):
    """One 64x64 chunk (16 KiB) per array and 4 KiB blocks: each chunk is streamed in slabs."""
    xa, xb = data()
    ra = write_zarr(tmp_path / "a", sa, xa, chunks=SHAPE)
    rb = write_zarr(tmp_path / "b", sb, xb, chunks=SHAPE)
    rep = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), block_bytes=4096, shortcut=shortcut)
    assert rep.exit_code == 1
    (leaf,) = rep.leaves
    assert_stats_match(leaf.stats, expected_stats(ra, rb), f"{sa} vs {sb}")


def write_ocdbt(root: Path, sep: str, data: np.ndarray) -> np.ndarray:
    """An array inside an OCDBT database at opt/mu, written and read back by tensorstore."""
    spec = {
        "driver": "zarr",
        "kvstore": {"driver": "ocdbt", "base": f"file://{root}", "path": "opt/mu/"},
        "metadata": {
            "shape": list(data.shape), "chunks": list(CHUNKS), "dtype": "<f4", "fill_value": 0,
            "dimension_separator": sep,
        },
    }  # fmt: skip
    t = ts.open(spec, create=True).result()
    t[...] = data
    return ts.open(spec, open=True).result().read().result()


@pytest.mark.parametrize("data", [zeros_vs_random, one_value_in_fill_chunk])
@pytest.mark.parametrize("shortcut", [True, False], ids=["shortcut", "no_shortcut"])
@pytest.mark.parametrize(("sa", "sb"), [(".", "/"), ("/", ".")])
def test_ocdbt_arrays_with_differently_spelled_keys_exit_1(tmp_path, sa, sb, shortcut, data):
    """OCDBT: stored sizes come from the B-tree, looked up per side under that side's keys."""
    xa, xb = data()
    ra = write_ocdbt(tmp_path / "a", sa, xa)
    rb = write_ocdbt(tmp_path / "b", sb, xb)
    r, doc = cli(tmp_path / "a", tmp_path / "b", *(() if shortcut else ("--no-shortcut",)))
    assert r.code == 1, r.err
    (leaf,) = doc["leaves"]
    assert leaf["path"] == "opt/mu"
    assert_stats_match(leaf, expected_stats(ra, rb), f"ocdbt {sa} vs {sb}")


def test_ocdbt_arrays_with_differently_spelled_keys_equal_data_settled_by_the_shortcut(tmp_path):
    x, _ = one_value_in_fill_chunk()
    write_ocdbt(tmp_path / "a", ".", x)
    write_ocdbt(tmp_path / "b", "/", x)
    r, doc = cli(tmp_path / "a", tmp_path / "b")
    assert r.code == 0, r.err
    assert doc["leaves"][0]["shortcut_chunks"] == 16


def write_strings(path: Path, values: list[str], legacy: bool) -> list:
    """A 2x2 string array in zarr v2 nested keys ('0/0'); `legacy` then drops dimension_separator
    from .zarray (NestedDirectoryStore). Returns the values as zarr-python reads them back before."""
    z = zarr.create_array(
        store=str(path), shape=(2, 2), chunks=(1, 2), dtype=str, zarr_format=2,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )  # fmt: skip
    z[...] = np.array(values, dtype=object).reshape(2, 2)
    back = zarr.open_array(str(path), mode="r")[...].tolist()
    if legacy:
        doc = json.loads((path / ".zarray").read_text())
        del doc["dimension_separator"]
        (path / ".zarray").write_text(json.dumps(doc))
    return back


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy_nested", "nested"])
def test_string_arrays_under_nested_keys_are_read_not_taken_as_fill(tmp_path, legacy):
    """String arrays are decoded by zarr-python: under legacy nested keys it found no '0.0' chunk and
    read both sides as fill value, so two different arrays compared equal."""
    va = write_strings(tmp_path / "a", ["x", "y", "z", "w"], legacy)
    vb = write_strings(tmp_path / "b", ["p", "q", "r", "s"], legacy)
    write_strings(tmp_path / "same", ["x", "y", "z", "w"], legacy)
    assert va != vb
    r, doc = cli(tmp_path / "a", tmp_path / "b")
    assert r.code == 1, r.err
    (leaf,) = doc["leaves"]
    assert leaf["status"] == "different"
    r, doc = cli(tmp_path / "a", tmp_path / "same")
    assert r.code == 0, r.err
