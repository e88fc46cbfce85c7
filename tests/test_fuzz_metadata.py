"""Fuzzing metadata: hypothesis mutates one metadata document of a real checkpoint (the seven MaxText
layouts in tests/data/maxtext, plus orbax zarr v2 and v3 saves without OCDBT written here) and the
CLI compares the original with the mutated copy.

Every run must end with exit 0, 1 or 2, no traceback, only `streamdiff: error: ` lines on stderr,
within a bounded time. Exit 0 is checked against an oracle that does not use streamdiff: for a
mutated `.zarray` / `zarr.json`, tensorstore itself reads the mutated array, which must hold the
original's shape, dtype and values; for a mutated `_METADATA`, the tree it describes (key paths, and
which entries are empty nodes: None, {}, [] and () values) must be the original's. Documents
that cannot change values (`array_metadatas`, `_CHECKPOINT_METADATA`) need no oracle.

`make test` runs a few hundred examples; `pytest --hypothesis-profile=long` runs thousands.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest
import tensorstore as ts
from conftest import DATA, MAXTEXT, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile import save_chunked_w_and_v

#: Examples per run: the `long` profile (tests/conftest.py) raises it to thousands.
FUZZ_EXAMPLES = max(150, settings.default.max_examples)
#: Per example: a bounded time, however hostile the document (a real run takes well under a second).
MAX_SECONDS = 30
LEGACY = DATA / "legacy"
EMPTY_TYPES = {"None", "Dict", "List", "Tuple", "NamedTuple"}

MAXTEXT_ROOTS = [
    "v024_linen_scan/checkpoints/1",
    "v024_linen_noscan/checkpoints/1",
    "v024_linen_scan_seed1/checkpoints/1",
    "v024_nnx_scan/checkpoints/1",
    "pr283f88b_nnx_scan/checkpoints/1",
    "pr283f88b_nnx_noscan/checkpoints/1",
    "conv_pr283f88b_linen_scan_to_nnx/items",
]


@dataclass(frozen=True)
class Doc:
    """One metadata document of a checkpoint: a file, or a key inside the item's OCDBT store."""

    root: Path  # what is passed to streamdiff (a step or item directory), pristine
    item: str  # item directory relative to root ('' when root is the item)
    name: str  # file path relative to the item, or OCDBT key
    ocdbt: bool
    role: str  # 'zarr2' | 'zarr3' | 'tree' | 'strings' | 'msgpack_tree' | 'other'

    def read(self, root: Path) -> bytes:
        if self.ocdbt:
            return bytes(_ocdbt(root / self.item).read(self.name).result().value)
        return (root / self.item / self.name).read_bytes()

    def write(self, root: Path, data: bytes) -> None:
        if self.ocdbt:
            _ocdbt(root / self.item).write(self.name, data).result()
        else:
            (root / self.item / self.name).write_bytes(data)


def _ocdbt(item: Path) -> ts.KvStore:
    return ts.KvStore.open({"driver": "ocdbt", "base": {"driver": "file", "path": str(item) + "/"}}).result()


def _maxtext_docs(rel: str) -> list[Doc]:
    root = MAXTEXT / rel
    item = "" if rel.endswith("/items") else "items"
    docs = [Doc(root, item, "_METADATA", False, "tree"), Doc(root, item, "array_metadatas/process_0", False, "other")]
    if (root / "_CHECKPOINT_METADATA").exists():
        docs.append(Doc(root, "", "_CHECKPOINT_METADATA", False, "other"))
    for key in _ocdbt(root / item).list().result():
        k = key.decode()
        if k.endswith("zarr.json") or k.endswith(".zarray"):
            docs.append(Doc(root, item, k, True, "zarr3" if k.endswith("zarr.json") else "zarr2"))
    return docs


