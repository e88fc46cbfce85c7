"""Plain Zarr v2/v3 and n5 stores, written by their real writers, read as hierarchies.

Every store is diffed against itself (exit 0), against a copy with one value changed by the
writer's own library (exit 1, that leaf, numbers equal to numpy on arrays read back by that
library) and against a copy with one attribute changed (exit 1, the attribute's leaf).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr
from conftest import DATA, run_cli
from numcodecs import GZip, Zstd
from reference import assert_stats_match, expected_stats
from zarr.codecs import BloscCodec, GzipCodec, TransposeCodec

import streamdiff

ZARR_PYTHON = DATA / "zarr_python"
KERNEL = np.arange(24, dtype=np.float32).reshape(4, 6) - 7.5
BIAS = np.array([0, 0, 3, 4, 0, 0], dtype=np.int32)  # its first chunk is all fill value: not stored


def diff(a, b, *extra):
    return run_cli(a, b, "--json", "-", "-q", *extra)


def leaf(r, path: str) -> dict:
    return next(x for x in r.json["leaves"] if x["path"] == path)


def not_equal(r) -> list[str]:
    return [x["path"] for x in r.json["leaves"] if x["status"] != "equal"]


def check_value_change(a: Path, b: Path, path: str, read) -> None:
    """exit 1, only `path` differs, and its numbers are numpy's on the arrays `read` returns."""
    r = diff(a, b)
    assert r.code == 1, r.err
    assert not_equal(r) == [path]
    assert_stats_match(leaf(r, path), expected_stats(read(a), read(b)), path)


ZARR_VARIANTS = {
    "v2_default": (2, {}),
    "v2_gzip": (2, {"compressors": GZip(level=5)}),
    "v2_zstd": (2, {"compressors": Zstd(level=3)}),
    "v2_nested_keys": (2, {"chunk_key_encoding": {"name": "v2", "separator": "/"}}),
    "v2_F_order": (2, {"order": "F"}),
    "v3_default": (3, {}),
    "v3_gzip": (3, {"compressors": GzipCodec(level=5)}),
    "v3_blosc": (3, {"compressors": BloscCodec(cname="zstd")}),
    "v3_sharded": (3, {"shards": (4, 6)}),
    "v3_v2_keys": (3, {"chunk_key_encoding": {"name": "v2", "separator": "."}}),
    "v3_transposed": (3, {"filters": [TransposeCodec(order=(1, 0))]}),
}


def write_zarr_group(path: Path, zarr_format: int, kw: dict) -> Path:
    """A nested group like a model: root attrs, model/layer_0/{kernel, bias}, kernel attrs."""
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    root.attrs["framework"] = "test"
    layer = root.create_group("model").create_group("layer_0")
    k = layer.create_array("kernel", shape=KERNEL.shape, chunks=(2, 3), dtype="float32", fill_value=0, **kw)
    k[...] = KERNEL
    k.attrs["units"] = 6
    one_d = {k: v for k, v in kw.items() if k not in ("shards", "filters")}  # 2-d settings
    b = layer.create_array("bias", shape=BIAS.shape, chunks=(2,), dtype="int32", fill_value=0, **one_d)
    b[...] = BIAS
    return path


@pytest.mark.parametrize("variant", sorted(ZARR_VARIANTS))
def test_zarr_python_group_self_value_and_attribute(tmp_path, variant):
    fmt, kw = ZARR_VARIANTS[variant]
    a = write_zarr_group(tmp_path / "a.zarr", fmt, kw)
    assert not (a / "model/layer_0/bias" / ("c/0" if fmt == 3 and "chunk_key_encoding" not in kw else "0")).exists()
    same = diff(a, a)
    assert same.code == 0 and same.json["identical"], same.err
    assert {x["path"] for x in same.json["leaves"]} == {
        ".attrs/framework",
        "model/layer_0/kernel",
        "model/layer_0/kernel/.attrs/units",
        "model/layer_0/bias",
    }
    b = tmp_path / "b.zarr"
    shutil.copytree(a, b)
    zarr.open_array(str(b / "model/layer_0/kernel"), mode="r+")[3, 4] = 1000.0
    zarr.open_array(str(b / "model/layer_0/bias"), mode="r+")[1] = -2  # a chunk that was not stored
    r = diff(a, b)
    assert r.code == 1 and not_equal(r) == ["model/layer_0/bias", "model/layer_0/kernel"], r.err
    for path in ("model/layer_0/kernel", "model/layer_0/bias"):
        x, y = (zarr.open_array(str(p / path), mode="r")[...] for p in (a, b))
        assert_stats_match(leaf(r, path), expected_stats(x, y), path)
    c = tmp_path / "c.zarr"
    shutil.copytree(a, c)
    zarr.open_array(str(c / "model/layer_0/kernel"), mode="r+").attrs["units"] = 7
    r = diff(a, c)
    assert r.code == 1 and not_equal(r) == ["model/layer_0/kernel/.attrs/units"]
    assert "6 vs 7" in leaf(r, "model/layer_0/kernel/.attrs/units")["message"]


