"""The reader's typed metadata (formats/zarr_metadata.py, formats/orbax.py) against the writers' own
libraries: every fact `ArrayMetadata` derives (grid, read chunk, chunk keys, shard index) is checked
against zarr-python's parse of the same document and against the keys zarr-python actually stored;
the Orbax tree entries against orbax's own `InternalTreeMetadata`."""

from __future__ import annotations

import itertools
import json
import os
import pickle

import numpy as np
import pytest
import zarr
from helpers import save
from zarr.codecs import BloscCodec, Crc32cCodec, ShardingCodec, ZstdCodec

from streamdiff.reader.formats import orbax, zarr_metadata
from streamdiff.reader.formats.zarr import parse_array
from streamdiff.reader.locate import locate
from streamdiff.reader.tree import build_tree

#: name -> (zarr_format, create_array keyword arguments)
ARRAYS = {
    "v2_dot": (2, dict(shape=(10, 7), chunks=(3, 4), dtype="<f4")),
    "v2_slash": (
        2,
        dict(shape=(10, 7), chunks=(3, 4), dtype=">i2", chunk_key_encoding={"name": "v2", "separator": "/"}),
    ),
    "v2_rank0": (2, dict(shape=(), dtype="<f8")),
    "v3_default": (3, dict(shape=(10, 7), chunks=(3, 4), dtype="float32")),
    "v3_default_dot": (
        3,
        dict(shape=(10, 7), chunks=(3, 4), dtype="int16", chunk_key_encoding={"name": "default", "separator": "."}),
    ),
    "v3_v2_keys": (
        3,
        dict(shape=(10, 7), chunks=(3, 4), dtype="uint8", chunk_key_encoding={"name": "v2", "separator": "."}),
    ),
    "v3_rank0": (3, dict(shape=(), dtype="int64")),
    "v3_sharded": (
        3,
        dict(shape=(12, 8), chunks=(2, 4), shards=(6, 8), dtype="float32", compressors=ZstdCodec(level=1)),
    ),
    "v3_blosc": (3, dict(shape=(12, 8), chunks=(5, 5), dtype="float64", compressors=BloscCodec(cname="lz4"))),
}


def _written(tmp_path, name):
    """(our ArrayMetadata, zarr-python's metadata, the keys zarr-python stored, the data) of one array."""
    fmt, kw = ARRAYS[name]
    arr = zarr.create_array(str(tmp_path / name), zarr_format=fmt, fill_value=None if fmt == 2 else 0, **kw)
    data = np.arange(int(np.prod(kw["shape"])), dtype=kw["dtype"]).reshape(kw["shape"]) + 1
    arr[...] = data
    meta_file = ".zarray" if fmt == 2 else "zarr.json"
    doc = json.loads((tmp_path / name / meta_file).read_text())
    root = tmp_path / name
    keys = sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, fs in os.walk(root)
        for f in fs
        if not f.startswith(".") and f != "zarr.json"
    )
    return parse_array(meta_file, doc), zarr.open_array(str(root), mode="r").metadata, keys, data


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_grid_read_chunk_and_dtype_equal_zarr_pythons_parse(tmp_path, name):
    ours, theirs, _, data = _written(tmp_path, name)
    assert ours.shape == tuple(theirs.shape) == data.shape
    if ours.zarr_format == 2:
        assert ours.chunk_shape == ours.read_chunk_shape == tuple(theirs.chunks)
    else:
        assert ours.chunk_shape == tuple(theirs.chunk_grid.chunk_shape)
        assert ours.read_chunk_shape == tuple(theirs.chunks)  # zarr-python: the inner chunk when sharded
        assert (ours.shard_index is None) == (theirs.shards is None)
    assert ours.dtype == data.dtype.name
    assert ours.stored_dtype.itemsize == data.dtype.itemsize


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_chunk_keys_spelled_as_zarr_python_spells_and_stores_them(tmp_path, name):
    ours, theirs, stored, _ = _written(tmp_path, name)
    grid = [range(n) for n in ours.grid]
    expected = sorted(theirs.encode_chunk_key(tuple(i)) for i in itertools.product(*grid))
    assert sorted(ours.key(tuple(i)) for i in itertools.product(*grid)) == expected
    # every cell holds non-fill data, so zarr-python stored one key per cell, spelled that way
    assert stored == expected
    assert all(ours.is_chunk_key(k) for k in stored)
    last = tuple(ours.grid)  # one past the grid on every axis: not a chunk of this array
    if last:
        assert not ours.is_chunk_key(ours.key(last))
        assert ours.key_encoding.parse(ours.key(last), ours.ndim) == last


