"""Hostile local input (issue #10): every case is one line on stderr and exit 2, within bounded time
and memory, or the right verdict. Fixtures are real orbax saves (and real MaxText checkpoints),
copied and then damaged by the test. Cases that used to hang or abort run in a subprocess with a
deadline, and the child's own peak RSS (from /usr/bin/time) is checked against the budget."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import MAXTEXT, run_cli
from helpers import one_error_line, save
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
W = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 7
V = np.arange(100, dtype=np.int32)
MAXTEXT_STEP = MAXTEXT / "v024_linen_scan/checkpoints/1"
DEADLINE = 60  # seconds; every case here finishes in a few
RSS_LIMIT = 1 << 30  # the default budget is 2G; these cases should stay near the interpreter's size


@dataclass
class Sub:
    code: int
    out: str
    err: str
    peak_rss: int
    seconds: float


def run_sub(*args, timeout: float = DEADLINE) -> Sub:
    """The CLI in a child process (a hang fails the test instead of hanging it; a SIGABRT is seen as
    a negative code), with the child's own peak RSS as /usr/bin/time measures it.

    Not wait4's `ru_maxrss` of a child of pytest: Linux carries the parent's high-water mark through
    fork and exec into the child's figure, so it would report pytest's peak whenever that is larger.
    /usr/bin/time's own child starts from the small `time` process instead."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as td:
        rss_file = os.path.join(td, "rss")
        cmd = ["/usr/bin/time", "-f", "%M", "-o", rss_file, sys.executable, "-m", "streamdiff", *map(str, args)]
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            pytest.fail(f"streamdiff {' '.join(map(str, args))} still running after {timeout} s")
        # `time` writes "Command terminated by signal N" (or "... exited with non-zero status N") before the figure.
        lines = Path(rss_file).read_text().split()
        code = p.returncode
        if "signal" in lines:
            code = -int(lines[lines.index("signal") + 1])
        out.seek(0)
        err.seek(0)
        return Sub(code, out.read().decode(), err.read().decode(), int(lines[-1]) * 1024, time.monotonic() - t0)


def bounded(r: Sub) -> None:
    assert r.peak_rss < RSS_LIMIT, f"peak RSS {r.peak_rss >> 20} MiB"


def save_chunked_w_and_v(path: Path, zarr3: bool) -> None:
    import orbax.checkpoint as ocp

    tree = {"w": W, "v": V}
    args = {"w": ocp.SaveArgs(chunk_byte_size=2048), "v": ocp.SaveArgs()}
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_zarr3=zarr3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ocp.Checkpointer(handler).save(path, args=ocp.args.PyTreeSave(tree, save_args=args))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Per-array directories (no OCDBT), zarr v2 and v3, written by orbax: files a test can damage."""
    root = tmp_path_factory.mktemp("hostile")
    out = {}
    for name, zarr3 in (("z2", False), ("z3", True)):
        save_chunked_w_and_v(root / name, zarr3)
        out[name] = root / name
    return out


@pytest.fixture
def pair(saved, tmp_path):
    """Fresh copies A and B of one saved layout."""

    def make(name: str) -> tuple[Path, Path]:
        a, b = tmp_path / "a", tmp_path / "b"
        shutil.copytree(saved[name], a)
        shutil.copytree(saved[name], b)
        return a, b

    return make


def edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def write_with_tensorstore(arr_dir: Path, metadata: dict, zarr3: bool, data: np.ndarray | None = None) -> None:
    """Rewrite one array's metadata (and, given `data`, its chunks) with tensorstore, the real writer."""
    import tensorstore as ts

    for f in (".zarray", "zarr.json"):
        if (arr_dir / f).exists():
            (arr_dir / f).unlink()
    spec = {"driver": "zarr3" if zarr3 else "zarr", "kvstore": {"driver": "file", "path": str(arr_dir)}}
    ctx = ts.Context({"file_io_sync": False})  # test data: no fsync per chunk file
    t = ts.open(dict(spec, metadata=metadata), create=True, context=ctx).result()
    if data is not None:
        t[tuple(slice(0, n) for n in data.shape)].write(data).result()


# -------------------------------------------------------------------- row 2: unstreamable huge chunk


