"""Bad input: one line on stderr, exit 2, never a traceback; and the inputs are never written to."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from conftest import MAXTEXT, run_cli
from helpers import error_lines

GOOD = MAXTEXT / "v024_linen_scan/checkpoints"


def test_missing_path():
    error_lines(run_cli("/no/such/ckpt", GOOD), "no such file or directory")


def test_empty_dir(tmp_path):
    error_lines(run_cli(tmp_path, GOOD), "empty directory")


def test_plain_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    error_lines(run_cli(f, GOOD), "a file, not an Orbax checkpoint")


def test_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "x.txt").write_text("x")
    error_lines(run_cli(tmp_path, GOOD), "not an Orbax checkpoint")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--max-memory", "lots"], "--max-memory"),
        (["--atol", "-1"], "must be a finite number >= 0"),
        (["--atol", "x"], "--atol"),
        (["--jobs", "0"], "--jobs"),
        (["--bogus"], "No such option"),
        (["--step", "9"], "no step 9"),
        (["--item", "nope"], "no item 'nope'"),
    ],
)
def test_bad_options(args, needle):
    error_lines(run_cli(GOOD, GOOD, *args), needle)


def test_missing_argument():
    error_lines(run_cli(GOOD), "Missing argument")


def test_unsupported_scheme():
    error_lines(run_cli("s3://bucket/x", GOOD), "unsupported URL scheme")


def test_unreadable_metadata_json(corpus, copy_ckpt):
    root, _ = corpus
    ckpt = copy_ckpt(root / "chunked_zarr3")
    (ckpt / "_METADATA").write_text("{not json")
    error_lines(run_cli(ckpt, root / "chunked_zarr3"), "_METADATA: unreadable JSON")


def test_unreadable_zarray(corpus, copy_ckpt):
    root, _ = corpus
    ckpt = copy_ckpt(root / "std_noocdbt_zarr2")
    (ckpt / "sharded/.zarray").write_text("{bad")
    error_lines(run_cli(ckpt, root / "std_noocdbt_zarr2"), "sharded/.zarray: unreadable JSON")


def test_corrupt_ocdbt_manifest(corpus, copy_ckpt):
    root, _ = corpus
    ckpt = copy_ckpt(root / "chunked_zarr3")
    (ckpt / "manifest.ocdbt").write_bytes(b"garbage")
    error_lines(run_cli(ckpt, root / "chunked_zarr3"), "manifest.ocdbt")


def _largest_data_file(ckpt):
    files = [os.path.join(d, f) for d, _, fs in os.walk(ckpt / "ocdbt.process_0" / "d") for f in fs]
    return max(files, key=os.path.getsize)


def test_corrupt_chunk_names_the_leaf(corpus, copy_ckpt):
    """zstd data damaged inside the OCDBT data file: the leaves stored there are errors, the rest compare."""
    root, _ = corpus
    ckpt = copy_ckpt(root / "chunked_zarr2")
    path = _largest_data_file(ckpt)
    data = bytearray(open(path, "rb").read())
    for i in range(0, len(data), 997):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))
    r = run_cli(ckpt, root / "chunked_zarr2", "-q", "--json", "-")
    error_lines(r, "reading values failed")
    errors = {x["path"] for x in r.json["leaves"] if x["status"] == "error"}
    assert errors and errors <= {"np_big", "jax_big", "sharded_big"}
    assert any(f"streamdiff: error: {p}: " in r.err for p in errors)
    assert {x["path"]: x["status"] for x in r.json["leaves"]}["small"] == "equal"


def test_truncated_chunk(corpus, copy_ckpt):
    root, _ = corpus
    ckpt = copy_ckpt(root / "chunked_zarr3")
    os.truncate(_largest_data_file(ckpt), 1000)
    error_lines(run_cli(ckpt, root / "chunked_zarr3", "-q"), "reading values failed")


def test_truncated_and_missing_chunk_files_per_leaf_layout(corpus, copy_ckpt):
    root, _ = corpus
    ckpt = copy_ckpt(root / "chunked_noocdbt")
    os.truncate(ckpt / "np_big/0.0", 100)
    os.remove(ckpt / "jax_big/1.1")
    r = run_cli(ckpt, root / "chunked_noocdbt", "-q")
    error_lines(r, "np_big: reading values failed", "jax_big: reading values failed")


def test_missing_process_dir_is_an_error_not_zeros(corpus, copy_ckpt):
    """Copying a checkpoint without ocdbt.process_* breaks it; chunks must not read as fill value 0."""
    root, _ = corpus
    ckpt = copy_ckpt(root / "chunked_zarr3")
    for d, _, fs in os.walk(ckpt / "ocdbt.process_0"):
        for f in fs:
            os.remove(os.path.join(d, f))
    error_lines(run_cli(ckpt, root / "chunked_zarr3", "-q"), "reading values failed")


def _snapshot(root) -> dict[str, tuple[str, float]]:
    out = {}
    for d, dirs, fs in os.walk(root):
        for name in fs + dirs:
            p = os.path.join(d, name)
            st = os.stat(p)
            digest = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else "dir"
            out[os.path.relpath(p, root)] = (digest, st.st_mtime_ns)
    return out


def test_never_writes_to_inputs(corpus):
    root, _ = corpus
    targets = [root / "chunked_zarr3", root / "manager_default", root / "std_noocdbt_zarr2", GOOD]
    before = [_snapshot(t) for t in targets]
    run_cli(root / "chunked_zarr3", root / "chunked_zarr2", "-q")
    run_cli(root / "manager_default", root / "manager_default", "-q", "--step", "0")
    run_cli(root / "std_noocdbt_zarr2", root / "std_ocdbt_zarr2", "-q")
    run_cli(GOOD, GOOD, "--structure-only", "-q")
    assert [_snapshot(t) for t in targets] == before


def test_real_entry_points_exit_2_without_traceback(tmp_path):
    for cmd in ([sys.executable, "-m", "streamdiff"], [os.path.join(os.path.dirname(sys.executable), "streamdiff")]):
        p = subprocess.run(cmd + [str(tmp_path), str(GOOD)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("where", ["report.json", "1/items/_METADATA", "."])
def test_json_output_inside_an_input_is_refused_and_nothing_is_written(tmp_path, where):
    """streamdiff never writes to what it reads: not even its own report."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(GOOD, ckpt)
    before = {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}
    out = ckpt / where
    r = run_cli(ckpt, GOOD, "--json", out, "-q")
    assert r.code == 2 and "never writes to what it reads" in r.err, r.err
    r = run_cli("ls", ckpt, "--json", out)
    assert r.code == 2 and "never writes to what it reads" in r.err, r.err
    assert {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()} == before
