"""What a plain Zarr / n5 reader meets and does not interpret is never an exit 0.

Stores are written by zarr-python, tensorstore, numpy and orbax; then the one thing under test
(a legacy key layout, a stray file or folder, a metadata file of the wrong JSON shape, a child named
like a synthetic leaf) is made the way a writer or a user would make it.
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
from conftest import run_cli
from helpers import one_error_line


def diff(a, b, *extra):
    return run_cli(a, b, "--json", "-", "-q", *extra)


def statuses(r) -> dict[str, str]:
    return {x["path"]: x["status"] for x in r.json["leaves"]}


def leaf(r, path: str) -> dict:
    return next(x for x in r.json["leaves"] if x["path"] == path)


# ---------------------------------------------------------------- 1. non-numeric arrays and chunk keys


def write_legacy_nested_strings(path: Path, values: list[str]) -> list[str]:
    """A vlen-str v2 array with '0/0' keys and no `dimension_separator` in .zarray: the layout of
    zarr-python 2's NestedDirectoryStore. Returns what zarr-python reads back before the field is removed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z = zarr.create_array(
            store=str(path),
            shape=(2, 2),
            chunks=(1, 2),
            dtype=str,
            zarr_format=2,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        z[...] = np.array(values, dtype=object).reshape(2, 2)
        stored = zarr.open_array(str(path), mode="r")[...].ravel().tolist()
    doc = json.loads((path / ".zarray").read_text())
    del doc["dimension_separator"]
    (path / ".zarray").write_text(json.dumps(doc))
    return stored


def test_legacy_nested_string_arrays_are_read_through_their_keys_and_differ(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert write_legacy_nested_strings(a, list("xyzw")) == list("xyzw")
    assert write_legacy_nested_strings(b, list("pqrs")) == list("pqrs")
    assert (a / "0" / "0").is_file()  # the keys really are nested
    r = diff(a, b)
    assert r.code == 1, r.err
    assert statuses(r) == {"": "different"}
    r = diff(a, a)
    assert r.code == 0 and statuses(r) == {"": "equal"}, r.err


def test_string_array_key_outside_the_chunk_grid_is_not_compared(tmp_path):
    a = tmp_path / "a"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z = zarr.create_array(store=str(a), shape=(4,), chunks=(2,), dtype=str, zarr_format=2)
        z[...] = ["a", "b", "c", "d"]
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.copy(b / "0", b / "7")  # a chunk no reader would look at
    r = diff(a, b)
    assert r.code == 2, r.err
    assert statuses(r) == {"": "not_compared"}
    assert "7" in leaf(r, "")["message"] and "fill value" in leaf(r, "")["message"]


# ---------------------------------------------------------------- 2./3. stray files and folders


def write_folder_with_strays(root: Path, value: float) -> Path:
    """A zarr array beside a numpy file and a whole Orbax checkpoint: only the array is zarr."""
    from writers import orbax

    root.mkdir()
    zarr.create_array(store=str(root / "arr"), data=np.ones(3, "f4"), zarr_format=2)
    np.save(root / "weights.npy", np.full(3, value, "f4"))
    orbax(root, {"w": np.full(3, value, np.float32)})  # the folder `orbax`
    return root


def test_files_beside_a_zarr_array_are_not_compared_leaves_one_per_folder(tmp_path):
    a = write_folder_with_strays(tmp_path / "a", 1.0)
    b = write_folder_with_strays(tmp_path / "b", 2.0)
    assert np.load(a / "weights.npy")[0] != np.load(b / "weights.npy")[0]
    n_ock = sum(len(files) for _, _, files in os.walk(a / "orbax"))
    assert n_ock > 3
    for x, y in ((a, b), (a, a)):  # identical strays are still not compared: exit 2 either way
        r = diff(x, y)
        assert r.code == 2, r.err
        assert statuses(r) == {"arr": "equal", "weights.npy": "not_compared", "orbax": "not_compared"}
        assert f"{n_ock} file(s)" in leaf(r, "orbax")["message"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_folder_without_zarr_metadata_inside_a_group_is_not_compared(tmp_path, zarr_format):
    def write(p: Path, byte: int) -> Path:
        g = zarr.open_group(str(p), mode="w", zarr_format=zarr_format)
        g.create_array("w", data=np.ones((3,), "f4"))
        (p / "sub").mkdir()
        (p / "sub" / "blob.bin").write_bytes(bytes([byte]) * 10)
        (p / "notes.txt").write_text(str(byte))
        return p

    a, b = write(tmp_path / "a", 1), write(tmp_path / "b", 2)
    r = diff(a, b)
    assert r.code == 2, r.err
    assert statuses(r) == {"w": "equal", "sub": "not_compared", "notes.txt": "not_compared"}
    assert "sub/blob.bin" in leaf(r, "sub")["message"]


# ---------------------------------------------------------------- 4. metadata of the wrong JSON shape


def write_zarr3_group(p: Path) -> Path:
    g = zarr.open_group(str(p), mode="w", zarr_format=3)
    g.create_array("w", data=np.arange(4, dtype="f4"))
    return p


def write_zarr2_group(p: Path) -> Path:
    g = zarr.open_group(str(p), mode="w", zarr_format=2)
    g.attrs["k"] = 1
    g.create_array("w", data=np.arange(4, dtype="f4"))
    return p


def write_n5_array(p: Path) -> Path:
    spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(p / "w") + "/"}}
    spec["metadata"] = {"dimensions": [4], "blockSize": [2], "compression": {"type": "raw"}}
    ts.open(spec, dtype="float32", create=True).result().write(np.arange(4, dtype="f4")).result()
    return p


