"""Today's alternative, the baseline every ratio is against: MaxText's comparator approach.

Restore both checkpoints whole with orbax (as numpy arrays), then `np.allclose` per leaf. Needs RAM
for both checkpoints at once.

    python bench/baseline_restore.py CKPT_A CKPT_B [--atol 1e-6 --rtol 1e-5]
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def restore(path: str):
    import orbax.checkpoint as ocp

    ck = ocp.PyTreeCheckpointer()
    meta = ck.metadata(path)
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    import jax

    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=__import__("numpy").ndarray), tree)
    return ck.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def _path(p: str) -> str:
    """orbax wants absolute local paths; URLs (gs://) pass through."""
    return p if "://" in p else os.path.abspath(p)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--atol", type=float, default=1e-6)
    ap.add_argument("--rtol", type=float, default=1e-5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("absl").setLevel(logging.ERROR)
    import jax
    import numpy as np

    ta = restore(_path(args.a))
    tb = restore(_path(args.b))
    la = jax.tree_util.tree_leaves_with_path(ta)
    lb = dict(jax.tree_util.tree_leaves_with_path(tb))
    differ = sum(
        0 if np.allclose(np.asarray(v), np.asarray(lb[k]), atol=args.atol, rtol=args.rtol) else 1 for k, v in la
    )
    print(f"{differ} of {len(la)} leaves differ")


if __name__ == "__main__":
    main()
