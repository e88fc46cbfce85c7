"""T5X checkpoints, JSON items, flax msgpack files, refused formats, NNX saved directly (issue 9).

Fixtures: T5X's own test checkpoints (tests/data/t5x, copied from the t5x repository), TF and PyTorch
files written once by their real writers (tests/data/foreign), and everything else written here by the
real writer (tensorstore through T5X's spec, orbax JsonSave / v1 JsonHandler, flax.serialization,
safetensors, flax nnx). Numbers are checked against numpy on arrays read back by the writer's library.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, run_cli
from helpers import one_error_line, save
from writers_msgpack import (
    open_t5x_array,
    t5x_specs,
    write_flax_msgpack,
    write_flax_training_checkpoints,
    write_orbax_jsonsave,
    write_t5x,
)

T5X = DATA / "t5x" / "tiny_t5_checkpoint_1"
T5X_FLAX_FILE = DATA / "t5x" / "test_t5_tiny.checkpoint_0"
FOREIGN = DATA / "foreign"
KERNEL = "optimizer/state/param_states/kernel"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for d, dirs, files in os.walk(dst):  # the shipped copy may be read-only
        for n in dirs + files:
            os.chmod(os.path.join(d, n), 0o755 if n in dirs else 0o644)
    return dst


def _leaves(r) -> dict[str, dict]:
    return {x["path"]: x for x in r.json["leaves"]}


def _assert_numbers(leaf: dict, a: np.ndarray, b: np.ndarray) -> None:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    assert leaf["status"] == "different"
    assert leaf["mismatches"] == int(np.count_nonzero(d))
    assert leaf["max_abs_diff"] == pytest.approx(float(d.max()), rel=1e-12)
    assert tuple(leaf["max_abs_diff_index"]) == np.unravel_index(int(np.argmax(d)), d.shape)


# ------------------------------------------------------------------------------------------ T5X


def test_t5x_real_checkpoint_reads_each_spec_as_one_array_without_zarray(tmp_path):
    a = _copy(T5X, tmp_path / "a")
    assert not any(f == ".zarray" for _, _, fs in os.walk(a) for f in fs)  # the spec carries the metadata
    r = run_cli(a, _copy(T5X, tmp_path / "b"), "--json", "-", "-q")
    assert r.code == 0, r.err
    got = _leaves(r)
    assert not any("kvstore" in p or "metadata" in p for p in got), sorted(got)
    spec = t5x_specs(a)["optimizer"]["state"]["param_states"]["kernel"]
    ref = open_t5x_array(a, spec).read().result()
    assert got[KERNEL]["kind"] == "array" and got[KERNEL]["shape"] == list(ref.shape) == [10, 5]
    assert got[KERNEL]["dtype"] == "float64" and got[KERNEL]["count"] == ref.size
    assert got["optimizer/state/param_states/bias"]["dtype"] == "float32"
    assert got["optimizer/state/step"]["kind"] == "scalar"  # a msgpack numpy scalar, inline


def test_t5x_kernel_rewritten_through_the_spec_exits_1_with_numpy_numbers(tmp_path):
    a, b = _copy(T5X, tmp_path / "a"), _copy(T5X, tmp_path / "b")
    spec = t5x_specs(b)["optimizer"]["state"]["param_states"]["kernel"]
    tb = open_t5x_array(b, spec)
    arr = tb.read().result()
    arr[3, 2] += 2.0
    arr[7, 0] -= 0.25
    tb.write(arr).result()
    va = open_t5x_array(a, spec).read().result()
    vb = open_t5x_array(b, spec).read().result()
    r = run_cli(a, b, "--json", "-", "-q")
    assert r.code == 1, r.err
    got = _leaves(r)
    _assert_numbers(got[KERNEL], va, vb)
    assert [p for p, x in got.items() if x["status"] != "equal"] == [KERNEL]


def test_t5x_written_through_the_spec_with_zarray_bfloat16_and_a_root_of_steps(tmp_path):
    import ml_dtypes

    arrays = {"dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)}
    a = write_t5x(tmp_path / "a", arrays)
    arrays["dense/kernel"] = arrays["dense/kernel"].copy()
    arrays["dense/kernel"][2, 1] = 100
    b = write_t5x(tmp_path / "b", arrays)
    assert (a / "target.dense.kernel" / ".zarray").exists()
    r = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")  # model dirs: checkpoint_1 picked
    assert r.code == 1, r.err
    leaf = _leaves(r)["optimizer/target/dense/kernel"]
    assert leaf["dtype"] == "bfloat16"
    spec = t5x_specs(a)["optimizer"]["target"]["dense"]["kernel"]
    _assert_numbers(leaf, open_t5x_array(a, spec).read().result(), open_t5x_array(b, spec).read().result())
    assert "step 1" in " ".join(r.json["notes"]["a"])


def test_t5x_spec_on_an_unknown_kvstore_is_not_compared(tmp_path):
    from flax import serialization

    a = _copy(T5X, tmp_path / "a")
    state = t5x_specs(a)
    state["optimizer"]["state"]["param_states"]["bias"]["kvstore"] = {"driver": "memory"}
    (a / "checkpoint").write_bytes(serialization.msgpack_serialize(state))
    r = run_cli(a, a, "--json", "-", "-q")
    assert r.code == 2
    leaf = _leaves(r)["optimizer/state/param_states/bias"]
    assert leaf["status"] == "not_compared" and "kvstore 'memory'" in leaf["message"]


def test_t5x_tf_data_state_beside_the_arrays_is_not_compared_unless_a_rule_ignores_it(tmp_path):
    sides = [_copy(T5X, tmp_path / n) for n in ("a", "b")]
    for d in sides:  # T5X writes the tf.data iterator as train_ds-<shard>-of-<n> into the checkpoint dir
        for f in ("ckpt-1.index", "ckpt-1.data-00000-of-00001"):
            shutil.copy(FOREIGN / "tf_checkpoint" / f, d / f"train_ds-000-of-001{f[6:]}")
    r = run_cli(*sides, "--json", "-", "-q")
    assert r.code == 2
    got = _leaves(r)
    assert got["train_ds-000-of-001.index"]["status"] == "not_compared"
    assert "TensorFlow" in got["train_ds-000-of-001.index"]["message"]
    assert got[KERNEL]["status"] == "equal"
    rules = tmp_path / "ignore.toml"
    rules.write_text('[[rule]]\nop = "ignore"\npath = "train_ds-*"\n')
    r = run_cli(*sides, "--rules", rules, "--json", "-", "-q")
    assert r.code == 0 and len(r.json["ignored"]["a"]) == 2, r.out


def _t5x_orbax_era(root: Path, kernel: np.ndarray, dataset_files: bool) -> Path:
    """T5X's OrbaxCheckpointManagerInterface layout: `checkpoint_<step>/state` (PyTreeCheckpointHandler,
    OCDBT) of `train_state.state_dict()` naming, and a `dataset` item (tf.data state, or nothing)."""
    import orbax.checkpoint as ocp

    m = ocp.CheckpointManager(
        root,
        options=ocp.CheckpointManagerOptions(step_prefix="checkpoint", enable_async_checkpointing=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)},
    )
    state = {"target": {"dense": {"kernel": kernel}}, "state": {"step": np.int32(4), "param_states": {}}}
    m.save(4, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
    m.close()
    ds = root / "checkpoint_4" / "dataset"
    ds.mkdir()
    if dataset_files:
        for f in ("ckpt-1.index", "ckpt-1.data-00000-of-00001"):
            shutil.copy(FOREIGN / "tf_checkpoint" / f, ds / f"train_ds-000-of-001{f[6:]}")
    return root


def test_t5x_orbax_era_layout_compares_state_and_names_the_tf_dataset_item(tmp_path):
    k = np.arange(6, dtype=np.float32).reshape(2, 3)
    k2 = k.copy()
    k2[1, 1] = 9.0
    a = _t5x_orbax_era(tmp_path / "a", k, dataset_files=False)
    b = _t5x_orbax_era(tmp_path / "b", k2, dataset_files=False)
    r = run_cli(a, b, "--json", "-", "-q")
    assert r.code == 1, r.err
    _assert_numbers(_leaves(r)["target/dense/kernel"], k, k2)
    assert "empty item directories (nothing stored): dataset" in r.json["notes"]["a"]
    c = _t5x_orbax_era(tmp_path / "c", k, dataset_files=True)
    d = _t5x_orbax_era(tmp_path / "d", k, dataset_files=True)
    r = run_cli(c, d, "--json", "-", "-q")
    assert r.code == 2  # the tf.data state is stored and not compared: never "identical"
    leaf = _leaves(r)["dataset"]
    assert leaf["status"] == "not_compared" and "TensorFlow checkpoint" in leaf["message"]
    assert run_cli(c, d, "--item", "state", "-q").code == 0


# ------------------------------------------------------------------------------------ JSON items


def test_jsonsave_items_are_compared_exactly_and_named_under_the_item(tmp_path):
    arrays = {"w": np.ones((2, 2), np.float32)}
    a = write_orbax_jsonsave(tmp_path / "a", arrays)
    b = write_orbax_jsonsave(tmp_path / "b", arrays)
    same = run_cli(a, b, "--json", "-", "-q")
    assert same.code == 0, same.err
    got = _leaves(same)
    assert got["metadata/dataset"]["kind"] == "json" and got["config/lr"]["status"] == "equal"
    assert got["state/w"]["kind"] == "array"
    # Only the JSON item differs: before, this was "identical".
    import json

    meta = b / "metadata" / "metadata"
    doc = json.loads(meta.read_text())
    doc["dataset"] = "c4_v2"
    meta.write_text(json.dumps(doc))
    r = run_cli(a, b, "--json", "-", "-q")
    assert r.code == 1
    leaf = _leaves(r)["metadata/dataset"]
    assert leaf["status"] == "different" and leaf["kind"] == "json" and "'c4_v2'" in leaf["message"]
    assert [p for p, x in _leaves(r).items() if x["status"] != "equal"] == ["metadata/dataset"]


def test_json_item_given_directly_and_true_is_not_1(tmp_path):
    import orbax.checkpoint as ocp

    for name, flag in (("a", True), ("b", 1)):
        m = ocp.CheckpointManager(
            tmp_path / name, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
        )
        m.save(0, args=ocp.args.Composite(metadata=ocp.args.JsonSave({"flag": flag, "tags": ["x", "y"]})))
        m.close()
    r = run_cli(tmp_path / "a/0/metadata", tmp_path / "b/0/metadata", "--json", "-", "-q")
    assert r.code == 1, r.err
    got = _leaves(r)
    assert got["flag"]["status"] == "different" and got["tags/1"]["status"] == "equal"


def test_orbax_v1_json_checkpointable_data_json(tmp_path):
    import orbax.checkpoint.experimental.v1 as ocp1

    for name, lr in (("a", 0.1), ("b", 0.2)):
        registry = ocp1.handlers.local_registry()
        registry.add(ocp1.handlers.JsonHandler, checkpointable_name="config")
        ctx = ocp1.Context(checkpointables_options=ocp1.options.CheckpointablesOptions(registry=registry))
        with ctx:
            ocp1.save_checkpointables(tmp_path / name, {"state": {"w": np.ones(3, np.float32)}, "config": {"lr": lr}})
    assert (tmp_path / "a/config/data.json").exists()
    r = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q")
    assert r.code == 1, r.err
    got = _leaves(r)
    assert got["config/lr"]["status"] == "different" and got["state/w"]["status"] == "equal"


def test_unknown_children_of_a_step_are_not_compared_never_skipped(tmp_path):
    arrays = {"w": np.ones(3, np.float32)}
    sides = [write_orbax_jsonsave(tmp_path / n, arrays) for n in ("a", "b")]
    for s in sides:
        (s / "tokenizer").mkdir()
        (s / "tokenizer" / "vocab.model").write_bytes(b"\x00\x01")
        (s / "notes.txt").write_text("x")
    r = run_cli(*sides, "--json", "-", "-q")
    assert r.code == 2
    got = _leaves(r)
    assert got["tokenizer"]["status"] == "not_compared" and "vocab.model" in got["tokenizer"]["message"]
    assert got["notes.txt"]["status"] == "not_compared"
    assert r.json["verdict"] != "identical"


def test_older_managers_metrics_item_is_compared_as_json(tmp_path):
    """Older CheckpointManagers saved metrics as a JSON item `metrics/metrics` inside the step."""
    arrays = {"w": np.ones(3, np.float32)}
    sides = [write_orbax_jsonsave(tmp_path / n, arrays) for n in ("a", "b")]
    for s, loss in zip(sides, (1.5, 1.25)):
        (s / "metrics").mkdir()
        (s / "metrics" / "metrics").write_text(f'{{"loss": {loss}}}')
    r = run_cli(*sides, "--json", "-", "-q")
    assert r.code == 1
    leaf = _leaves(r)["metrics/loss"]
    assert leaf["kind"] == "json" and leaf["status"] == "different" and leaf["message"] == "1.5 vs 1.25"


# ------------------------------------------------------------------------------ flax msgpack files


def test_flax_msgpack_file_over_1_mib_is_read_and_a_changed_value_found(tmp_path):
    from flax import serialization

    assert T5X_FLAX_FILE.stat().st_size > 1 << 20
    state = serialization.msgpack_restore(T5X_FLAX_FILE.read_bytes())
    flat = {}

    def walk(node, keys):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, keys + (str(k),))
        else:
            flat["/".join(keys)] = node

    walk(state, ())
    same = run_cli(T5X_FLAX_FILE, T5X_FLAX_FILE, "--json", "-", "-q")
    assert same.code == 0, same.err
    assert sorted(_leaves(same)) == sorted(flat)
    name, arr = max(((k, v) for k, v in flat.items() if isinstance(v, np.ndarray)), key=lambda kv: kv[1].size)
    changed = arr.copy()
    changed.flat[17] += 1.0
    node = state
    for k in name.split("/")[:-1]:
        node = node[k]
    node[name.split("/")[-1]] = changed
    b = tmp_path / "changed.msgpack"
    b.write_bytes(serialization.msgpack_serialize(state))
    r = run_cli(T5X_FLAX_FILE, b, "--json", "-", "-q")
    assert r.code == 1, r.err
    got = _leaves(r)
    _assert_numbers(got[name], arr, changed)
    assert [p for p, x in got.items() if x["status"] != "equal"] == [name]


def test_flax_training_checkpoints_folder_picks_the_latest_step_file(tmp_path):
    w = np.arange(4, dtype=np.float32)
    root = write_flax_training_checkpoints(tmp_path / "run", {"params/w": w}, step=3)
    write_flax_training_checkpoints(tmp_path / "run", {"params/w": w * 2}, step=5)
    assert sorted(os.listdir(root)) == ["checkpoint_3", "checkpoint_5"]
    other = write_flax_msgpack(tmp_path / "file", {"params/w": w})
    r = run_cli(root, other, "--json", "-", "-q")
    assert r.code == 1, r.err
    _assert_numbers(_leaves(r)["params/w"], w * 2, w)
    assert "step 5" in " ".join(r.json["notes"]["a"])
    assert run_cli(root, other, "--step", "3", "-q").code == 0


# ---------------------------------------------------------------------------- refused by name


@pytest.mark.parametrize(
    "path, needle",
    [
        ("tf_checkpoint", "a TensorFlow checkpoint (.index + .data-*-of-*), not supported"),
        ("tf_checkpoint/ckpt-1.index", "part of a TensorFlow checkpoint, not supported"),
        ("tf_checkpoint/ckpt-1.data-00000-of-00001", "part of a TensorFlow checkpoint, not supported"),
        ("tf_checkpoint/checkpoint", "a TensorFlow checkpoint state file, not supported"),
        ("torch/model.pt", "a PyTorch checkpoint (torch.save zip), not supported"),
        ("torch/pytorch_model.bin", "a PyTorch checkpoint (torch.save zip), not supported"),
        ("torch/legacy.pt", "a PyTorch checkpoint (legacy pickle), not supported"),
        ("torch", "PyTorch checkpoint files (.pt/.pth/.bin), not supported"),
    ],
)
def test_tensorflow_and_pytorch_checkpoints_are_refused_by_name(path, needle):
    one_error_line(run_cli(FOREIGN / path, FOREIGN / path), needle)


def test_safetensors_file_is_refused_by_name(tmp_path):
    from safetensors.numpy import save_file

    f = tmp_path / "model.safetensors"
    save_file({"w": np.ones((2, 3), np.float32)}, str(f))
    one_error_line(run_cli(f, f), "a safetensors file, not supported")
    one_error_line(run_cli(tmp_path, tmp_path), "safetensors files, not supported")


# ------------------------------------------------------------------------------------ smaller


def test_older_manager_step_given_directly_is_read_like_under_its_root():
    step = DATA / "legacy" / "legacy_0.3.5_manager" / "1"
    assert not (step / "_CHECKPOINT_METADATA").exists()
    direct = run_cli(step, step, "--json", "-", "-q")
    assert direct.code == 0, direct.err
    root = run_cli(step.parent, step.parent, "--json", "-", "-q")
    assert sorted(_leaves(direct)) == sorted(_leaves(root))


def test_unfinished_ocdbt_save_with_metadata_says_unfinished(tmp_path):
    save(tmp_path / "ck", {"w": np.ones(4, np.float32)}, use_ocdbt=True)
    assert (tmp_path / "ck/_METADATA").exists() and (tmp_path / "ck/ocdbt.process_0").is_dir()
    (tmp_path / "ck/manifest.ocdbt").unlink()  # the merge into the root manifest never happened
    one_error_line(run_cli(tmp_path / "ck", tmp_path / "ck"), "unfinished save")


# --------------------------------------------------------------------------------- Flax NNX


def _nnx_saves(tmp_path: Path, bump: bool = False) -> dict[str, Path]:
    import orbax.checkpoint as ocp
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)
            self.l2 = nnx.Linear(8, 2, rngs=rngs)

    model = MLP(nnx.Rngs(0, dropout=1))
    ck = ocp.StandardCheckpointer()
    out = {
        "state": nnx.state(model),
        "pure": nnx.to_pure_dict(nnx.state(model)),
        "linen": {
            "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
            "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
        },
    }
    if bump:
        out["pure"]["l1"]["kernel"] = out["pure"]["l1"]["kernel"].at[1, 2].add(0.5)
    paths = {}
    for name, tree in out.items():
        paths[name] = tmp_path / name
        ck.save(paths[name], tree)
    ck.wait_until_finished()
    return paths


def test_nnx_state_saved_directly_pairs_with_its_pure_dict_with_no_flags(tmp_path):
    p = _nnx_saves(tmp_path)
    r = run_cli(p["state"], p["pure"], "--json", "-", "-q")
    assert r.code == 0, r.out
    assert any("flax-nnx-state (detected)" in n for n in r.json["notes"]["a"])
    got = _leaves(r)
    assert got["l1/kernel"]["status"] == "equal" and got["l1/kernel"]["source_a"] == "l1/kernel/value"
    assert got["drop/rngs/key"]["kind"] == "prng_key"


def test_nnx_state_against_a_linen_style_dict_leaves_only_rng_state_one_sided(tmp_path):
    p = _nnx_saves(tmp_path)
    r = run_cli(p["state"], p["linen"], "--json", "-", "-q")
    got = _leaves(r)
    assert {x["status"] for x in got.values()} == {"equal", "only_a"}
    one_sided = sorted(k for k, x in got.items() if x["status"] == "only_a")
    assert one_sided and all(k.startswith(("rngs/", "drop/rngs/")) for k in one_sided), one_sided
    assert got["bn/mean"]["status"] == "equal" and got["l2/kernel"]["status"] == "equal"


def test_nnx_state_against_a_changed_pure_dict_names_the_kernel(tmp_path):
    p = _nnx_saves(tmp_path, bump=True)
    r = run_cli(p["state"], p["pure"], "--json", "-", "-q")
    assert r.code == 1
    got = _leaves(r)
    assert [k for k, x in got.items() if x["status"] != "equal"] == ["l1/kernel"]
    assert got["l1/kernel"]["mismatches"] == 1 and got["l1/kernel"]["max_abs_diff_index"] == [1, 2]


# ------------------------------------------ containers, other files, -0.0, non-numeric dtypes


def _jsonsave(root: Path, doc: dict) -> Path:
    """A CheckpointManager step with a `state` PyTree item and a JsonSave `metadata` item holding `doc`."""
    import orbax.checkpoint as ocp

    m = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
    m.save(
        1,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave({"w": np.ones(3, np.float32)}), metadata=ocp.args.JsonSave(doc)
        ),
    )
    m.close()
    return root / "1"


def _not_equal(r) -> dict[str, dict]:
    return {p: x for p, x in _leaves(r).items() if x["status"] != "equal"}


def test_json_item_list_differs_from_object_keyed_by_index(tmp_path):
    lst = _jsonsave(tmp_path / "l", {"a": [5, 6], "n": {"x": 1}})
    dct = _jsonsave(tmp_path / "d", {"a": {"0": 5, "1": 6}, "n": {"x": 1}})
    r = run_cli(lst, dct, "--json", "-", "-q")
    assert r.code == 1, (r.out, r.err)
    got = _not_equal(r)
    assert sorted(got) == ["metadata/a/0", "metadata/a/1"]
    assert got["metadata/a/0"]["status"] == "different"
    assert got["metadata/a/0"]["message"] == "containers dict/list vs dict/dict"
    same = run_cli(lst, _jsonsave(tmp_path / "l2", {"a": [5, 6], "n": {"x": 1}}), "--json", "-", "-q")
    assert same.code == 0 and _leaves(same)["metadata/a/1"]["status"] == "equal", same.err


def test_json_item_empty_list_still_differs_from_empty_object(tmp_path):
    a = _jsonsave(tmp_path / "a", {"a": [], "n": {}})
    b = _jsonsave(tmp_path / "b", {"a": {}, "n": []})
    r = run_cli(a, b, "--json", "-", "-q")
    assert r.code == 1, r.err
    got = _not_equal(r)
    assert got["metadata/a"]["message"] == "empty node List vs Dict"
    assert got["metadata/n"]["message"] == "empty node Dict vs List"


def test_raw_msgpack_array_differs_from_map_keyed_by_index(tmp_path):
    import msgpack

    (tmp_path / "l.msgpack").write_bytes(msgpack.packb({"x": [1, 2]}))
    (tmp_path / "d.msgpack").write_bytes(msgpack.packb({"x": {"0": 1, "1": 2}}))
    r = run_cli(tmp_path / "l.msgpack", tmp_path / "d.msgpack", "--json", "-", "-q")
    assert r.code == 1, r.err
    got = _not_equal(r)
    assert sorted(got) == ["x/0", "x/1"]
    assert got["x/1"]["status"] == "different" and got["x/1"]["message"] == "containers dict/list vs dict/dict"


def test_flax_files_of_one_model_with_lists_stay_identical(tmp_path):
    """flax's to_state_dict writes lists as maps keyed "0", "1" on both sides: no container difference.
    The same tree packed by flax.serialization.msgpack_serialize keeps the list, and that is reported."""
    from flax import serialization

    tree = {"layers": [{"w": np.arange(3, dtype=np.float32)}, {"w": np.ones(2, np.float32)}], "step": 3}
    for name in ("a", "b"):
        (tmp_path / f"{name}.msgpack").write_bytes(serialization.to_bytes(tree))
    assert serialization.msgpack_restore((tmp_path / "a.msgpack").read_bytes())["layers"].keys() == {"0", "1"}
    r = run_cli(tmp_path / "a.msgpack", tmp_path / "b.msgpack", "--json", "-", "-q")
    assert r.code == 0, r.err
    assert sorted(_leaves(r)) == ["layers/0/w", "layers/1/w", "step"]
    (tmp_path / "raw.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    r = run_cli(tmp_path / "a.msgpack", tmp_path / "raw.msgpack", "--json", "-", "-q")
    assert r.code == 1, r.err
    got = _not_equal(r)
    assert sorted(got) == ["layers/0/w", "layers/1/w"]
    assert got["layers/0/w"]["message"] == "containers dict/dict/dict vs dict/list/dict"


@pytest.mark.parametrize("other", ["extra.json", "data.json"])
def test_other_files_in_a_json_item_dir_are_not_compared_never_skipped(tmp_path, other):
    sides = [_jsonsave(tmp_path / n, {"a": [5, 6]}) for n in ("a", "b")]
    for s, lr in zip(sides, (1, 2)):
        (s / "metadata" / other).write_text(f'{{"lr": {lr}}}')
    for pair, path in ((sides, f"metadata/{other}"), ([s / "metadata" for s in sides], other)):
        r = run_cli(*pair, "--json", "-", "-q")
        assert r.code == 2, (r.out, r.err)
        got = _not_equal(r)
        assert list(got) == [path], got
        assert got[path]["status"] == "not_compared" and "beside its document" in got[path]["message"]
        assert _leaves(r)["metadata/a/0" if path.startswith("metadata") else "a/0"]["status"] == "equal"


def test_folder_in_a_json_item_dir_is_not_compared(tmp_path):
    sides = [_jsonsave(tmp_path / n, {"a": 1}) for n in ("a", "b")]
    for s in sides:
        (s / "metadata" / "assets").mkdir()
        (s / "metadata" / "assets" / "vocab.txt").write_text("x")
    r = run_cli(*sides, "--json", "-", "-q")
    assert r.code == 2, r.err
    leaf = _not_equal(r)["metadata/assets"]
    assert leaf["status"] == "not_compared"
    assert leaf["message"].endswith("a directory in a JSON item directory beside its document: not read")


def test_json_file_beside_the_document_named_like_a_key_keeps_both(tmp_path):
    sides = [_jsonsave(tmp_path / n, {"extra.json": 1}) for n in ("a", "b")]
    for s in sides:
        (s / "metadata" / "extra.json").write_text("{}")
    r = run_cli(*sides, "--json", "-", "-q")
    assert r.code == 2, r.err
    got = _leaves(r)
    assert got["metadata/extra.json"]["status"] == "equal" and got["metadata/extra.json"]["kind"] == "json"
    assert got["metadata/extra.json (file)"]["status"] == "not_compared"


def test_json_zero_differs_from_negative_zero(tmp_path):
    from streamdiff.datatypes import json_equal

    assert not json_equal(0.0, -0.0) and not json_equal([-0.0], [0.0]) and json_equal(-0.0, -0.0)
    assert json_equal(0.0, 0.0) and not json_equal(0, 0.0)
    a = _jsonsave(tmp_path / "a", {"x": 0.0})
    b = _jsonsave(tmp_path / "b", {"x": -0.0})
    assert '"x": -0.0' in (b / "metadata" / "metadata").read_text()
    r = run_cli(a, b, "--json", "-", "-q")
    assert r.code == 1, r.err
    assert _not_equal(r)["metadata/x"]["message"] == "0.0 vs -0.0"


def _zarr2(path: Path, arr: np.ndarray) -> Path:
    import zarr

    if arr.dtype == object:  # zarr-python's variable-length strings
        z = zarr.open_array(path, mode="w", shape=arr.shape, dtype=str, zarr_format=2)
    else:
        z = zarr.create_array(store=path, shape=arr.shape, dtype=arr.dtype, chunks=arr.shape, zarr_format=2)
    z[...] = arr
    return path


@pytest.mark.parametrize(
    "a, b",
    [
        (np.array([1, 2], "M8[ns]"), np.array([1, 2], "m8[ns]")),
        (np.array(["ab", "cd"], "U2"), np.array(["ab", "cd"], object)),
        (np.array(["ab", "cd"], "U2"), np.array(["ab", "cd"], "U5")),
    ],
    ids=["datetime-vs-timedelta", "fixed-vs-object-str", "U2-vs-U5"],
)
def test_non_numeric_zarr_arrays_with_other_dtypes_differ(tmp_path, a, b):
    import zarr

    pa, pb = _zarr2(tmp_path / "a", a), _zarr2(tmp_path / "b", b)
    za, zb = zarr.open_array(pa, mode="r"), zarr.open_array(pb, mode="r")
    assert za.dtype != zb.dtype and za[...].tolist() == zb[...].tolist()  # only the dtype tells them apart
    r = run_cli(pa, pb, "--json", "-", "-q")
    assert r.code == 1, (r.out, r.err)
    leaf = _leaves(r)[""]
    assert leaf["status"] == "different" and leaf["kind"] == "json" and leaf["dtype_b"] != leaf["dtype"]
    assert leaf["message"] == f"dtype {leaf['dtype']} vs {leaf['dtype_b']}"
    rules = tmp_path / "rules.toml"
    rules.write_text(f'[[rule]]\nop = "allow_dtype"\npath = "**"\ndtypes = ["{leaf["dtype"]}", "{leaf["dtype_b"]}"]\n')
    assert run_cli(pa, pb, "--rules", rules, "-q").code == 0
    assert run_cli(pa, pa, "-q").code == 0


def test_files_beside_the_steps_of_a_root_are_named_in_the_notes(tmp_path):
    """A root resolves to one step; a flax folder's config.json beside the steps is said, not silent."""
    from flax.training import checkpoints

    for side, lr in (("a", 1.0), ("b", 2.0)):
        d = tmp_path / side
        checkpoints.save_checkpoint(str(d), {"w": np.ones(3, np.float32)}, step=2, keep=1)
        (d / "config.json").write_text(json.dumps({"lr": lr}))
    d = run_cli(tmp_path / "a", tmp_path / "b", "--json", "-", "-q").json
    assert "beside the steps, not compared: config.json" in d["notes"]["a"]


def test_msgpack_map_with_a_key_twice_is_unreadable_not_the_last_value(tmp_path):
    """{w: 1, w: 2} would read as {w: 2}: the first stored value silently dropped."""
    import msgpack

    dup = tmp_path / "dup.msgpack"
    dup.write_bytes(b"\x82\xa1w\x01\xa1w\x02")  # fixmap of two entries, both key "w"
    one = tmp_path / "one.msgpack"
    one.write_bytes(msgpack.packb({"w": 2}))
    r = run_cli(dup, one, "-q")
    assert r.code == 2 and "appears twice" in r.err, r.err