def replace_json(p: Path, change) -> None:
    p.write_text(json.dumps(change(json.loads(p.read_text()))))


WRONG_SHAPES = {
    "zarr_json_string": (write_zarr3_group, "w/zarr.json", lambda d: "hello", " is a JSON string"),
    "zattrs_list": (write_zarr2_group, ".zattrs", lambda d: [1], " is a JSON array"),
    "zarr_json_attributes_list": (write_zarr3_group, "zarr.json", lambda d: dict(d, attributes=[1, 2]), ": attributes"),
    "n5_attributes_list": (write_n5_array, "w/attributes.json", lambda d: [1, 2], " is a JSON array"),
    "n5_compression_string": (write_n5_array, "w/attributes.json", lambda d: dict(d, compression="raw"), ": compr"),
}


@pytest.mark.parametrize("case", sorted(WRONG_SHAPES))
def test_metadata_json_of_the_wrong_shape_is_one_error_line_naming_the_file(tmp_path, case):
    write, name, change, words = WRONG_SHAPES[case]
    a = write(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    replace_json(b / name, change)
    r = diff(a, a)
    assert r.code == 0, r.err  # the store as its writer left it reads
    r = diff(a, b)
    assert r.code == 2
    one_error_line(r)
    assert f"{b}/{name}{words}" in r.err


# ---------------------------------------------------------------- 5. children named like synthetic leaves


def write_group_with_attrs_child(p: Path, x: int) -> Path:
    g = zarr.open_group(str(p), mode="w", zarr_format=2)
    g.attrs["x"] = x
    g.create_group(".attrs").create_array("x", data=np.ones(2, "f4"))
    return p


def test_child_named_attrs_does_not_hide_the_group_attributes(tmp_path):
    a = write_group_with_attrs_child(tmp_path / "a", 1)
    b = write_group_with_attrs_child(tmp_path / "b", 2)
    assert zarr.open_group(str(a), mode="r").attrs["x"] != zarr.open_group(str(b), mode="r").attrs["x"]
    r = diff(a, b)
    assert r.code == 2, r.err
    assert statuses(r) == {".attrs": "error"}
    assert "collides" in leaf(r, ".attrs")["message"]


def test_child_named_dimension_names_does_not_hide_them(tmp_path):
    def write(p: Path, dim: str) -> Path:
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(p) + "/"}}
        md = {"shape": [2], "data_type": "float32", "dimension_names": [dim]}
        ts.open(dict(spec, metadata=md), create=True).result().write(np.ones(2, "f4")).result()
        child = dict(spec, kvstore={"driver": "file", "path": str(p / ".dimension_names") + "/"})
        ts.open(dict(child, metadata={"shape": [1], "data_type": "float32"}), create=True).result().write(
            np.zeros(1, "f4")
        ).result()
        return p

    a, b = write(tmp_path / "a", "x"), write(tmp_path / "b", "y")
    r = diff(a, b)
    assert r.code == 2, r.err
    assert statuses(r) == {"": "equal", ".dimension_names": "error"}


# ---------------------------------------------------------------- chunk keys spelled differently on each side


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_separator_differing_between_sides_never_settles_missing_chunks_as_fill(tmp_path, zarr_format):
    """A's chunk (0, 0) is all fill value and not stored; B stores it under '0/0' where A would say
    '0.0'. Looking up A's key spelling in B found nothing on both sides: 'identical'."""
    from reference import assert_stats_match, expected_stats

    def write(p: Path, sep: str, data: np.ndarray) -> Path:
        name = "v2" if zarr_format == 2 else "default"
        z = zarr.create_array(
            store=str(p),
            shape=(4, 4),
            chunks=(2, 2),
            dtype="f4",
            fill_value=0,
            zarr_format=zarr_format,
            chunk_key_encoding={"name": name, "separator": sep},
        )
        z[...] = data
        return p

    x = np.zeros((4, 4), "f4")
    x[2:, 2:] = 1
    y = x.copy()
    y[0, 0] = 42
    a, b = write(tmp_path / "a", ".", x), write(tmp_path / "b", "/", y)
    xa, yb = (zarr.open_array(str(p), mode="r")[...] for p in (a, b))
    assert xa[0, 0] == 0 and yb[0, 0] == 42
    r = diff(a, b)
    assert r.code == 1, r.err
    assert statuses(r) == {"": "different"}
    assert_stats_match(leaf(r, ""), expected_stats(xa, yb), "")
    assert diff(a, write(tmp_path / "c", "/", x)).code == 0  # same values, other spelling: equal
