"""Data in an Orbax item directory that its tree (`_METADATA`, or the legacy msgpack `checkpoint`)
does not name is never an exit 0: it becomes a `not_compared` (or error) leaf named in the report.

Each checkpoint is saved by real orbax (or is a real orbax 0.3.5 / 0.5.10 checkpoint from
tests/data/legacy), then the one thing under test is added with tensorstore, flax's msgpack writer or
a JSON edit, different on the two sides. That real checkpoints still self-diff with exit 0 is checked
over every corpus variant, MaxText and legacy checkpoint by test_variants.py, test_maxtext.py and
test_legacy.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
from conftest import DATA, run_cli
from helpers import save

LEGACY = DATA / "legacy"


def diff(a, b, *extra):
    return run_cli(a, b, "--json", "-", "-q", *extra)


def leaf(r, path: str) -> dict:
    return next(x for x in r.json["leaves"] if x["path"] == path)


def orbax_save(path: Path, tree: dict, use_ocdbt: bool = True) -> Path:
    save(path, tree, use_ocdbt=use_ocdbt)
    return path


def write_zarr(kvstore: dict, value: np.ndarray) -> None:
    """A zarr v2 array written by tensorstore where `kvstore` says (a folder, or a key prefix of an
    OCDBT store), read back to prove the value is really stored."""
    spec = {"driver": "zarr", "kvstore": kvstore, "metadata": {"chunks": [2, 2]}}
    t = ts.open(spec, create=True, dtype=ts.float32, shape=value.shape).result()
    t.write(value).result()
    np.testing.assert_array_equal(ts.open(spec).result().read().result(), value)


def two_saves(tmp_path: Path, use_ocdbt: bool = True) -> tuple[Path, Path]:
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int32(4)}
    return orbax_save(tmp_path / "A", tree, use_ocdbt), orbax_save(tmp_path / "B", tree, use_ocdbt)


def self_diff_is_identical(path: Path) -> None:
    r = diff(path, path)
    assert r.code == 0 and r.json["identical"], r.err


# ---------------------------------------------------------------- (a) a folder and a file next to the arrays


@pytest.mark.parametrize("use_ocdbt", [True, False], ids=["ocdbt", "per_leaf_dirs"])
def test_extra_zarr_folder_and_file_in_item_dir_are_not_compared(tmp_path, use_ocdbt):
    a, b = two_saves(tmp_path, use_ocdbt)
    for side, fill in ((a, 1.0), (b, 2.0)):
        write_zarr({"driver": "file", "path": str(side / "c")}, np.full((4, 4), fill, np.float32))
        (side / "notes.txt").write_text(f"run {fill}\n")
    r = diff(a, b)
    assert r.code == 2, r.err
    assert leaf(r, "c")["status"] == "not_compared"
    assert "zarr array" in leaf(r, "c")["message"] and "not read" in leaf(r, "c")["message"]
    assert leaf(r, "notes.txt")["status"] == "not_compared"
    assert leaf(r, "a")["status"] == "equal" and leaf(r, "b")["status"] == "equal"


def test_extra_folder_named_like_a_leaf_beside_the_ocdbt_store_keeps_the_leaf(tmp_path):
    """A per-leaf folder `a/` beside the OCDBT store that holds `a`: the stored leaf is still
    compared, the folder is reported under a suffixed name rather than replacing it."""
    a, b = two_saves(tmp_path)
    write_zarr({"driver": "file", "path": str(b / "a")}, np.zeros((2, 3), np.float32))
    r = diff(a, b)
    assert r.code != 0, r.err
    assert leaf(r, "a")["status"] == "equal"
    assert leaf(r, "a [not in tree]")["status"] == "only_b"


def test_empty_folder_in_item_dir_holds_nothing_and_passes(tmp_path):
    """Old orbax (<= 0.4.5) could leave an empty per-leaf folder beside its OCDBT store."""
    a, _ = two_saves(tmp_path)
    (a / "a").mkdir()
    (a / "old" / "nested").mkdir(parents=True)
    self_diff_is_identical(a)


# ---------------------------------------------------------------- (b) an array inside the OCDBT store


def test_extra_array_inside_the_ocdbt_store_is_not_compared(tmp_path):
    a, b = two_saves(tmp_path)
    for side, fill in ((a, 1.0), (b, 2.0)):
        base = {"driver": "file", "path": str(side) + "/"}
        write_zarr({"driver": "ocdbt", "base": base, "path": "c/"}, np.full((4, 4), fill, np.float32))
    assert not (a / "c").exists()  # it really is inside the store
    r = diff(a, b)
    assert r.code == 2, r.err
    assert leaf(r, "c")["status"] == "not_compared"
    assert "in the OCDBT store" in leaf(r, "c")["message"]


def test_keys_outside_any_array_in_the_ocdbt_store_are_not_compared(tmp_path):
    a, b = two_saves(tmp_path)
    for side, payload in ((a, b"one"), (b, b"two")):
        kv = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": str(side) + "/"}}).result()
        kv.write("loose/0.0", payload).result()
        assert kv.read("loose/0.0").result().value == payload
    r = diff(a, b)
    assert r.code == 2, r.err
    assert leaf(r, "loose")["status"] == "not_compared"
    assert "outside any zarr array" in leaf(r, "loose")["message"]


# ---------------------------------------------------------------- (c) value_type "None" over stored data


def set_value_type(item: Path, name: str, value_type: str) -> None:
    path = item / "_METADATA"
    doc = json.loads(path.read_text())
    for entry in doc["tree_metadata"].values():
        if [k["key"] for k in entry["key_metadata"]] == [name]:
            entry["value_metadata"]["value_type"] = value_type
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("use_ocdbt", [True, False], ids=["ocdbt", "per_leaf_dirs"])
def test_value_type_none_over_stored_array_is_not_compared(tmp_path, use_ocdbt):
    a = orbax_save(tmp_path / "A", {"a": np.float32(1), "b": np.ones(3, np.float32)}, use_ocdbt)
    b = orbax_save(tmp_path / "B", {"a": np.float32(2), "b": np.ones(3, np.float32)}, use_ocdbt)
    for side in (a, b):
        set_value_type(side, "a", "None")
    r = diff(a, b)
    assert r.code == 2, r.err
    assert leaf(r, "a")["status"] == "not_compared"
    assert "value_type 'None'" in leaf(r, "a")["message"]
    assert leaf(r, "b")["status"] == "equal"


# ---------------------------------------------------------------- (d) legacy orbax 0.3.5 per-leaf folders


def test_legacy_035_extra_leaf_folder_is_not_compared(tmp_path):
    a = shutil.copytree(LEGACY / "legacy_0.3.5_default", tmp_path / "A")
    b = shutil.copytree(LEGACY / "legacy_0.3.5_default", tmp_path / "B")
    self_diff_is_identical(a)
    for side, fill in ((a, 1.0), (b, 2.0)):
        write_zarr({"driver": "file", "path": str(side / "params.extra")}, np.full((4, 4), fill, np.float32))
    r = diff(a, b)
    assert r.code == 2, r.err
    assert leaf(r, "params.extra")["status"] == "not_compared"
    assert leaf(r, "params/dense/kernel")["status"] == "equal"


# ---------------------------------------------------------------- (e) legacy 0.5.10 msgpack vs _METADATA


def rewrite_msgpack(item: Path, edit) -> None:
    from flax import serialization

    state = serialization.msgpack_restore((item / "checkpoint").read_bytes())
    edit(state)
    (item / "checkpoint").write_bytes(serialization.msgpack_serialize(state))


def test_legacy_0510_msgpack_key_missing_from_metadata_is_not_compared(tmp_path):
    a = shutil.copytree(LEGACY / "legacy_0.5.10_aggregate", tmp_path / "A")
    b = shutil.copytree(LEGACY / "legacy_0.5.10_aggregate", tmp_path / "B")
    self_diff_is_identical(a)
    rewrite_msgpack(a, lambda s: s.update(hidden=42.0))
    rewrite_msgpack(b, lambda s: s.update(hidden=43.0))
    r = diff(a, b)
    assert r.code == 2, r.err
    assert leaf(r, "hidden")["status"] == "not_compared"
    assert "not in _METADATA" in leaf(r, "hidden")["message"]


def test_legacy_0510_inline_value_where_metadata_says_array_is_an_error(tmp_path):
    a = shutil.copytree(LEGACY / "legacy_0.5.10_aggregate", tmp_path / "A")
    b = shutil.copytree(LEGACY / "legacy_0.5.10_aggregate", tmp_path / "B")

    def inline_kernel(state):
        assert str(state["params"]["dense"]["kernel"]).startswith("PLACEHOLDER://")
        state["params"]["dense"]["kernel"] = 1.0

    rewrite_msgpack(b, inline_kernel)
    r = diff(a, b)
    assert r.code == 2, r.err
    kernel = leaf(r, "params/dense/kernel")
    assert kernel["status"] == "error"
    assert "msgpack `checkpoint` file holds it inline" in kernel["message"]


def test_legacy_0510_value_where_metadata_says_empty_is_an_error(tmp_path):
    a = shutil.copytree(LEGACY / "legacy_0.3.5_ocdbt_treemeta", tmp_path / "A")
    self_diff_is_identical(a)

    def fill_none(state):
        assert state["none"] is None
        state["none"] = 5.0

    rewrite_msgpack(a, fill_none)
    r = diff(a, LEGACY / "legacy_0.3.5_ocdbt_treemeta")
    assert r.code == 2, r.err
    assert leaf(r, "none")["status"] == "error"
    assert "value_type 'None' (no data)" in leaf(r, "none")["message"]


# ---------------------------------------------------------------- names with '/' (nested folders)


def test_unnamed_array_next_to_a_slash_named_leaf_folder_is_not_compared(tmp_path):
    """`{'m/x': v}` without OCDBT is the folder `m/x/`: an array `m/y/` beside it is not in the tree."""
    tree = {"m/x": np.arange(4, dtype=np.float32)}
    a = orbax_save(tmp_path / "A", tree, use_ocdbt=False)
    b = orbax_save(tmp_path / "B", tree, use_ocdbt=False)
    assert (a / "m" / "x" / ".zarray").is_file()
    self_diff_is_identical(a)
    for side, fill in ((a, 1.0), (b, 2.0)):
        write_zarr({"driver": "file", "path": str(side / "m" / "y")}, np.full((2, 2), fill, np.float32))
    r = diff(a, b)
    assert r.code == 2, r.err
    assert leaf(r, "m")["status"] == "not_compared" and "y" in leaf(r, "m")["message"]
    assert leaf(r, "m~1x")["status"] == "equal"


# ---------------------------------------------------------------- keys inside an array the tree reads


def test_key_inside_a_read_array_that_is_not_its_chunk_is_not_compared(tmp_path):
    a, b = two_saves(tmp_path)
    for side, payload in ((a, b"one"), (b, b"two")):
        kv = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": str(side) + "/"}}).result()
        assert "a/0.0" in [k.decode() for k in kv.list().result()]  # the array's one real chunk
        kv.write("a/9.9", payload).result()  # outside its 1x1 chunk grid
    r = diff(a, b)
    assert r.code == 2, r.err
    assert leaf(r, "a")["status"] == "equal"  # the array itself is still compared
    extra = leaf(r, "a [not in tree]")
    assert extra["status"] == "not_compared" and "9.9" in extra["message"]


def test_array_named_below_another_array_self_diffs_identical(tmp_path):
    """`{'a': v, 'a/x': w}` stores arrays `a` and `a/x` in one OCDBT store: `a/x/...` keys belong to
    `a/x`, not to `a` (whose chunk keys they are not)."""
    tree = {"a": np.arange(4, dtype=np.float32), "a/x": np.ones((2, 2), np.float32)}
    a = orbax_save(tmp_path / "A", tree)
    kv = ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": str(a) + "/"}}).result()
    assert {"a/.zarray", "a/x/.zarray"} <= {k.decode() for k in kv.list().result()}
    self_diff_is_identical(a)