@pytest.mark.parametrize("zarr3", [False, True], ids=["zarray_zlib", "zarr_json_gzip"])
def test_huge_unstreamable_chunk_is_refused_by_the_planner(pair, zarr3):
    a, b = pair("z3" if zarr3 else "z2")
    for side in (a, b):
        if zarr3:
            md = {
                "zarr_format": 3,
                "node_type": "array",
                "shape": [10**10],
                "data_type": "float32",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [10**10]}},
                "chunk_key_encoding": {"name": "default"},
                "codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "gzip", "configuration": {"level": 1}},
                ],
                "fill_value": 0,
            }
            (side / "w/zarr.json").write_text(json.dumps(md))
        else:
            md = {"zarr_format": 2, "shape": [10**10], "chunks": [10**10], "dtype": "<f4"}
            md.update(compressor={"id": "zlib", "level": 1}, fill_value=0, order="C", filters=None)
            (side / "w/.zarray").write_text(json.dumps(md))
    r = run_sub(a, b, "-q")
    one_error_line(r, "cannot be streamed", "--max-memory")
    bounded(r)


# ----------------------------------------------------------------------------- row 3: FIFOs


def _fifo(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    os.mkfifo(path)


def _first_data_file(d: Path) -> Path:
    return sorted(p for p in d.iterdir() if p.is_file())[0]


FIFO_CASES = {
    "chunk": ("z2", lambda a: a / "w/0.0"),
    "zarray": ("z2", lambda a: a / "w/.zarray"),
    "zarr_json": ("z3", lambda a: a / "w/zarr.json"),
    "metadata": ("z2", lambda a: a / "_METADATA"),
    "ocdbt_data_file": ("maxtext", lambda a: _first_data_file(a / "items/d")),
    "manifest_ocdbt": ("maxtext", lambda a: a / "items/manifest.ocdbt"),
    "checkpoint_metadata": ("maxtext", lambda a: a / "_CHECKPOINT_METADATA"),
}


@pytest.mark.parametrize("case", sorted(FIFO_CASES))
def test_fifo_in_place_of_a_file_is_an_error_not_a_hang(pair, tmp_path, case):
    layout, where = FIFO_CASES[case]
    if layout == "maxtext":
        a, b = tmp_path / "a", MAXTEXT_STEP
        shutil.copytree(MAXTEXT_STEP, a)
    else:
        a, b = pair(layout)
    target = where(a)
    _fifo(target)
    r = run_sub(a, b, "-q")
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert "a FIFO, not a regular file" in r.err and target.name in r.err, r.err


# ------------------------------------------------------------------- row 4: absurd chunk grids


@pytest.mark.parametrize(
    "shape,chunks,needle",
    [([10**12], [1], "chunks per leaf"), ([2**40, 2**40], [1, 1], "2**62 elements")],
    ids=["1e12_chunks", "2e24_elements"],
)
def test_absurd_chunk_grid_is_refused_within_the_deadline_and_budget(pair, shape, chunks, needle):
    a, b = pair("z2")
    for side in (a, b):
        edit_json(side / "w/.zarray", lambda md: md.update(shape=shape, chunks=chunks))
    r = run_sub(a, b, "-q", "--max-memory", "2G")
    one_error_line(r, needle)
    bounded(r)


def test_many_tiny_chunks_are_grouped_in_bounded_blocks(pair, monkeypatch):
    """A real array of 2,000 one-element chunks (written by tensorstore) compares right while no
    block spans more than MAX_CHUNKS_PER_BLOCK chunks (lowered to 256 so the test stays small)."""
    from streamdiff import plan

    monkeypatch.setattr(plan, "MAX_CHUNKS_PER_BLOCK", 256)
    a, b = pair("z2")
    x = np.arange(2_000, dtype=np.float32)
    y = x.copy()
    y[1_234] = -1
    md = {"shape": [2_000], "chunks": [1], "dtype": "<f4", "compressor": None}
    write_with_tensorstore(a / "v", md, False, x)
    write_with_tensorstore(b / "v", md, False, y)
    r = run_cli(a, b, "--json", "-", "-q")
    leaf = next(x for x in r.json["leaves"] if x["path"] == "v")
    assert r.code == 1 and leaf["mismatches"] == 1 and leaf["max_abs_diff_index"] == [1_234]
    assert leaf["blocks"] == 2_000 // 256 + 1


# --------------------------------------------------------------------- row 5: files grown huge


def test_chunk_file_grown_to_5_gib_is_an_error_on_its_leaf(pair):
    a, b = pair("z2")
    os.truncate(b / "w/0.0", 5 << 30)  # sparse: no disk space used
    r = run_sub(a, b, "-q", "--json", "-")
    assert r.code == 2, r.err
    leaves = {x["path"]: x for x in json.loads(r.out)["leaves"]}
    assert leaves["w"]["status"] == "error" and "corrupt chunk" in leaves["w"]["message"]
    assert leaves["v"]["status"] == "equal"
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamdiff: error: w: "), r.err
    bounded(r)


def test_metadata_file_grown_to_5_gib_is_refused_by_size(pair):
    a, b = pair("z2")
    os.truncate(a / "_METADATA", 5 << 30)
    r = run_sub(a, b, "-q")
    one_error_line(r, "_METADATA: 5 GiB, over the 64 MiB limit")
    bounded(r)


def test_ocdbt_manifest_grown_to_5_gib_is_refused_by_size(tmp_path):
    a = tmp_path / "a"
    shutil.copytree(MAXTEXT_STEP, a)
    os.truncate(a / "items/manifest.ocdbt", 5 << 30)
    r = run_sub(a, MAXTEXT_STEP, "-q")
    one_error_line(r, "manifest.ocdbt: 5 GiB, over the 64 MiB limit")
    bounded(r)


# --------------------------------------------------------------------- row 7: malformed metadata


def _deep(n: int) -> str:
    return "[" * n + "]" * n


MALFORMED = {
    "deep_metadata": ("_METADATA", lambda t: '{"tree_metadata": ' + _deep(100_000) + "}", "nested too deeply"),
    "deep_zarray": ("w/.zarray", lambda t: t[:-1] + ', "x": ' + _deep(5000) + "}", "nested too deeply"),
    "metadata_null": ("_METADATA", lambda t: "null", "_METADATA: no tree_metadata"),
    "zarray_null": ("w/.zarray", lambda t: "null", "must be an object"),
    "compressor_float": ("w/.zarray", {"compressor": 1.5}, "`compressor` must be an object or null, got 1.5"),
    "filters_nested_list": ("w/.zarray", {"filters": [[1, 2]]}, "`filters[0]` must be an object"),
    "dtype_huge_void": ("w/.zarray", {"dtype": "|V1000000000"}, "`dtype` must be a numeric dtype"),
    "shape_strings": ("w/.zarray", {"shape": ["64", 32]}, "`shape` must be a list of integers >= 0"),
    "chunks_zero": ("w/.zarray", {"chunks": [0, 32]}, "`chunks` must be a list of integers >= 1"),
    "chunks_rank": ("w/.zarray", {"chunks": [8]}, "`chunks` must be 2 long"),
    "shape_negative": ("w/.zarray", {"shape": [-1, 32]}, "`shape` must be a list of integers >= 0"),
    "order_bad": ("w/.zarray", {"order": "X"}, "`order` must be"),
}


def _nesting(v) -> int:
    """Containers nested in a parsed JSON value (the oracle of `text_too_deep`)."""
    if isinstance(v, dict):
        return 1 + max(map(_nesting, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_nesting, v), default=0)
    return 0


_TRICKY = st.sampled_from(["", "[", "]", "{", "}", '"', "\\", "\\\\", '\\"', "a[{", '"]}'])
_TEXT = st.lists(_TRICKY, max_size=4).map("".join)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=30,
)


