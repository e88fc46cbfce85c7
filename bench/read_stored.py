"""The floor for an identical pair: read the stored bytes of every chunk of both checkpoints
(through the same OCDBT/file kvstores streamdiff uses), compare nothing, decode nothing.

    python bench/read_stored.py CKPT_A CKPT_B [--in-flight 8]
"""

from __future__ import annotations

import argparse
from collections import deque

import tensorstore as ts

from streamdiff import malloc
from streamdiff.reader.locate import locate
from streamdiff.reader.tree import build_tree


def main() -> None:
    malloc.limit_arenas(1)  # the same allocator setting streamdiff's CLI uses
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--in-flight", type=int, default=8)
    args = ap.parse_args()
    total = 0
    for path in args.paths:
        item = locate(path).items[0]
        ctx = item.dir.storage.context
        tree = build_tree(item.dir)
        jobs = []
        for leaf in tree.leaves.values():
            if leaf.source is None:
                continue
            kv = ts.KvStore.open(leaf.source.spec["kvstore"], context=ctx).result()
            keys = [k for k in kv.list().result() if not k.endswith((b".zarray", b"zarr.json"))]
            jobs.extend((kv, k) for k in keys)
        window: deque = deque()
        for kv, k in jobs:
            window.append(kv.read(k))
            if len(window) >= args.in_flight:
                total += len(window.popleft().result().value)
        while window:
            total += len(window.popleft().result().value)
    print(f"read {total / 2**30:.2f} GiB of stored chunk bytes")


if __name__ == "__main__":
    main()
