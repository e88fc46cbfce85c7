"""Write MaxText-like checkpoint pairs with real orbax for the benchmarks.

    python bench/make_pair.py OUT --layers 8 --layout sharded|numpy

Writes OUT/a, OUT/b (b = a plus small noise on every float leaf) and OUT/a2 (a second save of the
same tree as a: identical chunk bytes, different manifests). The tree mirrors a MaxText Linen state
with scanned layers (layer axis 1): params, AdamW mu and nu, step and counts, all float32 except the
counters, saved with OCDBT + zarr3 as MaxText does.

* `sharded`: jax.Arrays sharded over 8 host CPU devices (mesh data=4, model=2): chunks = shards.
* `numpy`: numpy arrays, one chunk per array (what converters write): the largest is 128 MiB at
  emb=1024, mlp=4096, 8 layers.
* `crossed`: OUT/a sharded on mesh data=4, model=2 and OUT/b holding the same values sharded on mesh
  data=8, model=1 (another mesh, as after a resharded restart): chunk grids [256,8,2048] and
  [128,8,4096] for the MLP kernels, crossing each other (lcm block [256,8,4096]). No a2.

Size: about 240 MiB per layer per checkpoint, plus 384 MiB for the embedding and its moments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def model_shapes(
    layers: int, emb: int = 1024, mlp: int = 4096, heads: int = 8, head_dim: int = 128, vocab: int = 32768
):
    """Parameter shapes of a scanned llama-like decoder (layer axis 1, MaxText param_scan_axis=1)."""
    return {
        "decoder": {
            "layers": {
                "mlp": {
                    "wi_0": {"kernel": (emb, layers, mlp)},
                    "wi_1": {"kernel": (emb, layers, mlp)},
                    "wo": {"kernel": (mlp, layers, emb)},
                },
                "self_attention": {
                    "query": {"kernel": (emb, layers, heads, head_dim)},
                    "key": {"kernel": (emb, layers, heads, head_dim)},
                    "value": {"kernel": (emb, layers, heads, head_dim)},
                    "out": {"kernel": (heads, layers, head_dim, emb)},
                },
                "pre_self_attention_layer_norm": {"scale": (emb, layers)},
                "post_self_attention_layer_norm": {"scale": (emb, layers)},
            },
            "decoder_norm": {"scale": (emb,)},
        },
        "token_embedder": {"embedding": (vocab, emb)},
    }


def _map(fn, tree, path=()):
    if isinstance(tree, dict):
        return {k: _map(fn, v, path + (k,)) for k, v in tree.items()}
    return fn(path, tree)


def build_state(layers: int, seed: int, layout: str, noise: float = 0.0, mesh_shape: tuple[int, int] = (4, 2)):
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(*mesh_shape), ("data", "model"))

    def make(path, shape, salt):
        rng = np.random.default_rng(abs(hash((seed, salt) + path)) % (2**32))
        x = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        if noise:
            x += rng.standard_normal(shape, dtype=np.float32) * np.float32(noise)
        if layout == "numpy":
            return x
        if len(shape) >= 2 and shape[0] % mesh_shape[0] == 0 and shape[-1] % mesh_shape[1] == 0:
            spec = P("data", *([None] * (len(shape) - 2)), "model")  # first and last axes, as MaxText
        else:
            spec = P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    shapes = model_shapes(layers)
    params = {"params": _map(lambda p, s: make(p, s, "p"), shapes)}
    mu = {"params": _map(lambda p, s: make(p, s, "mu"), shapes)}
    nu = {"params": _map(lambda p, s: np.abs(make(p, s, "nu")) if layout == "numpy" else abs(make(p, s, "nu")), shapes)}
    count = np.int32(100)
    return {
        "params": params,
        "opt_state": ({"count": count, "mu": mu, "nu": nu}, None, {"count": count}),
        "step": np.int32(100),
    }


def save(path: str, state) -> None:
    import orbax.checkpoint as ocp

    if os.path.exists(path):
        shutil.rmtree(path)
    ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_zarr3=True)).save(path, args=ocp.args.PyTreeSave(state))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--layout", choices=["sharded", "numpy", "crossed"], default="sharded")
    args = ap.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("absl").setLevel(logging.ERROR)
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    if args.layout == "crossed":
        save(os.path.join(args.out, "a"), build_state(args.layers, seed=0, layout="sharded"))
        save(os.path.join(args.out, "b"), build_state(args.layers, seed=0, layout="sharded", mesh_shape=(8, 1)))
        print(f"wrote {args.out}/{{a,b}} (crossed, {args.layers} layers) in {time.time() - t0:.0f}s")
        return
    a = build_state(args.layers, seed=0, layout=args.layout)
    save(os.path.join(args.out, "a"), a)
    save(os.path.join(args.out, "a2"), a)
    del a
    b = build_state(args.layers, seed=0, layout=args.layout, noise=1e-4)
    save(os.path.join(args.out, "b"), b)
    print(f"wrote {args.out}/{{a,a2,b}} ({args.layout}, {args.layers} layers) in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