@given(doc=_JSON, indent=st.sampled_from([None, 1]), limit=st.integers(0, 12))
@settings(max_examples=400, deadline=None)
def test_text_too_deep_counts_the_nesting_of_the_parsed_document(doc, indent, limit):
    from streamdiff.reader import validate

    text = json.dumps(doc, indent=indent).encode()
    assert validate.text_too_deep(text, limit) is (_nesting(json.loads(text)) > limit)


def test_text_too_deep_carries_strings_and_depth_across_its_slices(monkeypatch):
    from streamdiff.reader import validate

    monkeypatch.setattr(validate, "_SLICE", 3)
    for doc in ({"a[": ['"{', [["\\"]]]}, [[[["x]]]]"]]]], '"[[["', {"k": {"k": {"k": []}}}):
        text = json.dumps(doc).encode()
        for limit in range(6):
            assert validate.text_too_deep(text, limit) is (_nesting(doc) > limit), (text, limit)


def test_text_too_deep_declines_text_that_is_not_ascii():
    from streamdiff.reader import validate

    assert validate.text_too_deep(b'["\\u00e4"]') is False
    assert validate.text_too_deep('["ä"]'.encode()) is None
    assert validate.text_too_deep('["ä"]'.encode("utf-16")) is None


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_metadata_names_file_and_field(pair, case):
    rel, change, needle = MALFORMED[case]
    a, b = pair("z2")
    path = a / rel
    if callable(change):
        path.write_text(change(path.read_text()))
    else:
        edit_json(path, lambda d: d.update(change))
    r = run_cli(a, b, "-q")
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert needle in r.err and rel in r.err, r.err
    assert all(line.startswith("streamdiff: error: ") for line in r.err.strip().splitlines())


