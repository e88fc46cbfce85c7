"""The speed limit of a value diff on this machine: tensorstore decodes every chunk of both
checkpoints and discards it, with the same thread budget streamdiff uses. No comparison at all.

    python bench/decode_limit.py CKPT_A CKPT_B
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor

import tensorstore as ts

from streamdiff import malloc
from streamdiff.reader.locate import locate
from streamdiff.reader.tree import build_tree


def chunk_boxes(shape, chunks):
    import itertools

    ranges = [range(0, n, c) for n, c in zip(shape, chunks)]
    for start in itertools.product(*ranges):
        yield tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, chunks, shape))


def main() -> None:
    malloc.limit_arenas(1)  # the same allocator setting streamdiff's CLI uses
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    total = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        for path in args.paths:
            item = locate(path).items[0]
            tree = build_tree(item.dir)

            def read_leaf(leaf, ctx=item.dir.storage.context):
                store = ts.open(leaf.source.spec, context=ctx, assume_metadata=True, read=True).result()
                n = 0
                for box in chunk_boxes(leaf.shape, leaf.source.read_chunk_shape) if leaf.shape else [()]:
                    n += store[box].read().result().nbytes if box else store.read().result().nbytes
                return n

            futs = [pool.submit(read_leaf, lf) for lf in tree.leaves.values() if lf.source is not None]
            total += sum(f.result() for f in futs)
    print(f"decoded {total / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