def test_shard_index_location_crc_and_size_match_the_sharding_codec_written(tmp_path):
    for location in ("start", "end"):
        codec = ShardingCodec(chunk_shape=(2, 4), codecs=[zarr.codecs.BytesCodec()], index_location=location)
        arr = zarr.create_array(
            str(tmp_path / location),
            shape=(6, 8),
            chunks=(6, 8),
            dtype="<u2",
            serializer=codec,
            compressors=None,
            fill_value=0,
        )
        arr[...] = np.arange(48, dtype="<u2").reshape(6, 8) + 1
        ours = parse_array("zarr.json", json.loads((tmp_path / location / "zarr.json").read_text()))
        written = arr.metadata.codecs[0]
        assert ours.shard_index.at_end == (written.index_location.value == "end")
        assert ours.shard_index.crc == any(isinstance(c, Crc32cCodec) for c in written.index_codecs)
        assert ours.shard_index.entries == 6
        shard = (tmp_path / location / "c" / "0" / "0").read_bytes()
        # the stored shard is its 6 raw inner chunks of 2x4 uint16 plus the index
        assert len(shard) == 6 * 2 * 4 * 2 + ours.shard_index.nbytes
        assert ours.compressor == "raw" and ours.streamable


def test_arrays_with_equal_metadata_documents_share_one_metadata_object(tmp_path):
    tree = {"a": np.ones((4, 4), "f4"), "b": np.zeros((4, 4), "f4"), "c": np.ones((3,), "i4")}
    save(tmp_path / "ckpt", tree)
    leaves = build_tree(locate(str(tmp_path / "ckpt")).items[0].dir).leaves
    a, b, c = (leaves[(k,)].source.metadata for k in "abc")
    assert a is b and a is not c
    assert (a.shape, c.shape, a.dtype, c.dtype) == ((4, 4), (3,), "float32", "int32")


def test_array_source_survives_pickling_as_dask_sends_it(tmp_path):
    save(tmp_path / "ckpt", {"w": np.arange(6, dtype="f4").reshape(2, 3)}, use_zarr3=True)
    source = build_tree(locate(str(tmp_path / "ckpt")).items[0].dir).leaves[("w",)].source
    back = pickle.loads(pickle.dumps(source))
    assert back == source and back.spec == source.spec and back.metadata.document == source.metadata.document
    assert back.read_chunk_shape == source.read_chunk_shape and back.codec == source.codec


def test_tree_entries_equal_orbaxs_own_parse_of_metadata(tmp_path):
    from orbax.checkpoint._src.metadata.tree import InternalTreeMetadata

    tree = {"lst": [np.ones(2, "f4"), {"x": np.int32(3)}], "tup": (np.zeros(1, "i8"),), "d": {"k": "text"}, "n": None}
    save(tmp_path / "ckpt", tree)
    doc = json.loads((tmp_path / "ckpt" / "_METADATA").read_text())
    ours = orbax.tree_metadata(doc, "_METADATA")
    theirs = InternalTreeMetadata.from_json(doc).tree_metadata_entries
    assert len(ours) == len(theirs) == 5
    for o, t in zip(ours, theirs):
        levels = t.key_metadata.nested_key_metadata_entries
        assert o.keys == tuple(e.nested_key_name for e in levels)
        assert [k.name for k in o.key_types] == [e.key_type.name for e in levels]
        assert (o.value.value_type, o.value.skip_deserialize) == (
            t.value_metadata.value_type,
            t.value_metadata.skip_deserialize,
        )
    by_keys = {e.keys: e for e in ours}
    assert by_keys[("lst", "1", "x")].key_types == (orbax.KeyType.DICT, orbax.KeyType.SEQUENCE, orbax.KeyType.DICT)
    assert by_keys[("n",)].value.empty and not by_keys[("d", "k")].value.empty