def test_zarr_python_single_array_is_one_leaf_at_the_root(tmp_path):
    a = write_zarr_group(tmp_path / "a.zarr", 3, {}) / "model/layer_0/kernel"
    b = write_zarr_group(tmp_path / "b.zarr", 3, {}) / "model/layer_0/kernel"
    zarr.open_array(str(b), mode="r+")[0, 0] = 5.0
    check_value_change(a, b, "", lambda p: zarr.open_array(str(p), mode="r")[...])


def test_zarr_python_key_layout_fixtures_are_equal_and_read_as_zarr_python_does(tmp_path):
    """zarr-python's own fixtures: flat '0.0', nested '0/0', and the legacy spellings."""
    for name in ("nested", "flat_legacy", "nested_legacy"):
        r = diff(ZARR_PYTHON / "flat", ZARR_PYTHON / name)
        assert r.code == 0 and r.json["identical"], (name, r.err)
    b = tmp_path / "nested"
    shutil.copytree(ZARR_PYTHON / "nested", b)
    zarr.open_array(str(b), mode="r+")[1, 0] = 30
    check_value_change(ZARR_PYTHON / "flat", b, "", lambda p: zarr.open_array(str(p), mode="r")[...])


def test_stored_key_outside_the_chunk_grid_is_not_compared_never_read_as_fill(tmp_path):
    b = tmp_path / "flat"
    shutil.copytree(ZARR_PYTHON / "flat", b)
    shutil.copy(b / "0.0", b / "0.7")  # a chunk no reader would look at
    r = diff(ZARR_PYTHON / "flat", b)
    assert r.code == 2 and leaf(r, "")["status"] == "not_compared"
    assert "0.7" in leaf(r, "")["message"]


def write_strings(path: Path, names: list[str], zarr_format: int = 2) -> Path:
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.create_array("names", shape=(len(names),), chunks=(2,), dtype=str)[...] = names
    root.create_array("x", shape=(2,), dtype="f4")[...] = [1, 2]
    return path


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_string_arrays_are_compared_as_json_values(tmp_path, zarr_format):
    a = write_strings(tmp_path / "a", ["ab", "c", "d"], zarr_format)
    b = write_strings(tmp_path / "b", ["ab", "c", "e"], zarr_format)
    r = diff(a, a)
    assert r.code == 0 and leaf(r, "names")["kind"] == "json", r.err
    r = diff(a, b)
    assert r.code == 1 and not_equal(r) == ["names"]
    assert zarr.open_array(str(b / "names"), mode="r")[2] == "e"  # the writer stored the change


def test_string_array_over_the_size_limit_is_not_compared_rather_than_skipped(tmp_path, monkeypatch):
    from streamdiff.reader.formats import zarr as reader

    monkeypatch.setattr(reader, "SMALL_VALUES_MAX_ELEMENTS", 2)
    a = write_strings(tmp_path / "a", ["ab", "c", "d"])
    r = diff(a, a)
    assert r.code == 2 and leaf(r, "names")["status"] == "not_compared"
    assert "over 2 elements" in leaf(r, "names")["message"]


def test_zarr_groups_named_like_steps_are_not_steps(tmp_path):
    """Children `0` and `layer_0` once sent the reader to look for checkpoint steps; a v3 root
    group's zarr.json once crashed layout detection."""
    for fmt in (2, 3):
        a = zarr.open_group(str(tmp_path / f"a{fmt}"), mode="w", zarr_format=fmt)
        for name in ("0", "layer_0"):
            a.create_array(name, shape=(3,), dtype="f4")[...] = [1, 2, 3]
        r = diff(tmp_path / f"a{fmt}", tmp_path / f"a{fmt}")
        assert r.code == 0 and {x["path"] for x in r.json["leaves"]} == {"0", "layer_0"}, r.err