def test_value_metadata_as_a_list_is_a_corrupt_metadata_error(pair):
    a, b = pair("z2")

    def damage(doc):
        next(iter(doc["tree_metadata"].values()))["value_metadata"] = [1, 2]

    edit_json(a / "_METADATA", damage)
    r = run_cli(a, b)
    assert r.code == 2 and "value_metadata` must be an object or null" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"codecs": 3}, "`codecs` must be a list"),
        ({"chunk_grid": {"name": "irregular"}}, "`chunk_grid.name` must be"),
        ({"data_type": {"name": "x"}}, "`data_type` must be a string"),
        ({"codecs": [{"configuration": {}}]}, "`codecs[0].name` must be a string"),
    ],
)
def test_malformed_zarr_json_names_file_and_field(pair, change, needle):
    a, b = pair("z3")
    edit_json(a / "w/zarr.json", lambda d: d.update(change))
    r = run_cli(a, b, "-q")
    assert r.code == 2 and "Traceback" not in r.err and needle in r.err and "w/zarr.json" in r.err, r.err


# ------------------------------------------------------------- row 9: equal garbage on both sides


@pytest.mark.parametrize("layout", ["z2", "z3"])
def test_same_truncated_chunk_on_both_sides_is_an_error_not_identical(pair, layout):
    a, b = pair(layout)
    chunk = "w/0.0" if layout == "z2" else "w/c/0/0"
    for side in (a, b):
        (side / chunk).write_bytes(b"")
    for extra in ((), ("--no-shortcut",)):
        r = run_cli(a, b, "--json", "-", "-q", *extra)
        assert r.code == 2, (extra, r.out)
        assert {x["path"]: x["status"] for x in r.json["leaves"]} == {"v": "equal", "w": "error"}


@pytest.mark.parametrize("where", ["header", "end"])
def test_same_damaged_zstd_frame_on_both_sides_is_decoded_not_vouched_for(pair, where):
    """A byte flipped in the frame header (the declared size), or the last byte cut: equal on both
    sides, yet not a valid encoding of the chunk, so it is decoded and the decoder's error shows."""
    a, b = pair("z2")
    for side in (a, b):
        data = bytearray((side / "w/0.0").read_bytes())
        if where == "header":
            data[6] ^= 0x40  # inside the frame content size
        else:
            data = data[:-1]
        (side / "w/0.0").write_bytes(bytes(data))
    r = run_cli(a, b, "--json", "-", "-q")
    assert r.code == 2 and {x["path"]: x["status"] for x in r.json["leaves"]}["w"] == "error"


def test_identical_saves_still_settle_by_bytes(pair):
    """The plausibility check costs the shortcut nothing on valid chunks: all 5 (w: 4 chunks of
    2048 bytes, v: 1) are settled by their bytes."""
    for layout in ("z2", "z3"):
        a, b = pair(layout)
        r = run_cli(a, b, "--json", "-", "-q")
        assert r.code == 0 and r.json["summary"]["shortcut_chunks"] == 5, r.json["summary"]
        shutil.rmtree(a)
        shutil.rmtree(b)


# ---------------------------------------------------------------- row 11: unreadable _METADATA


def test_metadata_symlink_to_dev_zero_is_an_error_not_missing(pair):
    a, b = pair("z2")
    (a / "_METADATA").unlink()
    (a / "_METADATA").symlink_to("/dev/zero")
    r = run_sub(a, b, "-q")
    one_error_line(r, "_METADATA: a character device, not a regular file")


def test_dangling_metadata_symlink_is_an_error(pair):
    a, b = pair("z2")
    (a / "_METADATA").unlink()
    (a / "_METADATA").symlink_to(a / "nowhere")
    one_error_line(run_cli(a, b, "-q"), "_METADATA: a broken symbolic link")


