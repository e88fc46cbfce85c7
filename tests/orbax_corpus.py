"""Writes real Orbax checkpoints, one per layout variant, with the leaves each must hold.

Used by the test suite (session fixture) and runnable by hand:

    python tests/orbax_corpus.py OUT_DIR

Every checkpoint is written by real orbax / flax / jax (test-only dependencies). The expected leaves
are computed from the in-memory pytree at save time, independently of streamdiff's reader. The
variants cover what orbax writes: OCDBT on/off, zarr v2/v3, arrays sharded over 8 host CPU devices,
ml_dtypes, PRNG keys, strings, empty nodes, odd keys, chunking, manager layouts, unfinished saves,
flax NNX / Linen states, the orbax v1 API, and a real 2-process save.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

from helpers import free_port

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


VARIANTS = (
    "std_ocdbt_zarr2 std_noocdbt_zarr2 pytree_ocdbt_zarr3 pytree_noocdbt_zarr3 pytree_ocdbt_zarr2_strings "
    "pytree_nocompress pytree_nocompress_zarr3 dtypes_zarr2 dtypes_zarr3 prng_keys odd_keys odd_keys_rich_types "
    "int_dict_keys bare_leaf array_handler chunked_zarr2 chunked_zarr3 chunked_noocdbt ocdbt_small_target_file "
    "cast_on_save replica_separate_folder manager_default manager_composite manager_commit_file_items "
    "manager_unfinished_atomic_rename manager_unfinished_commit_file unfinished_single flax_nnx_state "
    "flax_nnx_pure_dict flax_nnx_optimizer flax_linen_scan maxtext_like_manager flax_linen_trainstate "
    "flax_training_checkpoints flax_msgpack_file orbax_v1_pytree orbax_v1_checkpointables multiprocess_ocdbt "
    "multiprocess_noocdbt multiprocess_manager"
).split()


def _key(k):
    import jax

    tu = jax.tree_util
    if isinstance(k, tu.SequenceKey):
        return str(k.idx)
    if isinstance(k, tu.FlattenedIndexKey):
        return str(k.key)
    if isinstance(k, tu.DictKey):
        return str(k.key)
    if isinstance(k, tu.GetAttrKey):
        return str(k.name)
    raise ValueError(k)


def expected_leaves(tree, dtype_overrides=None) -> list[dict]:
    """What a reader must find: path, kind, stored dtype and shape, per leaf, in flatten order."""
    import jax
    import numpy as np

    dtype_overrides = dtype_overrides or {}
    flat, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: x is None or (isinstance(x, (dict, list, tuple)) and len(x) == 0)
    )
    out = []
    for kp, v in flat:
        path = [_key(k) for k in kp]
        e: dict = {"path": path}
        if v is None or (isinstance(v, (dict, list, tuple)) and not v):
            e["kind"] = "empty"
        elif isinstance(v, str):
            e.update(kind="string", value=v)
        elif isinstance(v, (bool, int, float)) and not hasattr(v, "dtype"):
            e.update(kind="scalar", dtype=np.asarray(v).dtype.name, shape=[])
        elif jax.dtypes.issubdtype(getattr(v, "dtype", None), jax.dtypes.prng_key):
            kd = jax.random.key_data(v)
            e.update(kind="prng_key", dtype=np.dtype(kd.dtype).name, shape=list(kd.shape))
        else:
            shape = list(np.shape(v))
            kind = "array" if shape or isinstance(v, jax.Array) or type(v) is np.ndarray else "scalar"
            e.update(kind=kind, dtype=np.dtype(v.dtype).name, shape=shape)
        name = ".".join(path)
        if name in dtype_overrides:
            e["dtype"] = dtype_overrides[name]
        out.append(e)
    return out


def write_corpus(out: str, multiprocess: bool = True) -> dict:
    """Write every variant under `out`; returns {variant: {'items': {relpath: leaves}, 'invalid': [...]}}."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    _quiet()
    os.makedirs(out, exist_ok=True)
    index: dict = {}
    p = lambda *a: os.path.join(out, *a)  # noqa: E731
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))

    def put(x, spec):
        return jax.device_put(x, NamedSharding(mesh, spec))

    def add(name, items, invalid=()):
        index[name] = {
            "items": {rel: t if isinstance(t, list) else expected_leaves(t) for rel, t in items.items()},
            "invalid": list(invalid),
        }

    def pytree_save(path, tree, save_args=None, **kw):
        ocp.Checkpointer(ocp.PyTreeCheckpointHandler(**kw)).save(
            path, args=ocp.args.PyTreeSave(tree, save_args=save_args)
        )

    mixed = {
        "a": {"b": np.arange(12, dtype=np.float32).reshape(3, 4)},
        "sharded": put(jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32), P("data", "model")),
        "partly_replicated": put(jnp.ones((16, 8), jnp.bfloat16), P(None, "model")),
        "fully_replicated": put(jnp.arange(16 * 8, dtype=jnp.float32).reshape(16, 8), P()),
        "lst": [np.int32(7), np.zeros((2,), np.float16)],
        "tup": (1, 2.5),
        "py_int": 3,
        "py_float": 0.5,
        "py_bool": True,
        "np_f64": np.float64(1.25),
        "np_bool_arr": np.array([True, False]),
        "bf16": jnp.ones((4,), jnp.bfloat16),
        "i8": np.array([-1, 2], np.int8),
        "jax_scalar": jnp.float32(2.0),
        "none": None,
        "empty_dict": {},
        "empty_list": [],
        "with.dot": {"x": np.ones((2,), np.int64)},
    }
    for name, kw in (("std_ocdbt_zarr2", {}), ("std_noocdbt_zarr2", {"use_ocdbt": False})):
        ck = ocp.StandardCheckpointer(**kw)
        ck.save(p(name), mixed)
        ck.wait_until_finished()
        add(name, {name: mixed})

    mixed_s = dict(mixed, string="hello", string2='a"b/c~d')
    for name, kw in (
        ("pytree_ocdbt_zarr3", {"use_zarr3": True}),
        ("pytree_noocdbt_zarr3", {"use_ocdbt": False, "use_zarr3": True}),
        ("pytree_ocdbt_zarr2_strings", {}),
        ("pytree_nocompress", {"use_compression": False}),
        ("pytree_nocompress_zarr3", {"use_compression": False, "use_zarr3": True}),
    ):
        pytree_save(p(name), mixed_s, **kw)
        add(name, {name: mixed_s})

    dtree = {}
    for n in (
        "bfloat16 float16 float32 float64 float8_e4m3fn float8_e5m2 float4_e2m1fn int2 int4 int8 int16 int32 "
        "int64 uint8 uint16 uint32 uint64 bool complex64 complex128"
    ).split():
        dtree["np_" + n] = (np.arange(6) % 2).astype(jnp.dtype(n)).reshape(2, 3)
        if n not in ("float64", "int64", "uint64", "complex128"):
            dtree["jax_" + n] = (jnp.arange(6) % 2).astype(jnp.dtype(n)).reshape(2, 3)
    pytree_save(p("dtypes_zarr2"), dtree)
    add("dtypes_zarr2", {"dtypes_zarr2": dtree})
    pytree_save(p("dtypes_zarr3"), dtree, use_zarr3=True)
    add("dtypes_zarr3", {"dtypes_zarr3": dtree})

    keys = {
        "typed_key": jax.random.key(0),
        "typed_keys_batch": jax.random.split(jax.random.key(1), 4),
        "raw_uint32_key": jax.random.PRNGKey(0),
        "rbg_key": jax.random.key(0, impl="rbg"),
        "typed_keys_sharded": put(jax.random.split(jax.random.key(2), 8), P("data")),
    }
    pytree_save(p("prng_keys"), keys)
    add("prng_keys", {"prng_keys": keys})

    nt = collections.namedtuple("NT", ["mu", "nu"])
    odd = {
        "a/b": np.ones(2, np.float32),
        "x.y": {"z": np.ones(1)},
        "x": {"y": {"z2": np.ones(1)}},
        "ünï": np.ones(1),
        "sp ace": np.ones(1),
        "nt": nt(mu=np.ones(1), nu=2),
        "tup": (np.ones(1), (np.zeros(1),)),
        "empty_tuple": (),
        "str_leaf": 'a"b/c~d',
    }
    pytree_save(p("odd_keys"), odd)
    add("odd_keys", {"odd_keys": odd})
    from orbax.checkpoint._src.metadata.pytree_metadata_options import PyTreeMetadataOptions

    pytree_save(p("odd_keys_rich_types"), odd, pytree_metadata_options=PyTreeMetadataOptions(support_rich_types=True))
    add("odd_keys_rich_types", {"odd_keys_rich_types": odd})
    ikeys = {3: np.ones(1), 10: np.zeros(1), 2: {0: np.ones(1)}}
    pytree_save(p("int_dict_keys"), ikeys)
    add("int_dict_keys", {"int_dict_keys": ikeys})

    bare = np.arange(4, dtype=np.float32)
    pytree_save(p("bare_leaf"), bare)
    add("bare_leaf", {"bare_leaf": bare})
    ocp.Checkpointer(ocp.ArrayCheckpointHandler()).save(p("array_handler"), args=ocp.args.ArraySave(bare))
    add("array_handler", {"array_handler": expected_leaves({"checkpoint": bare})})

    big = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    ctree = {
        "np_big": big,
        "jax_big": jnp.asarray(big[:256]),
        "sharded_big": put(big, P("data", "model")),
        "small": np.arange(3, dtype=np.int32),
    }
    sa = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=64 * 1024), ctree)
    pytree_save(p("chunked_zarr2"), ctree, save_args=sa)
    add("chunked_zarr2", {"chunked_zarr2": ctree})
    pytree_save(p("chunked_zarr3"), ctree, save_args=sa, use_zarr3=True)
    add("chunked_zarr3", {"chunked_zarr3": ctree})
    pytree_save(p("chunked_noocdbt"), ctree, save_args=sa, use_ocdbt=False)
    add("chunked_noocdbt", {"chunked_noocdbt": ctree})
    ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).save(
        p("ocdbt_small_target_file"), args=ocp.args.PyTreeSave(ctree, ocdbt_target_data_file_size=256 * 1024)
    )
    add("ocdbt_small_target_file", {"ocdbt_small_target_file": ctree})
    cast_tree = {"w": jnp.ones((4, 4), jnp.float32), "x": np.arange(8, dtype=np.float32)}
    pytree_save(p("cast_on_save"), cast_tree, save_args={"w": ocp.SaveArgs(dtype=jnp.dtype("bfloat16")), "x": None})
    add("cast_on_save", {"cast_on_save": expected_leaves(cast_tree, {"w": "bfloat16"})})

    _replica_folder(p("replica_separate_folder"), mixed, add)

    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": 0}
    m = ocp.CheckpointManager(p("manager_default"), options=ocp.CheckpointManagerOptions(max_to_keep=3))
    for s in (0, 100):
        m.save(s, args=ocp.args.StandardSave(dict(state, step=s)))
    m.wait_until_finished()
    m.close()
    add("manager_default", {f"manager_default/{s}/default": dict(state, step=s) for s in (0, 100)})

    m = ocp.CheckpointManager(
        p("manager_composite"),
        options=ocp.CheckpointManagerOptions(step_prefix="ckpt", step_format_fixed_length=5),
        metadata={"model": "tiny"},
    )
    params = {"k": np.ones(3, np.float32)}
    m.save(
        7,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            params=ocp.args.PyTreeSave(params),
            extra=ocp.args.JsonSave({"lr": 0.1}),
        ),
        metrics={"loss": 1.5},
    )
    m.wait_until_finished()
    m.close()
    add(
        "manager_composite",
        {"manager_composite/ckpt_00007/state": state, "manager_composite/ckpt_00007/params": params},
    )

    commit_file = ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.COMMIT_FILE)
    m = ocp.CheckpointManager(
        p("manager_commit_file_items"),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, atomicity_options=commit_file),
    )
    m.save(1, args=ocp.args.Composite(items=ocp.args.StandardSave(state)))
    m.close()
    add("manager_commit_file_items", {"manager_commit_file_items/1/items": state})

    # Real failed saves: tensorstore rejects uint4 halfway through writing.
    good = {"w": np.arange(4096, dtype=np.float32).reshape(64, 64), "step": 1}
    bad = dict(good, poison=np.zeros(3, dtype=jnp.dtype("uint4")))
    for mode, name in (
        ("atomic_rename", "manager_unfinished_atomic_rename"),
        ("commit_file", "manager_unfinished_commit_file"),
    ):
        opts = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            atomicity_options=ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode(mode)),
        )
        m = ocp.CheckpointManager(p(name), options=opts)
        m.save(0, args=ocp.args.StandardSave(good))
        try:
            m.save(1, args=ocp.args.StandardSave(bad))
        except Exception:  # noqa: BLE001 - the failure is the point
            pass
        m.close()
        step1 = "1.orbax-checkpoint-tmp" if mode == "atomic_rename" else "1"
        add(name, {f"{name}/0/default": good}, invalid=[f"{name}/{step1}"])
    os.makedirs(p("unfinished_single"), exist_ok=True)
    try:
        pytree_save(p("unfinished_single", "ckpt"), bad)
    except Exception:  # noqa: BLE001
        pass
    add("unfinished_single", {}, invalid=["unfinished_single/ckpt.orbax-checkpoint-tmp"])

    _flax_variants(p, add)
    _orbax_v1(p, add)
    if multiprocess:
        _multiprocess(out, add)
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    return index