# ------------------------------------------------------------------------------------- xarray


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_xarray_dataset_coordinates_are_arrays_and_attributes_json(tmp_path, zarr_format):
    import xarray as xr

    def write(path, lat0=10.0, title="run", station="s5"):
        ds = xr.Dataset(
            {"temp": (("lat", "lon"), KERNEL.astype(np.float64))},
            coords={
                "lat": np.array([lat0, 20.0, 30.0, 40.0]),
                "lon": np.arange(6, dtype=np.int64),
                "station": ("lon", [f"s{i}" for i in range(5)] + [station]),  # strings: a json leaf
            },
            attrs={"title": title},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.to_zarr(str(path), mode="w", zarr_format=zarr_format, consolidated=True)
        return path

    a = write(tmp_path / "a.zarr")
    r = diff(a, a)
    assert r.code == 0, r.err
    paths = {x["path"] for x in r.json["leaves"]}
    assert {"temp", "lat", "lon", "station", ".attrs/title"} <= paths
    assert leaf(r, "station")["kind"] == "json"
    b = write(tmp_path / "b.zarr", lat0=11.5)
    check_value_change(a, b, "lat", lambda p: xr.open_zarr(str(p))["lat"].values)
    r = diff(a, write(tmp_path / "c.zarr", title="other"))
    assert r.code == 1 and not_equal(r) == [".attrs/title"]
    r = diff(a, write(tmp_path / "d.zarr", station="x"))
    assert r.code == 1 and not_equal(r) == ["station"]


# ----------------------------------------------------------------------- fill-value chunks


def write_tensorstore(path: Path, values: np.ndarray, store_fill_chunks: bool, driver: str = "zarr") -> Path:
    if driver == "n5":
        md = {"dimensions": list(values.shape), "blockSize": [2, 2], "compression": {"type": "gzip"}}
    else:
        md = {"shape": list(values.shape), "chunks": [2, 2], "compressor": {"id": "zstd", "level": 1}}
        md.update(dtype="<f4", fill_value=0)  # with a fill value, chunks equal to it are not stored
    spec = {
        "driver": driver,
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        "metadata": md,
        "store_data_equal_to_fill_value": store_fill_chunks,
    }
    t = ts.open(spec, dtype="float32", create=True, delete_existing=True).result()
    t.write(values).result()
    return path


def read_tensorstore(path: Path, driver: str = "zarr") -> np.ndarray:
    return ts.open({"driver": driver, "kvstore": {"driver": "file", "path": str(path) + "/"}}).result().read().result()


VALUES = np.arange(16, dtype=np.float32).reshape(4, 4) + 1
VALUES[:2, :2] = 0  # chunk (0, 0) equals the fill value


@pytest.mark.parametrize("block_bytes", [None, 8])  # 8: every chunk over the block budget, stream-decoded
@pytest.mark.parametrize("shortcut", [True, False])
def test_missing_fill_chunk_equals_stored_fill_chunk(tmp_path, block_bytes, shortcut):
    a = write_tensorstore(tmp_path / "skipped", VALUES, store_fill_chunks=False)
    b = write_tensorstore(tmp_path / "stored", VALUES, store_fill_chunks=True)
    assert not (a / "0.0").exists() and (b / "0.0").exists()
    for x, y in ((a, b), (b, a), (a, a)):
        r = streamdiff.diff(str(x), str(y), block_bytes=block_bytes, shortcut=shortcut)
        assert r.exit_code == 0, r.leaves
        if block_bytes:
            assert r.leaves[0].stats.streamed


@pytest.mark.parametrize("block_bytes", [None, 8])
def test_missing_fill_chunk_against_stored_values_differs_by_numpy_numbers(tmp_path, block_bytes):
    changed = VALUES.copy()
    changed[0, 1] = 2.5
    a = write_tensorstore(tmp_path / "skipped", VALUES, store_fill_chunks=False)
    b = write_tensorstore(tmp_path / "changed", changed, store_fill_chunks=False)
    for x, y in ((a, b), (b, a)):
        r = streamdiff.diff(str(x), str(y), block_bytes=block_bytes)
        assert r.exit_code == 1
        got = r.leaves[0].stats
        assert_stats_match(got, expected_stats(read_tensorstore(x), read_tensorstore(y)))


# ------------------------------------------------------------------------------------------ n5


def test_n5_store_self_value_and_attribute(tmp_path):
    a = write_tensorstore(tmp_path / "a.n5", VALUES, False, "n5")
    b = write_tensorstore(tmp_path / "b.n5", VALUES * 2, False, "n5")
    r = diff(a, a)
    assert r.code == 0 and [x["path"] for x in r.json["leaves"]] == [""], r.err
    check_value_change(a, b, "", lambda p: read_tensorstore(p, "n5"))
    c = tmp_path / "c.n5"
    shutil.copytree(a, c)
    attrs = json.loads((c / "attributes.json").read_text())
    (c / "attributes.json").write_text(json.dumps(dict(attrs, resolution=[4, 4])))  # n5 user attributes live here
    r = diff(a, c)
    assert r.code == 1 and not_equal(r) == [".attrs/resolution"]


def test_n5_arrays_inside_ocdbt_are_read(tmp_path):
    """Issue 9 'Found' 3: two OCDBT databases of n5 arrays (1.0 vs 2.0) were 'identical: 0 leaves'."""

    def write(path: Path, value: float) -> Path:
        kv = {"driver": "ocdbt", "base": f"file://{path}"}
        spec = {"driver": "n5", "kvstore": dict(kv, path="weights/"), "metadata": {"dimensions": [3, 4]}}
        ts.open(spec, dtype="float32", create=True).result().write(np.full((3, 4), value, np.float32)).result()
        return path

    a, b = write(tmp_path / "a", 1.0), write(tmp_path / "b", 2.0)
    assert (a / "manifest.ocdbt").exists()
    assert diff(a, a).code == 0
    r = diff(a, b)
    assert r.code == 1 and not_equal(r) == ["weights"]
    assert leaf(r, "weights")["max_abs_diff"] == 1.0 and leaf(r, "weights")["mismatches"] == 12


# ------------------------------------------------------------------------ array_serialization


def test_jax_array_serialization_folder_of_arrays(tmp_path):
    from writers import array_serialization

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = array_serialization(tmp_path / "a", {"params.w": KERNEL, "step": np.array(3, np.int32)})
    changed = np.where(KERNEL > 5, KERNEL, 0)
    b = array_serialization(tmp_path / "b", {"params.w": changed, "step": np.array(3, np.int32)})
    r = diff(a, a)
    assert r.code == 0 and {x["path"] for x in r.json["leaves"]} == {"params.w", "step"}, r.err
    check_value_change(a, b, "params.w", lambda p: zarr.open_array(str(p / "params.w"), mode="r")[...])


# ------------------------------------------------------------------------------- edges


def test_unreadable_zarr_json_is_an_error_leaf_exit_2(tmp_path):
    a = write_zarr_group(tmp_path / "a.zarr", 3, {})
    b = tmp_path / "b.zarr"
    shutil.copytree(a, b)
    (b / "model/layer_0/kernel/zarr.json").write_text("{not json")
    r = diff(a, b)
    assert r.code == 2 and leaf(r, "model/layer_0/kernel")["status"] == "error"
    assert "unreadable JSON" in leaf(r, "model/layer_0/kernel")["message"]


def test_orbax_checkpoint_and_zarr_store_of_the_same_arrays_are_identical(tmp_path):
    from writers import orbax, zarr_v2

    arrays = {"model/layer_0/kernel": KERNEL, "model/layer_0/bias": BIAS}
    (tmp_path / "o").mkdir()
    (tmp_path / "z").mkdir()
    r = diff(orbax(tmp_path / "o", arrays), zarr_v2(tmp_path / "z", arrays))
    assert r.code == 0 and r.json["identical"], r.err


def test_chunks_stored_on_neither_side_are_settled_only_when_fill_values_agree(tmp_path):
    """Two sparse stores: chunks missing on both sides are equal without reading when the fill
    values are equal, and hold different values (exit 1, numpy's numbers) when they are not."""

    def write(path: Path, fill: float) -> Path:
        root = zarr.open_group(str(path), mode="w", zarr_format=2)
        a = root.create_array("w", shape=(8, 8), chunks=(2, 2), dtype="f4", fill_value=fill)
        a[:2, :2] = 5.0  # one chunk stored of 16
        return path

    a, same, other = write(tmp_path / "a", 0.0), write(tmp_path / "same", 0.0), write(tmp_path / "other", 1.0)
    assert len([f for f in (a / "w").iterdir() if not f.name.startswith(".")]) == 1
    r = streamdiff.diff(str(a), str(same))
    assert r.exit_code == 0 and r.leaves[0].stats.shortcut_chunks == 16
    r = diff(a, other)
    assert r.code == 1 and not_equal(r) == ["w"]
    x, y = (zarr.open_array(str(p / "w"), mode="r")[...] for p in (a, other))
    assert_stats_match(leaf(r, "w"), expected_stats(x, y))


@pytest.mark.parametrize("driver", ["zarr", "zarr3"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "int4"])
def test_ml_dtypes_zarr_python_cannot_parse_are_read(tmp_path, driver, dtype):
    """tensorstore writes ml_dtypes zarr-python has no name for; the metadata is still validated."""
    values = (np.arange(12).reshape(3, 4) % 7 - 3).astype(dtype)

    def write(path: Path, v: np.ndarray) -> Path:
        chunks = {"chunks": [2, 2]} if driver == "zarr" else {"chunk_grid": _grid([2, 2])}
        md = {"shape": [3, 4], **chunks}
        spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(path) + "/"}, "metadata": md}
        ts.open(spec, dtype=dtype, create=True).result().write(v).result()
        return path

    changed = values.copy()
    changed[2, 3] = -2
    a, b = write(tmp_path / "a", values), write(tmp_path / "b", changed)
    r = diff(a, a)
    assert r.code == 0 and leaf(r, "")["dtype"] == dtype, r.err

    def read(p: Path) -> np.ndarray:
        return ts.open({"driver": driver, "kvstore": {"driver": "file", "path": f"{p}/"}}).result().read().result()

    check_value_change(a, b, "", read)