def test_tree_entries_share_value_metadata_and_keep_unknown_key_types():
    leaf = {"value_metadata": {"value_type": "np.ndarray", "skip_deserialize": False}}
    doc = {
        "tree_metadata": {
            "('a',)": {"key_metadata": [{"key": "a", "key_type": 2}], **leaf},
            "('b',)": {"key_metadata": [{"key": "b", "key_type": 9}], **leaf},
        }
    }
    a, b = orbax.tree_metadata(doc, "_METADATA")
    assert a.value is b.value
    assert (a.key_types, b.key_types) == ((orbax.KeyType.DICT,), (None,))


def test_zarr_metadata_objects_have_no_instance_dict():
    """Per-leaf objects stay small on 100k-leaf trees: slots, no __dict__."""
    md = zarr_metadata.parse("zarr", json.loads(json.dumps(_V2_DOC)))
    for obj in (md, md.key_encoding):
        assert not hasattr(obj, "__dict__")


_V2_DOC = {
    "zarr_format": 2,
    "shape": [4],
    "chunks": [2],
    "dtype": "<f4",
    "compressor": {"id": "zstd", "level": 1},
    "fill_value": None,
    "order": "C",
    "filters": None,
}


# ------------------------------------------------- _METADATA bytes: the fast decode and the checked parse


def _outcome(read):
    """(entries, None) or (None, the one-line error) of reading one `_METADATA` document."""
    from streamdiff.errors import StreamdiffError

    try:
        return read(), None
    except StreamdiffError as e:
        return None, str(e)


def _both_reads(raw: bytes):
    from streamdiff.reader import validate

    fast = _outcome(lambda: orbax.read_tree_metadata(raw, "x/_METADATA"))
    checked = _outcome(lambda: orbax.tree_metadata(validate.parse_json(raw, "x/_METADATA"), "x/_METADATA"))
    return fast, checked


@pytest.fixture(scope="module")
def orbax_tree_metadata(tmp_path_factory) -> bytes:
    """A `_METADATA` written by real orbax: nested dicts, a list, a tuple, a string, empty nodes."""
    path = tmp_path_factory.mktemp("tm") / "ckpt"
    tree = {
        "params": {"layers_0": {"w": np.ones((2, 3), "f4")}, "layers_1": {"w": np.ones((2, 3), "f4")}},
        "lst": [np.ones(2, "f4"), {"x": np.int32(3)}],
        "tup": (np.zeros(1, "i8"),),
        "d": {"k": "text", "e": {}},
        "n": None,
    }
    save(path, tree)
    return (path / "_METADATA").read_bytes()


def _edited(raw: bytes, edit) -> bytes:
    doc = json.loads(raw)
    edit(doc)
    return json.dumps(doc).encode()


def _first(doc):
    return next(iter(doc["tree_metadata"].values()))


