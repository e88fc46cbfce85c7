"""gs:// through tensorstore's real `gcs` driver, against fake-gcs-server on 127.0.0.1.

Checkpoints are uploaded into the emulator; every verdict must equal the local one. Bad buckets,
paths and endpoints give one line and exit 2 within seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import MAXTEXT, run_cli
from gcs_emulator import Emulator, tensorstore_env, upload
from helpers import free_port, save

BUCKET = "ckpts"
MAXTEXT_UPLOADS = ("v024_linen_scan", "v024_linen_scan_seed1", "conv_pr283f88b_linen_scan_to_nnx", "pr283f88b_nnx_scan")


@pytest.fixture(scope="module")
def gcs(corpus):
    root, _ = corpus
    with Emulator() as emu:
        os.environ.update(tensorstore_env(emu.url))  # before tensorstore's first GCS use
        emu.create_bucket(BUCKET)
        for name in MAXTEXT_UPLOADS:
            upload(str(MAXTEXT / name), BUCKET, name)
        for name in ("manager_unfinished_commit_file", "chunked_zarr3", "chunked_noocdbt"):
            upload(str(root / name), BUCKET, name)
        yield emu


def gs(path: str) -> str:
    return f"gs://{BUCKET}/{path}"


def errors_only(stderr: str) -> list[str]:
    """stderr lines minus tensorstore's one-time INFO notice about the emulator's test token."""
    return [line for line in stderr.strip().splitlines() if not line[:1] == "I" or not line[1:5].isdigit()]


@pytest.mark.parametrize(
    "a,b,code,different",
    [
        ("v024_linen_scan/checkpoints", "conv_pr283f88b_linen_scan_to_nnx/items", 0, 0),
        ("v024_linen_scan/checkpoints", "v024_linen_scan_seed1/checkpoints", 1, 36),
        ("v024_linen_scan/checkpoints", "pr283f88b_nnx_scan/checkpoints", 1, 36),
    ],
)
def test_same_verdicts_as_local(gcs, a, b, code, different):
    local = run_cli(MAXTEXT / a, MAXTEXT / b, "--json", "-", "-q")
    remote = run_cli(gs(a), gs(b), "--json", "-", "-q")
    mixed = run_cli(gs(a), MAXTEXT / b, "--json", "-", "-q")
    for r in (local, remote, mixed):
        assert r.code == code and r.json["summary"]["different"] == different, r.err
    strip = ("seconds", "bytes_read", "requests")
    for r in (remote, mixed):
        assert [{k: v for k, v in x.items() if k not in strip} for x in r.json["leaves"]] == [
            {k: v for k, v in x.items() if k not in strip} for x in local.json["leaves"]
        ]
    assert remote.json["summary"]["requests"] > 0 and remote.json["summary"]["bytes_read"] > 0


def test_chunked_layouts_over_gcs_identical_to_local(gcs, corpus):
    root, _ = corpus
    for name in ("chunked_zarr3", "chunked_noocdbt"):
        r = run_cli(gs(name), root / name, "--json", "-", "-q", "--max-memory", "64M")
        assert r.code == 0 and r.json["identical"], r.err


def test_streams_big_chunks_over_gcs(gcs, corpus):
    root, _ = corpus
    import streamdiff

    r = streamdiff.diff(gs("chunked_zarr3"), str(root / "chunked_zarr3"), block_bytes=4096, shortcut=False)
    assert r.exit_code == 0 and any(x.stats and x.stats.streamed for x in r.leaves)


def test_unfinished_step_on_gcs(gcs):
    r = run_cli(gs("manager_unfinished_commit_file"), gs("manager_unfinished_commit_file"), "--json", "-", "-q")
    assert r.code == 0 and "step 0 (latest committed" in " ".join(r.json["notes"]["a"])
    bad = run_cli(gs("manager_unfinished_commit_file/1"), gs("manager_unfinished_commit_file/0"))
    assert bad.code == 2 and "unfinished" in bad.err


def test_step_without_commit_file_is_unfinished_on_object_storage(gcs, copy_ckpt):
    """On GCS only commit_success.txt proves a save finished (orbax's commit-file mode)."""
    local = copy_ckpt(MAXTEXT / "v024_linen_scan_seed1")
    os.remove(local / "checkpoints/1/commit_success.txt")
    upload(str(local), BUCKET, "nocommit")
    assert run_cli(local / "checkpoints/1", MAXTEXT / "v024_linen_scan_seed1/checkpoints/1").code == 0  # local: ok
    r = run_cli(gs("nocommit/checkpoints/1"), gs("v024_linen_scan_seed1/checkpoints/1"))
    assert r.code == 2 and "commit_success.txt" in r.err


def test_t5x_gfile_specs_read_from_the_checkpoints_own_bucket(gcs, copy_ckpt):
    """T5X's `gfile` kvstore means: this path, relative to the checkpoint, on its own storage."""
    from writers_msgpack import open_t5x_array, t5x_specs

    a = copy_ckpt(MAXTEXT.parent / "t5x/tiny_t5_checkpoint_1", "t5x_a")
    b = copy_ckpt(MAXTEXT.parent / "t5x/tiny_t5_checkpoint_1", "t5x_b")
    for d in (a, b):
        os.chmod(d, 0o755)
        for f in d.rglob("*"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
    spec = t5x_specs(b)["optimizer"]["state"]["param_states"]["kernel"]
    t = open_t5x_array(b, spec)
    t.write(t.read().result() + 1.0).result()
    upload(str(a), BUCKET, "t5x_a")
    upload(str(b), BUCKET, "t5x_b")
    assert run_cli(gs("t5x_a"), a, "-q").code == 0
    local = run_cli(a, b, "--json", "-", "-q")
    remote = run_cli(gs("t5x_a"), gs("t5x_b"), "--json", "-", "-q")
    assert local.code == remote.code == 1, remote.err
    strip = ("seconds", "bytes_read", "requests")
    assert [{k: v for k, v in x.items() if k not in strip} for x in remote.json["leaves"]] == [
        {k: v for k, v in x.items() if k not in strip} for x in local.json["leaves"]
    ]
    kernel = {x["path"]: x for x in remote.json["leaves"]}["optimizer/state/param_states/kernel"]
    assert kernel["mismatches"] == 50 and kernel["max_abs_diff"] == pytest.approx(1.0)


def test_flax_msgpack_file_in_a_bucket_is_read_and_a_torch_file_refused(gcs, tmp_path):
    from writers_msgpack import write_flax_msgpack

    f = write_flax_msgpack(tmp_path / "flax", {"params/w": np.arange(4, dtype=np.float32)})
    g = write_flax_msgpack(tmp_path / "flax2", {"params/w": np.arange(4, dtype=np.float32) + 1})
    upload(str(f.parent), BUCKET, "flaxfile")
    upload(str(g.parent), BUCKET, "flaxfile2")
    upload(str(MAXTEXT.parent / "foreign/torch"), BUCKET, "torch")
    assert run_cli(gs("flaxfile/state.msgpack"), f, "-q").code == 0
    r = run_cli(gs("flaxfile/state.msgpack"), gs("flaxfile2/state.msgpack"), "--json", "-", "-q")
    assert r.code == 1 and r.json["leaves"][0]["path"] == "params/w" and r.json["leaves"][0]["mismatches"] == 4
    bad = run_cli(gs("torch/model.pt"), f)
    assert bad.code == 2 and "a PyTorch checkpoint (torch.save zip), not supported" in bad.err, bad.err


@pytest.mark.parametrize(
    "path,needle",
    [
        ("gs://no-such-bucket/x", "no objects under this path"),
        (f"gs://{BUCKET}/missing/path", "no objects under this path"),
        ("gs://B/x", "Invalid GCS bucket name"),
        ("gs:///x", "without a bucket"),
    ],
)
def test_missing_bucket_or_object_is_one_line_exit_2(gcs, path, needle):
    t0 = time.monotonic()
    r = run_cli(path, gs("v024_linen_scan/checkpoints"))
    assert r.code == 2 and needle in r.err and len(errors_only(r.err)) == 1, r.err
    assert time.monotonic() - t0 < 10


def test_unreachable_endpoint_fails_fast():
    """A dead endpoint: bounded retries, one line, exit 2, well under 10 s."""
    env = dict(os.environ, **tensorstore_env(f"http://127.0.0.1:{free_port()}"))
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "streamdiff", "gs://somebucket/ckpt", "gs://somebucket/ckpt2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - t0
    lines = errors_only(p.stderr)
    assert p.returncode == 2 and len(lines) == 1 and "unreachable" in lines[0], p.stderr
    assert elapsed < 10, elapsed


def test_structure_only_requests_do_not_grow_with_leaves(gcs, tmp_path):
    """30 leaves and 1200 leaves: zarr metadata is inline in the OCDBT B-tree, so a structure-only
    diff costs the same small number of requests for both (README: about 15 either way)."""
    requests = {}
    for n in (30, 1200):
        tree = {f"layer_{i}": {"w": np.full((2,), i, np.float32)} for i in range(n)}
        save(tmp_path / f"leaves_{n}", tree, use_zarr3=True)
        upload(str(tmp_path / f"leaves_{n}"), BUCKET, f"leaves_{n}")
        r = run_cli(gs(f"leaves_{n}"), gs(f"leaves_{n}"), "--structure-only", "--json", "-", "-q", "--stats")
        assert r.code == 0 and r.json["summary"]["leaves"] == n, r.err
        assert "storage:" in r.err
        requests[n] = r.json["summary"]["requests"]
    assert requests[1200] <= requests[30] + 2 and requests[1200] < 40, requests


def test_ls_on_gcs_lists_what_it_lists_locally(gcs):
    local = run_cli("ls", MAXTEXT / "v024_linen_scan/checkpoints", "--json", "-")
    remote = run_cli("ls", gs("v024_linen_scan/checkpoints"), "--json", "-")
    assert remote.code == 0 and errors_only(remote.err) == [], remote.err
    lo, re_ = local.json, remote.json
    assert (
        (re_["step"], re_["steps"], re_["layout"])
        == (lo["step"], lo["steps"], lo["layout"])
        == (1, [0, 1], "maxtext-linen")
    )
    assert re_["items"][0]["leaves"] == lo["items"][0]["leaves"]  # stored bytes too, from the same B-tree


def test_zarr_group_on_gcs_same_verdict_as_local(gcs, tmp_path):
    """A zarr-python v3 group (nested groups, a fill-value chunk not stored) and an n5 array: found
    by one listing of the bucket prefix, chunks read through tensorstore's gcs driver."""
    import tensorstore as ts
    import zarr

    for name, value in (("a", 1.0), ("b", 1.5)):
        root = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=3)
        root.attrs["run"] = "x"
        layer = root.create_group("model").create_group("layer_0")
        w = layer.create_array("w", shape=(4, 4), chunks=(2, 2), dtype="f4")
        w[2:, 2:] = value  # three chunks hold the fill value 0 and are not stored
        n5 = {"driver": "n5", "kvstore": {"driver": "file", "path": str(tmp_path / name / "n5w") + "/"}}
        n5["metadata"] = {"dimensions": [3], "blockSize": [2], "dataType": "float32", "compression": {"type": "raw"}}
        ts.open(n5, create=True).result().write(np.full((3,), value, np.float32)).result()
        upload(str(tmp_path / name), BUCKET, f"zarr_{name}")
    same = run_cli(gs("zarr_a"), tmp_path / "a", "--json", "-", "-q")
    assert same.code == 0 and same.json["identical"], same.err
    local = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")
    remote = run_cli(gs("zarr_a"), gs("zarr_b"), "--json", "-", "-q")
    for r in (local, remote):
        assert r.code == 1 and [x["path"] for x in r.json["leaves"] if x["status"] != "equal"] == [
            "model/layer_0/w",
            "n5w",
        ], r.err
    strip = ("seconds", "bytes_read", "requests")
    assert [{k: v for k, v in x.items() if k not in strip} for x in remote.json["leaves"]] == [
        {k: v for k, v in x.items() if k not in strip} for x in local.json["leaves"]
    ]


def test_zarr_folder_marker_objects_are_not_data(gcs, tmp_path):
    """Zero-byte 'folder/' objects (the GCS console's and gcsfuse's folders) are listed keys; in a
    zarr store they are neither files to report as not compared nor chunks the array lacks."""
    import tensorstore as ts
    import zarr

    root = zarr.open_group(str(tmp_path / "m"), mode="w", zarr_format=3)
    root.create_group("model").create_array("w", data=np.arange(4, dtype="f4"))
    upload(str(tmp_path / "m"), BUCKET, "zarr_markers")
    kv = ts.KvStore.open({"driver": "gcs", "bucket": BUCKET, "path": "zarr_markers/"}).result()
    for marker in ("model/", "model/w/", "model/w/c/"):
        kv.write(marker, b"").result()
    assert "model/w/" in [k.decode() for k in kv.list().result()]
    r = run_cli(gs("zarr_markers"), tmp_path / "m", "--json", "-", "-q")
    assert r.code == 0 and r.json["identical"], r.err
    assert {x["path"]: x["status"] for x in r.json["leaves"]} == {"model/w": "equal"}


def test_orbax_item_data_the_tree_does_not_name_is_not_compared_on_gcs(gcs, tmp_path):
    """Over GCS as locally: an array written into the item's OCDBT store and a file beside it, not in
    `_METADATA`, are not_compared leaves; zero-byte folder markers (an empty folder) are not data."""
    import tensorstore as ts

    tree = {"w": np.arange(8, dtype=np.float32)}
    for name, value in (("a", 1.0), ("b", 2.0)):
        save(tmp_path / name, tree)
        base = {"driver": "file", "path": str(tmp_path / name) + "/"}
        spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": base, "path": "extra/"}}
        t = ts.open(spec, create=True, dtype=ts.float32, shape=[2]).result()
        t.write(np.full((2,), value, np.float32)).result()
        (tmp_path / name / "notes.txt").write_text(name)
        upload(str(tmp_path / name), BUCKET, f"unref_{name}")
    save(tmp_path / "clean", tree)
    upload(str(tmp_path / "clean"), BUCKET, "unref_clean")
    kv = ts.KvStore.open({"driver": "gcs", "bucket": BUCKET, "path": "unref_clean/"}).result()
    for marker in ("leftover/", "d/"):
        kv.write(marker, b"").result()
    clean = run_cli(gs("unref_clean"), tmp_path / "clean", "--json", "-", "-q")
    assert clean.code == 0 and clean.json["identical"], clean.err
    local = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")
    remote = run_cli(gs("unref_a"), gs("unref_b"), "--json", "-", "-q")
    for r in (local, remote):
        assert r.code == 2, r.err
        assert {x["path"]: x["status"] for x in r.json["leaves"]} == {
            "w": "equal",
            "extra": "not_compared",
            "notes.txt": "not_compared",
        }


def test_streamed_chunks_read_ahead_on_both_sides_over_gcs_match_chunk_for_chunk(gcs, corpus):
    """Both sides remote, every chunk streamed: each side issues the next chunk's first reads ahead
    of its task (chunks.RawStore.start_next; sharded zarr3 under OCDBT, and zarr3 without OCDBT).
    The same values saved two ways compare identical, so no chunk was read in another's place."""
    import streamdiff

    r = streamdiff.diff(gs("chunked_zarr3"), gs("chunked_noocdbt"), block_bytes=4096, shortcut=False)
    assert r.exit_code == 0 and r.identical
    assert sum(1 for x in r.leaves if x.stats and x.stats.streamed) >= 1


STREAM_SCRIPT = """
import json, sys, streamdiff
r = streamdiff.diff(sys.argv[1], sys.argv[2], block_bytes=4096, shortcut=False)
print(json.dumps([r.exit_code, sum(x.stats.blocks or 0 for x in r.leaves if x.stats and x.stats.streamed)]))
"""


def test_streamed_chunks_over_ocdbt_request_the_manifest_at_most_10_times_not_once_per_read(gcs):
    """Byte-range reads through an OCDBT kvstore at tensorstore's default staleness bound (the read's
    own time) first read `manifest.ocdbt` again, one more round trip before each read of a streamed
    chunk; the engine's reads trust the manifest cached since the run began. Counted at a proxy
    in front of the emulator: a handful of manifest requests (the reader's size probe and reads, the
    engine's reads, per side) for dozens of streamed chunks."""
    from fault_proxy import Fault, FaultProxy

    with FaultProxy(gcs.port) as proxy:
        proxy.fault = counter = Fault("status", "manifest.ocdbt", times=0)  # counts, never misbehaves
        env = dict(os.environ, **tensorstore_env(proxy.url))
        a = gs("chunked_zarr3")
        p = subprocess.run(
            [sys.executable, "-c", STREAM_SCRIPT, a, a], env=env, capture_output=True, text=True, timeout=240
        )
    code, streamed = json.loads(p.stdout.strip().splitlines()[-1])
    assert code == 0 and streamed >= 30, p.stderr
    assert 2 <= counter.seen <= 10, counter.seen


@pytest.mark.parametrize(
    "path",
    ["chunked_zarr3", "v024_linen_scan/checkpoints/1", "v024_linen_scan/checkpoints"],
    ids=["item", "step", "root-with-steps"],
)
def test_a_remote_prefix_is_listed_once_per_side_from_locating_to_the_built_tree(gcs, path):
    """Locating a side lists its prefix; reading its items needs the same keys (or a folder's share
    of them): each prefix is listed once per side, not again by the tree read (a round trip or more
    each). Counted at a proxy in front of the emulator, a path against itself (two sides)."""
    from fault_proxy import FaultProxy

    step = ["--step", "1"] if path.endswith("checkpoints") else []
    with FaultProxy(gcs.port) as proxy:
        env = dict(os.environ, **tensorstore_env(proxy.url))
        p = subprocess.run(
            [sys.executable, "-m", "streamdiff", gs(path), gs(path), "--structure-only", "-q", *step],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = list(proxy.requests)
    assert p.returncode == 0, p.stderr
    listings = [line.split(" ")[1] for line in lines if "/o?" in line]
    assert listings, lines
    assert max(listings.count(x) for x in set(listings)) == 2, listings


@pytest.mark.parametrize("where", ["root", "step"])
def test_a_file_the_tree_does_not_name_in_a_step_on_gcs_is_seen_whichever_prefix_was_listed(gcs, tmp_path, where):
    """Manager roots (orbax CheckpointManager) where only B's step 1 item holds a file `_METADATA` does
    not name: over GCS, given the roots with --step or the steps themselves (a listing of a prefix
    above the item, or of the step), the file is an only_b leaf and the exit is 1, as locally."""
    import orbax.checkpoint as ocp

    for name in ("a", "b"):
        with ocp.CheckpointManager(tmp_path / name) as mngr:
            mngr.save(1, args=ocp.args.StandardSave({"w": np.arange(8, dtype=np.float32)}))
            mngr.wait_until_finished()
        items = [p for p in (tmp_path / name / "1").iterdir() if p.is_dir()]
        assert len(items) == 1, items
        if name == "b":
            (items[0] / "notes.txt").write_text("not in the tree")
        upload(str(tmp_path / name), BUCKET, f"mgr_unref_{where}_{name}")
    args = ["--step", "1"] if where == "root" else []
    sub = "" if where == "root" else "/1"
    local = run_cli(f"{tmp_path / 'a'}{sub}", f"{tmp_path / 'b'}{sub}", "--json", "-", "-q", *args)
    remote = run_cli(gs(f"mgr_unref_{where}_a{sub}"), gs(f"mgr_unref_{where}_b{sub}"), "--json", "-", "-q", *args)
    for r in (local, remote):
        assert r.code == 1, r.err
        assert {x["path"]: x["status"] for x in r.json["leaves"]} == {"w": "equal", "notes.txt": "only_b"}