def _replica_folder(path, mixed, add):
    import jax
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.metadata import array_metadata_store as ams
    from orbax.checkpoint._src.serialization import type_handler_registry as thr
    from orbax.checkpoint._src.serialization import type_handlers as th

    handlers = [(t, h) for t, h in thr._DEFAULT_TYPE_HANDLERS if t is not jax.Array]  # noqa: SLF001
    handler = th.ArrayHandler(
        use_replica_parallel=True, enable_replica_parallel_separate_folder=True, array_metadata_store=ams.Store()
    )
    reg = thr.create_type_handler_registry(*handlers, (jax.Array, handler))
    rtree = {k: mixed[k] for k in ("sharded", "partly_replicated", "fully_replicated")}
    ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=reg)).save(path, args=ocp.args.PyTreeSave(rtree))
    add("replica_separate_folder", {"replica_separate_folder": rtree})


def _flax_variants(p, add):
    import flax
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    import orbax.checkpoint as ocp
    from flax import nnx
    from flax.training import checkpoints as flax_ckpts
    from flax.training import train_state

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)
            self.l2 = nnx.Linear(8, 2, rngs=rngs, param_dtype=jnp.bfloat16)
            self.rngs = rngs

    model = MLP(nnx.Rngs(0, dropout=1))
    st = nnx.state(model)
    ck = ocp.StandardCheckpointer()
    ck.save(p("flax_nnx_state"), st)
    ck.wait_until_finished()
    add("flax_nnx_state", {"flax_nnx_state": st})
    pure = nnx.to_pure_dict(st)
    ck.save(p("flax_nnx_pure_dict"), pure)
    ck.wait_until_finished()
    add("flax_nnx_pure_dict", {"flax_nnx_pure_dict": pure})
    ost = nnx.state(nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param))
    ck.save(p("flax_nnx_optimizer"), ost)
    ck.wait_until_finished()
    add("flax_nnx_optimizer", {"flax_nnx_optimizer": ost})

    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            h = nn.Dense(8, name="mlp")(x)
            return nn.LayerNorm(name="norm")(h), None

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Embed(16, 8, name="token_embedder")(x)
            scanned = nn.scan(
                Layer,
                variable_axes={"params": 1},
                split_rngs={"params": True},
                in_axes=(nn.broadcast,),
                length=3,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = scanned(name="layers")(x, None)
            return nn.Dense(16, name="logits")(x)

    mdl = Decoder()
    variables = mdl.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
    tx = optax.adam(1e-3)
    lstate = {"params": variables, "opt_state": tx.init(variables["params"]), "step": 3}
    ck.save(p("flax_linen_scan"), lstate)
    ck.wait_until_finished()
    add("flax_linen_scan", {"flax_linen_scan": lstate})
    m = ocp.CheckpointManager(
        p("maxtext_like_manager"), options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    )
    m.save(0, args=ocp.args.Composite(items=ocp.args.PyTreeSave(lstate)))
    m.close()
    add("maxtext_like_manager", {"maxtext_like_manager/0/items": lstate})
    tstate = train_state.TrainState.create(apply_fn=mdl.apply, params=variables["params"], tx=tx)
    ck.save(p("flax_linen_trainstate"), tstate)
    ck.wait_until_finished()
    add("flax_linen_trainstate", {"flax_linen_trainstate": tstate})
    tree = {"params": variables["params"], "step": 3}
    flax_ckpts.save_checkpoint(p("flax_training_checkpoints"), tree, step=3, keep=2)
    add("flax_training_checkpoints", {"flax_training_checkpoints/checkpoint_3": tree})
    old = flax.config.flax_use_orbax_checkpointing
    flax.config.update("flax_use_orbax_checkpointing", False)
    try:
        flax_ckpts.save_checkpoint(p("flax_msgpack_file"), tree, step=3, keep=2)
    finally:
        flax.config.update("flax_use_orbax_checkpointing", old)
    add("flax_msgpack_file", {"flax_msgpack_file/checkpoint_3": tree})


def _orbax_v1(p, add):
    import jax.numpy as jnp
    import numpy as np
    import orbax.checkpoint.experimental.v1 as ocp1

    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": jnp.ones(3, jnp.bfloat16), "step": 4}
    ocp1.save_pytree(p("orbax_v1_pytree"), tree)
    item = next(d for d in os.listdir(p("orbax_v1_pytree")) if os.path.isdir(p("orbax_v1_pytree", d)))
    add("orbax_v1_pytree", {f"orbax_v1_pytree/{item}": tree})
    ocp1.save_checkpointables(p("orbax_v1_checkpointables"), {"state": tree, "extra": {"note": "x"}})
    add(
        "orbax_v1_checkpointables",
        {"orbax_v1_checkpointables/state": tree, "orbax_v1_checkpointables/extra": {"note": "x"}},
    )


def _multiprocess(out, add):
    """Two real JAX processes (jax.distributed on CPU): per-process OCDBT stores merged at the root."""
    port = str(free_port())
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker-mp", out, str(rank), port],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for rank in (0, 1)
    ]
    errs = [pr.communicate(timeout=180)[1] for pr in procs]
    if any(pr.returncode for pr in procs):
        raise RuntimeError("multiprocess save failed: " + b"\n".join(errs).decode()[-2000:])
    with open(os.path.join(out, "mp_expected.json")) as f:
        leaves = json.load(f)
    for name in ("multiprocess_ocdbt", "multiprocess_noocdbt"):
        add(name, {name: leaves})
    add("multiprocess_manager", {"multiprocess_manager/10/default": leaves})