#: Edits of a real `_METADATA`: each is read the same by the fast decode and by the checked parse
#: (the same entries, or the same error line), whether or not the fast decode accepts it.
EDITS = {
    "as written": lambda d: None,
    "integer key": lambda d: _first(d)["key_metadata"][0].update(key=7),
    "huge integer key": lambda d: _first(d)["key_metadata"][0].update(key=10**30),
    "unknown key_type": lambda d: _first(d)["key_metadata"][0].update(key_type=9),
    "key_type a list": lambda d: _first(d)["key_metadata"][0].update(key_type=[1]),
    "key_type a float": lambda d: _first(d)["key_metadata"][0].update(key_type=2.0),
    "key_type missing": lambda d: _first(d)["key_metadata"][0].pop("key_type"),
    "value_metadata null": lambda d: _first(d).update(value_metadata=None),
    "value_metadata empty": lambda d: _first(d).update(value_metadata={}),
    "value_metadata missing": lambda d: _first(d).pop("value_metadata"),
    "value_type null": lambda d: _first(d)["value_metadata"].update(value_type=None),
    "skip_deserialize 0": lambda d: _first(d)["value_metadata"].update(skip_deserialize=0),
    "key a bool": lambda d: _first(d)["key_metadata"][0].update(key=True),
    "key a float": lambda d: _first(d)["key_metadata"][0].update(key=1.5),
    "key missing": lambda d: _first(d)["key_metadata"][0].pop("key"),
    "key_metadata missing": lambda d: _first(d).pop("key_metadata"),
    "key_metadata a dict": lambda d: _first(d).update(key_metadata={}),
    "entry a list": lambda d: d["tree_metadata"].update({next(iter(d["tree_metadata"])): []}),
    "tree_metadata a list": lambda d: d.update(tree_metadata=[]),
    "no tree_metadata": lambda d: d.pop("tree_metadata"),
    "extra fields everywhere": lambda d: (
        d.update(extra={"a": [1, {"b": None}]}),
        _first(d).update(extra=[[[]]]),
        _first(d)["key_metadata"][0].update(extra="x"),
        _first(d)["value_metadata"].update(write_shape=[1, 2]),
    ),
    "non-ASCII key": lambda d: _first(d)["key_metadata"][0].update(key="gewicht_\u00e4"),
    "quotes, brackets and backslashes in a key": lambda d: _first(d)["key_metadata"][0].update(key='a"[{\\}]\\'),
    "an ignored field 64 deep": lambda d: d.update(extra=json.loads("[" * 63 + "]" * 63)),
    "an ignored field 65 deep": lambda d: d.update(extra=json.loads("[" * 64 + "]" * 64)),
    "a key nested 70 deep": lambda d: _first(d)["key_metadata"][0].update(key=json.loads("[" * 70 + "]" * 70)),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_read_tree_metadata_reads_each_document_as_the_checked_parse_does(orbax_tree_metadata, edit):
    fast, checked = _both_reads(_edited(orbax_tree_metadata, EDITS[edit]))
    assert fast == checked
    if edit == "as written":
        assert fast[0] is not None and len(fast[0]) == 8


@pytest.mark.parametrize(
    "text",
    [
        b'{"tree_metadata": {}, "x": NaN}',  # json reads NaN, msgspec does not
        b'{"tree_metadata": {}, "x": "\xff"}',  # not UTF-8, in a field the tree does not use
        b'{"tree_metadata": {}, "x": "\\ud800"}',  # a lone surrogate
        b'\xef\xbb\xbf{"tree_metadata": {}}',  # a UTF-8 byte order mark
        '{"tree_metadata": {}}'.encode("utf-16"),
        b'{"tree_metadata": {"k": {"key_metadata": [{"key": "a"}]}, "k": {"key_metadata": [{"key": "b"}]}}}',
        b'{"tree_metadata": {"k": {"key_metadata": [{"key": "a"}], "key_metadata": [{"key": "b"}]}}}',
        b'{"tree_metadata": {}} trailing',
        b'{"tree_metadata": {"k": {"key_metadata": [{"key": "a\\"]"}]}}}',
        b"",
        b'{"tree_metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_read_tree_metadata_reads_odd_json_as_the_checked_parse_does(text):
    fast, checked = _both_reads(text)
    assert fast == checked


def test_tree_entries_of_a_plain_document_share_their_key_name_strings(orbax_tree_metadata):
    """100k paths of one model repeat a few thousand names: each is one string object."""
    entries = orbax.read_tree_metadata(orbax_tree_metadata, "_METADATA")
    by_keys = {e.keys: e for e in entries}
    a, b = by_keys[("params", "layers_0", "w")], by_keys[("params", "layers_1", "w")]
    assert a.keys[0] is b.keys[0] and a.keys[2] is b.keys[2]


@pytest.mark.parametrize("use_ocdbt", [True, False])
def test_array_sources_share_one_base_spec_and_open_each_arrays_own_values(tmp_path, use_ocdbt):
    import tensorstore as ts

    tree = {"a": np.arange(6, dtype="f4").reshape(2, 3), "b": np.arange(6, 12, dtype="f4").reshape(2, 3)}
    save(tmp_path / "ckpt", tree, use_ocdbt=use_ocdbt, use_zarr3=True)
    item = locate(str(tmp_path / "ckpt")).items[0].dir
    leaves = build_tree(item).leaves
    a, b = leaves[("a",)].source, leaves[("b",)].source
    assert a.base_spec is b.base_spec  # one per item and metadata document, not one per leaf
    for name, source in (("a", a), ("b", b)):
        spec = source.spec
        assert spec["kvstore"]["path"].endswith(name + "/") and spec["metadata"] is source.metadata.document
        got = ts.open(spec, context=item.storage.context, read=True, assume_metadata=True).result().read().result()
        np.testing.assert_array_equal(got, tree[name])
    assert a.spec["kvstore"] is not a.spec["kvstore"]  # spelled anew: a caller may not change the shared one