# ------------------------------------------------------------------- row 13: --max-memory minimum


@pytest.mark.parametrize("size", ["0", "1", "1K", "63M"])
def test_max_memory_below_the_planner_minimum_is_refused(size):
    one_error_line(run_cli(MAXTEXT_STEP, MAXTEXT_STEP, "--max-memory", size), "--max-memory must be at least 64M")


def test_max_memory_minimum_holds_for_the_python_api():
    import streamdiff
    from streamdiff.errors import UsageError

    with pytest.raises(UsageError, match="at least 64M"):
        streamdiff.diff(str(MAXTEXT_STEP), str(MAXTEXT_STEP), max_memory=1024)
    assert streamdiff.diff(str(MAXTEXT_STEP), str(MAXTEXT_STEP), max_memory=64 << 20).exit_code == 0


@pytest.mark.parametrize("layout", ["zarr2_zstd", "zarr3_zstd", "zarr2_raw", "zarr3_zstd_files"])
def test_big_chunks_streamed_still_settle_by_valid_bytes(tmp_path, layout):
    """A chunk over the block budget, the same on both sides, is settled by its bytes piece by piece
    (its first and last pieces pass the plausibility check), for zarr v2 and sharded zarr v3."""
    from test_streaming import BIG, LAYOUTS, save

    import streamdiff

    save(tmp_path / "a", {"w": BIG}, **LAYOUTS[layout])
    save(tmp_path / "b", {"w": BIG}, **LAYOUTS[layout])
    r = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), block_bytes=4096)
    s = r.leaves[0].stats
    assert r.exit_code == 0 and s.streamed and s.shortcut_chunks == 1, s


def test_big_chunk_cut_short_the_same_way_on_both_sides_is_an_error(tmp_path):
    from test_streaming import BIG, save

    import streamdiff

    for side in ("a", "b"):
        save(tmp_path / side, {"w": BIG}, use_ocdbt=False)
        chunk = tmp_path / side / "w/0.0"
        chunk.write_bytes(chunk.read_bytes()[:-1])
    r = streamdiff.diff(str(tmp_path / "a"), str(tmp_path / "b"), block_bytes=4096)
    assert r.exit_code == 2 and r.leaves[0].status == "error", r.leaves[0]


def test_streamable_chunk_with_a_row_too_big_for_the_budget_is_refused(pair):
    """zstd streams a chunk a row at a time; a single row of 10**10 elements cannot be held."""
    a, b = pair("z2")
    for side in (a, b):
        edit_json(side / "w/.zarray", lambda md: md.update(shape=[2, 10**10], chunks=[2, 10**10]))
    r = run_sub(a, b, "-q")
    one_error_line(r, "one row of a chunk", "--max-memory")
    bounded(r)


def test_unstreamable_chunk_within_the_budget_is_decoded_whole_with_a_warning(pair):
    """A zlib chunk over the block size but well within --max-memory is still compared (numpy's
    count of mismatches), with a warning on the leaf instead of a refusal."""
    import streamdiff

    a, b = pair("z2")
    y = W.copy()
    y[3, 4] += 1
    md = {"shape": [64, 32], "chunks": [64, 32], "dtype": "<f4", "compressor": {"id": "zlib", "level": 1}}
    write_with_tensorstore(a / "w", md, False, W)
    write_with_tensorstore(b / "w", md, False, y)
    r = streamdiff.diff(str(a), str(b), block_bytes=4096)
    leaf = next(x for x in r.leaves if x.path == ("w",))
    assert leaf.status == "different" and leaf.stats.mismatches == int((W != y).sum())
    assert "cannot be streamed" in leaf.message and "within --max-memory" in leaf.message