def _legacy_docs() -> list[Doc]:
    """Orbax 0.3.5 and 0.5.10 saves (tests/data/legacy): msgpack `checkpoint` files, `_strings.json`."""
    old, new, agg = (LEGACY / n for n in ("legacy_0.3.5_aggregate", "legacy_0.5.10_default", "legacy_0.5.10_aggregate"))
    docs = [
        Doc(old, "", "checkpoint", False, "msgpack_tree"),  # the only structure source in 0.3.5
        Doc(old, "", "params.dense.kernel/.zarray", False, "zarr2"),
        Doc(old, "", "params.sharded/.zarray", False, "zarr2"),
        Doc(new, "", "_METADATA", False, "tree"),
        Doc(new, "", "_strings.json", False, "strings"),
        Doc(new, "", "checkpoint", False, "other"),
        Doc(agg, "", "_METADATA", False, "tree"),
        Doc(agg, "", "checkpoint", False, "other"),
    ]
    for key in _ocdbt(new).list().result():
        if key.endswith(b".zarray"):
            docs.append(Doc(new, "", key.decode(), True, "zarr2"))
    return docs


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> list[Doc]:
    out: list[Doc] = []
    for rel in MAXTEXT_ROOTS:
        out += _maxtext_docs(rel)
    out += _legacy_docs()
    base = tmp_path_factory.mktemp("fuzz")
    for name, zarr3 in (("z2", False), ("z3", True)):
        save_chunked_w_and_v(base / name, zarr3)
        meta = "zarr.json" if zarr3 else ".zarray"
        out += [Doc(base / name, "", "_METADATA", False, "tree")]
        out += [Doc(base / name, "", f"{leaf}/{meta}", False, "zarr3" if zarr3 else "zarr2") for leaf in ("w", "v")]
    return out