def _grid(chunk_shape: list[int]) -> dict:
    return {"name": "regular", "configuration": {"chunk_shape": chunk_shape}}


def test_parsed_metadata_facts_match_what_zarr_python_wrote(tmp_path):
    from streamdiff.reader.formats.zarr import parse_array

    root = zarr.open_group(str(tmp_path / "z"), mode="w", zarr_format=3)
    root.create_array("s", shape=(8, 6), chunks=(2, 3), shards=(4, 6), dtype="f4", compressors=GzipCodec(level=2))
    doc = json.loads((tmp_path / "z/s/zarr.json").read_text())
    arr = parse_array("zarr.json", doc)
    assert (arr.shape, arr.chunk_shape, arr.read_chunk_shape) == ((8, 6), (4, 6), (2, 3))
    assert arr.codec == "shard[gzip(level=2)]" and arr.key_encoding.spelled == "c/a/b" and arr.dtype == "float32"
    v2 = zarr.open_group(str(tmp_path / "v2"), mode="w", zarr_format=2)
    v2.create_array("n", shape=(5,), chunks=(2,), dtype="<i2", chunk_key_encoding={"name": "v2", "separator": "/"})
    arr = parse_array(".zarray", json.loads((tmp_path / "v2/n/.zarray").read_text()))
    assert (arr.chunk_shape, arr.read_chunk_shape, arr.key_encoding.spelled, arr.dtype) == ((2,), (2,), "a/b", "int16")
    assert arr.is_chunk_key("2") and not arr.is_chunk_key("3") and not arr.is_chunk_key("0.0")