def test_same_flipped_byte_in_an_ocdbt_chunk_on_both_sides_is_an_error(tmp_path):
    """Real MaxText OCDBT (zarr v3 shards): the same byte of one chunk's zstd frame header flipped in
    both copies. Equal bytes, but not a valid encoding: that leaf is an error, the rest equal."""
    import tensorstore as ts

    a, b = tmp_path / "a", tmp_path / "b"
    key = "opt_state.0.mu.params.decoder.layers.mlp.wi_0.kernel/c/0/0/0"
    for side in (a, b):
        shutil.copytree(MAXTEXT_STEP, side)
        kv = ts.KvStore.open({"driver": "file", "path": str(side / "items") + "/"}).result()
        root = ts.ocdbt.dump(kv).result()["versions"][-1]["root"]["location"]
        entries = ts.ocdbt.dump(kv, root).result()["entries"]
        where = next(e["indirect_value"] for e in entries if e["key"] == key.encode())
        _, prefix, rest = where.split(":", 2)  # value:<prefix>:<file>:<offset>:<length>
        file, offset, _ = rest.rsplit(":", 2)
        data = side / "items" / prefix / file
        raw = bytearray(data.read_bytes())
        assert raw[int(offset) : int(offset) + 4] == b"\x28\xb5\x2f\xfd"  # a zstd frame starts there
        raw[int(offset) + 5] ^= 0x01  # first byte of the frame content size
        data.write_bytes(bytes(raw))
    r = run_cli(a, b, "--json", "-", "-q")
    status = {x["path"]: x["status"] for x in r.json["leaves"]}
    assert r.code == 2 and status.pop("opt_state/0/mu/params/decoder/layers/mlp/wi_0/kernel") == "error"
    assert set(status.values()) == {"equal"}


def test_a_4_mib_row_streams_within_a_64m_budget_with_numpys_numbers(tmp_path):
    """The row check refuses rows no budget holds, not rows of a few MiB: one 32 MiB zstd chunk with
    4 MiB rows streams at --max-memory 64M (bench scenario iii) and gives numpy's numbers."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 1 << 20)).astype(np.float32)
    y = x.copy()
    y[5, 12345] += 1.0
    save(tmp_path / "a", {"w": x}, use_ocdbt=False)
    save(tmp_path / "b", {"w": y}, use_ocdbt=False)
    r = run_cli(tmp_path / "a", tmp_path / "b", "--max-memory", "64M", "--json", "-", "-q")
    assert r.code == 1, r.err
    leaf = r.json["leaves"][0]
    assert leaf["streamed"] is True and leaf["mismatches"] == 1 and leaf["max_abs_diff_index"] == [5, 12345]
    assert leaf["max_abs_diff"] == float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())


def test_array_name_with_a_nul_byte_is_an_error(tmp_path):
    """Found by the fuzz test: a legacy msgpack placeholder naming an array with a NUL byte."""
    a = tmp_path / "a"
    shutil.copytree(ROOT / "tests/data/legacy/legacy_0.5.10_default", a)
    raw = (a / "checkpoint").read_bytes()
    (a / "checkpoint").write_bytes(raw.replace(b"PLACEHOLDER://params.sharded", b"PLACEHOLDER://\x00arams.sharded"))
    r = run_cli(a, ROOT / "tests/data/legacy/legacy_0.5.10_default", "-q")
    assert r.code == 2 and "Traceback" not in r.err and r.err.startswith("streamdiff: error: "), r.err


def test_deeply_nested_zattrs_is_not_a_recursion_error(tmp_path):
    import zarr

    for side in ("a", "b"):
        g = zarr.open_group(str(tmp_path / side), mode="w", zarr_format=2)
        g.create_array("w", shape=(2,), dtype="f4")[:] = 1.0
    (tmp_path / "a/.zattrs").write_text("[" * 5000 + "]" * 5000)
    r = run_sub(tmp_path / "a", tmp_path / "b", "-q")
    assert r.code in (1, 2) and "Traceback" not in r.err and "RecursionError" not in r.err, r.err


def test_fifo_among_the_step_files_of_a_flax_folder_is_refused_not_a_hang(tmp_path):
    from flax import serialization

    root = tmp_path / "ck"
    root.mkdir()
    (root / "checkpoint_1").write_bytes(serialization.to_bytes({"w": np.ones(2, np.float32)}))
    os.mkfifo(root / "checkpoint_2")
    r = run_sub(root, root, "-q")
    one_error_line(r, "checkpoint_2", "FIFO")


def test_fifo_as_an_n5_chunk_is_an_error_not_a_hang(tmp_path):
    import tensorstore as ts

    for side in ("a", "b"):
        spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(tmp_path / side) + "/"}}
        spec["metadata"] = {"dimensions": [4], "blockSize": [2], "dataType": "float32", "compression": {"type": "raw"}}
        ts.open(spec, create=True).result().write(np.arange(4, dtype=np.float32)).result()
    chunk = tmp_path / "a/1"
    chunk.unlink()
    os.mkfifo(chunk)
    r = run_sub(tmp_path / "a", tmp_path / "b", "-q")
    one_error_line(r, "FIFO")