def _worker_mp(out: str, rank: int, port: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=rank)
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    _quiet()
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    g = np.arange(128 * 64, dtype=np.float32).reshape(128, 64)

    def mk(shape, spec, src):
        return jax.make_array_from_callback(shape, NamedSharding(mesh, spec), lambda idx: src[idx])

    tree = {
        "w": mk((128, 64), P("data", "model"), g),
        "b": mk((64,), P("model"), g[0]),
        "r": mk((8, 4), P(), g[:8, :4]),
        "np_host": np.ones((3,), np.float32),
        "step": 5,
    }
    for name, kw in (("multiprocess_ocdbt", {}), ("multiprocess_noocdbt", {"use_ocdbt": False})):
        ck = ocp.StandardCheckpointer(**kw)
        ck.save(os.path.join(out, name), tree)
        ck.wait_until_finished()
    m = ocp.CheckpointManager(os.path.join(out, "multiprocess_manager"))
    m.save(10, args=ocp.args.StandardSave(tree))
    m.wait_until_finished()
    m.close()
    if rank == 0:
        leaves = expected_leaves(tree)
        with open(os.path.join(out, "mp_expected.json"), "w") as f:
            json.dump(leaves, f)
    jax.distributed.shutdown()


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from absl import logging as alog

        alog.set_verbosity(alog.FATAL)
    except ImportError:
        pass


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker-mp":
        _worker_mp(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 2:
        idx = write_corpus(sys.argv[1])
        print(f"wrote {len(idx)} variants to {sys.argv[1]}")
    else:
        print(__doc__)
        sys.exit(2)