# ----------------------------------------------------------------------------------- mutations

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 2, 3, 7, 64, 2**31, 2**63, 10**10, 10**12, -(10**12)]),
    st.integers(),
    st.sampled_from([1.5, -0.0, float("nan"), float("inf"), 1e308]),
    st.floats(),
    st.sampled_from(["", "a", "<f4", "|V1000000000", "float32", "zstd", "zlib", "gzip", "blosc", "C", "F", "/", "."]),
    st.sampled_from(["sharding_indexed", "bytes", "crc32c", "regular", "default", "v2", "None", "jax.Array"]),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _paths(doc, prefix=()) -> list[tuple]:
    """Every node's path in a JSON document (dict keys and list indices)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _set(doc, path, value):
    if not path:
        return value
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


def _delete(doc, path):
    node = doc
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return doc


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def mutated(draw, raw: bytes) -> bytes:
    """`raw` with one structural or byte-level mutation."""
    try:
        json.loads(raw)
        ops = ["replace", "replace", "replace", "delete", "deep", "truncate", "flip", "garbage"]
    except ValueError:  # msgpack: bytes only
        ops = ["truncate", "flip", "flip", "flip", "garbage"]
    op = draw(st.sampled_from(ops))
    if op == "truncate":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if op == "flip":
        data = bytearray(raw)
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if op == "garbage":
        return draw(st.binary(max_size=64))
    doc = json.loads(raw)
    paths = _paths(doc)
    if op == "delete":
        paths = [p for p in paths if p]
        if not paths:
            return raw
        doc = _delete(doc, draw(st.sampled_from(paths)))
        return json.dumps(doc).encode()
    path = draw(st.sampled_from(paths))
    if op == "deep":
        marker = "__DEEP__"
        doc = _set(doc, path, marker)
        return json.dumps(doc).replace(f'"{marker}"', _deep(draw(st.sampled_from([40, 100, 3000, 100_000])))).encode()
    return json.dumps(_set(doc, path, draw(VALUES))).encode()


# -------------------------------------------------------------------------------------- oracles


def _zarr_values(item: Path, name: str, ocdbt: bool, role: str) -> tuple:
    """(shape, dtype, values) of the array whose metadata is `name`, read by tensorstore alone."""
    array = name.rsplit("/", 1)[0] if "/" in name else ""
    prefix = array + "/" if array else ""
    if ocdbt:
        kv = {"driver": "ocdbt", "base": {"driver": "file", "path": str(item) + "/"}, "path": prefix}
    else:
        kv = {"driver": "file", "path": str(item / prefix)}
    t = ts.open({"driver": "zarr3" if role == "zarr3" else "zarr", "kvstore": kv}, read=True).result()
    return tuple(t.shape), str(t.dtype), t.read().result()


def _tree(item: Path) -> set:
    doc = json.loads((item / "_METADATA").read_text())
    out = set()
    for entry in doc["tree_metadata"].values():
        keys = tuple(str(k["key"]) for k in entry["key_metadata"])
        vm = entry.get("value_metadata") or {}
        out.add((keys, vm.get("value_type") in EMPTY_TYPES))
    return out


def _assert_oracle(doc: Doc, original: Path, copy: Path) -> None:
    """Exit 0 was given: the mutated document must describe the same values."""
    if doc.role in ("zarr2", "zarr3"):
        shape, dtype, a = _zarr_values(original / doc.item, doc.name, doc.ocdbt, doc.role)
        try:
            shape_b, dtype_b, b = _zarr_values(copy / doc.item, doc.name, doc.ocdbt, doc.role)
        except Exception as e:  # noqa: BLE001 - tensorstore cannot read it: exit 0 was a lie
            pytest.fail(f"exit 0, but tensorstore cannot read the mutated array: {e}")
        assert (shape_b, dtype_b) == (shape, dtype)
        np.testing.assert_array_equal(a, b)
    elif doc.role == "tree":
        assert _tree(copy / doc.item) == _tree(original / doc.item)
    elif doc.role == "strings":
        before, after = (json.loads((x / doc.item / doc.name).read_text()) for x in (original, copy))
        assert all(type(after.get(k)) is type(v) and after.get(k) == v for k, v in before.items())
    elif doc.role == "msgpack_tree":
        before, after = ((x / doc.item / doc.name).read_bytes() for x in (original, copy))
        try:
            after = msgpack.unpackb(after, strict_map_key=False)
        except Exception as e:  # noqa: BLE001 - msgpack cannot read it: exit 0 was a lie
            pytest.fail(f"exit 0, but msgpack cannot read the mutated file: {e}")
        assert after == msgpack.unpackb(before, strict_map_key=False)


# ---------------------------------------------------------------------------------------- test


@pytest.mark.timeout(max(300, 2 * FUZZ_EXAMPLES))
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_metadata_never_crashes_hangs_or_lies(documents, data):
    doc = data.draw(st.sampled_from(documents), label="document")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "b"
        shutil.copytree(doc.root, copy)
        raw = doc.read(doc.root)
        new = data.draw(mutated(raw), label="mutated")
        doc.write(copy, new)
        t0 = time.monotonic()
        r = run_cli(doc.root, copy, "-q")
        seconds = time.monotonic() - t0
        assert r.code in (0, 1, 2), r
        assert "Traceback" not in r.err, r.err
        assert all(line.startswith("streamdiff: error: ") for line in r.err.strip().splitlines()), r.err
        assert seconds < MAX_SECONDS
        if r.code == 0 and new != raw:
            _assert_oracle(doc, doc.root, copy)


def test_fuzz_corpus_covers_every_layout_and_document_kind(documents):
    """The seven MaxText layouts, both orbax saves and three legacy saves, each with its tree source
    (`_METADATA`, or the msgpack `checkpoint` of orbax 0.3.5) and array metadata."""
    roots = {d.root for d in documents}
    assert len(roots) == 12
    for root in roots:
        roles = {d.role for d in documents if d.root == root}
        assert roles & {"tree", "msgpack_tree"} and roles & {"zarr2", "zarr3"} or root.name.endswith("aggregate"), roles