def _write_empty(path: Path, writer: str, fill: float) -> np.ndarray:
    """A float32 array of shape (0, 3) written by `writer`; returned as that writer reads it back."""
    if writer == "tensorstore_zarr3":
        spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {"shape": [0, 3], "data_type": "float32", "fill_value": fill},
        }
        ts.open(spec, create=True).result()
        return ts.open(spec, open=True).result().read().result()
    fmt = 2 if writer == "zarr_python_v2" else 3
    zarr.create_array(store=str(path), shape=(0, 3), chunks=(4, 3), dtype="f4", fill_value=fill, zarr_format=fmt)
    return zarr.open_array(str(path), mode="r")[...]


@pytest.mark.parametrize("block_bytes", [None, 4])  # 4: the declared chunk is over the block budget
@pytest.mark.parametrize("writer", ["zarr_python_v2", "zarr_python_v3", "tensorstore_zarr3"])
def test_zero_size_arrays_compare_equal_with_count_0(tmp_path, writer, block_bytes):
    """Nothing stored, nothing to differ: equal (fill values are not values), count 0, no crash."""
    ra = _write_empty(tmp_path / "a", writer, 1.0)
    rb = _write_empty(tmp_path / "b", writer, 2.0)
    assert ra.shape == rb.shape == (0, 3)
    rep = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), block_bytes=block_bytes)
    assert rep.exit_code == 0
    (res,) = rep.leaves
    assert res.status == "equal"
    assert_stats_match(res.stats, expected_stats(ra, rb))
    assert res.stats.count == 0


def test_zero_size_array_against_a_non_empty_one_is_a_shape_mismatch(tmp_path):
    _write_empty(tmp_path / "a", "zarr_python_v3", 0.0)
    zarr.create_array(store=str(tmp_path / "b"), data=np.ones((2, 3), np.float32))
    r = diff(tmp_path / "a", tmp_path / "b")
    assert r.code == 1, r.err
    assert [x["status"] for x in r.json["leaves"]] == ["shape_mismatch"]


WIDE_INTS = {
    "int64_above_2**53": (np.int64, [2**62, 5], [2**62 + 1, 5]),
    "uint64_top": (np.uint64, [2**64 - 1, 3], [2**64 - 2, 3]),
    "int64_min_vs_max": (np.int64, [-(2**63), 7, 2**63 - 1], [2**63 - 1, 7, -(2**63)]),
}


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("case", sorted(WIDE_INTS))
def test_64_bit_integer_differences_are_exact(tmp_path, case, zarr_format):
    """|a-b| of int64/uint64 is the true difference (float64 upcasts would make 2**62 + 1 - 2**62
    zero): numbers equal numpy's on the arrays zarr-python reads back."""
    dt, xa, xb = WIDE_INTS[case]
    for name, x in (("a", xa), ("b", xb)):
        zarr.create_array(store=str(tmp_path / name), data=np.array(x, dt), zarr_format=zarr_format)
    ra, rb = (zarr.open_array(str(tmp_path / n), mode="r")[...] for n in "ab")
    r = diff(tmp_path / "a", tmp_path / "b")
    assert r.code == 1, r.err
    got = leaf(r, "")
    exp = expected_stats(ra, rb)
    assert_stats_match(got, exp, case)
    if case == "int64_above_2**53":  # the numbers spelled out, independently of the oracle
        assert (got["mismatches"], got["max_abs_diff"], got["max_abs_diff_index"]) == (1, 1.0, [0])
        assert got["max_abs_diff_values"] == [2**62, 2**62 + 1]
        assert got["rms_diff"] == pytest.approx(np.sqrt(0.5), rel=1e-15)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_store_of_string_arrays_is_read_once_every_stored_byte_once(tmp_path, zarr_format):
    """Metadata documents parsed with the listing are what zarr-python decodes the strings with: a
    side's bytes read are its stored bytes, no file read twice."""
    a = tmp_path / "a"
    root = zarr.open_group(str(a), mode="w", zarr_format=zarr_format, attributes={"note": "kept"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.create_array("names", shape=(5,), chunks=(2,), dtype=str, attributes={"unit": "n/a"})[...] = list("abcde")
    stored = sum(f.stat().st_size for f in a.rglob("*") if f.is_file())
    r = diff(a, a, "--structure-only")
    assert r.code == 0 and leaf(r, "names")["kind"] == "json", r.err
    assert r.json["summary"]["bytes_read"] == 2 * stored


def test_a_string_chunk_grown_to_5_gib_is_an_error_leaf_without_reading_it(tmp_path):
    a = write_strings(tmp_path / "a", ["ab", "c", "d"])
    b = write_strings(tmp_path / "b", ["ab", "c", "d"])
    chunk = next(p for p in (b / "names").iterdir() if not p.name.startswith("."))
    os.truncate(chunk, 5 << 30)
    r = diff(a, b)
    assert r.code == 2 and leaf(r, "names")["status"] == "error", r.err
    assert f"names/{chunk.name}: 5 GiB, over the 64 MiB limit" in leaf(r, "names")["message"]
    assert leaf(r, "x")["status"] == "equal"
