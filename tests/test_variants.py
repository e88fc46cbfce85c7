"""Every Orbax layout variant, written by real orbax in this session (orbax_corpus.py).

Each item is read with exactly its expected leaves (path, kind, stored dtype, shape, string value),
a self-diff exits 0 with every leaf bit-identical, and unfinished or non-Orbax paths exit 2.
"""

from __future__ import annotations

import os

import pytest
from conftest import run_cli
from orbax_corpus import VARIANTS

from streamdiff.reader.locate import ItemKind, locate
from streamdiff.reader.tree import read_item


def _latest_items(variant: str, items: list[str]) -> set[str]:
    """The item folders a user pointing at the variant's folder should get: the root itself, or every
    item of the highest step the writer saved (step number = the digits of the step folder's name)."""

    def parent(rel: str) -> str:
        return variant if rel == variant else os.path.dirname(rel)

    def step(folder: str) -> int:
        digits = "".join(c for c in os.path.basename(folder) if c.isdigit())
        return int(digits) if folder != variant and digits else -1

    latest = max({parent(rel) for rel in items}, key=step)
    return {rel for rel in items if parent(rel) == latest}


#: Items the corpus writes besides its PyTree items (not in its index): JsonSave items are items too.
JSON_ITEMS = {"manager_composite": {"extra"}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_folder_resolves_to_the_items_the_writer_saved(corpus, variant):
    """Given the variant's top folder, as a user would pass it, streamdiff finds exactly the item
    folders orbax wrote there (the latest step's); a folder holding only unfinished or non-Orbax
    saves is refused with exit 2."""
    root, index = corpus
    items = list(index[variant]["items"])
    if not items:
        r = run_cli(root / variant, root / variant)
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
        return
    located = locate(str(root / variant))
    pytree = {os.path.relpath(item.display, root) for item in located.items if item.kind != ItemKind.JSON}
    assert pytree == _latest_items(variant, items)
    assert {item.name for item in located.items if item.kind == ItemKind.JSON} == JSON_ITEMS.get(variant, set())


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_leaves_exact_in_flatten_order(corpus, variant):
    root, index = corpus
    for rel, expected in index[variant]["items"].items():
        tree = read_item(locate(str(root / rel)).items[0])
        got = {leaf.path: leaf for leaf in tree.leaves.values()}
        want = [tuple(e["path"]) for e in expected]
        if variant == "flax_msgpack_file":
            # A msgpack file keeps the state dict's own key order; the corpus index records jax's
            # flatten order (sorted keys), so only the set of paths can be checked against it.
            assert sorted(got) == sorted(want) and len(got) == len(want), rel
        else:
            assert list(got) == want, rel  # the writer's flatten order
        for e in expected:
            leaf = got[tuple(e["path"])]
            assert leaf.error is None, (rel, e["path"], leaf.error)
            assert leaf.kind == e["kind"], (rel, e["path"], leaf.kind, e["kind"])
            if "dtype" in e:
                assert leaf.dtype == e["dtype"] and list(leaf.shape) == e["shape"], (rel, e["path"], leaf)
            if e["kind"] == "string":
                assert leaf.value == e["value"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_self_diff_is_identical_and_unfinished_saves_exit_2(corpus, variant):
    root, index = corpus
    for rel in index[variant]["items"]:
        r = run_cli(root / rel, root / rel, "--json", "-", "-q")
        assert r.code == 0, (rel, r.err)
        assert r.json["identical"], rel
    for rel in index[variant]["invalid"]:
        r = run_cli(root / rel, root / rel)
        assert r.code == 2, (rel, r.out)
        assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err


def test_manager_root_skips_unfinished_latest_step(corpus):
    """Step 1 failed mid-save; the root resolves to step 0 and says so."""
    root, _ = corpus
    for name in ("manager_unfinished_atomic_rename", "manager_unfinished_commit_file"):
        r = run_cli(root / name, root / name, "--json", "-", "-q")
        assert r.code == 0, r.err
        notes = " ".join(r.json["notes"]["a"])
        assert "step 0 (latest committed" in notes, notes
        bad = run_cli(root / name, root / name, "--step", "1")
        assert bad.code == 2 and "unfinished" in bad.err


def test_unfinished_messages_say_why(corpus):
    root, _ = corpus
    r = run_cli(root / "manager_unfinished_commit_file/1", root / "manager_default/0")
    assert r.code == 2 and "no commit timestamp" in r.err
    r = run_cli(root / "manager_unfinished_atomic_rename/1.orbax-checkpoint-tmp", root / "manager_default/0")
    assert r.code == 2 and ".orbax-checkpoint-tmp" in r.err


def test_composite_items_need_item_or_matching_names(corpus):
    root, _ = corpus
    step = root / "manager_composite/ckpt_00007"
    both = run_cli(step, step, "--json", "-", "-q")
    assert both.code == 0
    # `extra` is a JsonSave item: compared as JSON values, never skipped.
    assert {x["path"].split("/")[0] for x in both.json["leaves"]} == {"extra", "params", "state"}
    assert {x["path"]: x["kind"] for x in both.json["leaves"]}["extra/lr"] == "json"
    one = run_cli(step, root / "manager_default/0", "--item", "state", "--json", "-", "-q")
    assert one.code == 0, one.err  # the same state dict was saved in both
    assert "--item state: other items not compared: extra, params" in one.json["notes"]["a"]
    mismatch = run_cli(step, root / "manager_default/0")
    assert mismatch.code == 2 and "--item" in mismatch.err


def test_structure_only_reads_no_chunk_data(corpus, copy_ckpt):
    """Delete every chunk data file: the full structure report is still produced."""
    root, index = corpus
    # Variants whose chunks are too big to be inlined in the OCDBT B-tree, or are per-leaf files.
    for variant in ("chunked_zarr2", "chunked_zarr3", "chunked_noocdbt", "pytree_noocdbt_zarr3"):
        ckpt = copy_ckpt(root / variant, variant)
        removed = 0
        for dirpath, _, files in os.walk(ckpt):
            for f in files:
                p = os.path.join(dirpath, f)
                rel = os.path.relpath(p, ckpt)
                is_ocdbt_data = f"{os.sep}d{os.sep}" in os.sep + rel and "ocdbt.process_" in rel
                is_chunk = not f.startswith((".z", "zarr.json", "_", "manifest")) and "ocdbt.process_" not in rel
                is_chunk = is_chunk and os.path.dirname(rel) not in ("", "d", "array_metadatas")
                if is_ocdbt_data or is_chunk:
                    os.remove(p)
                    removed += 1
        assert removed
        r = run_cli(ckpt, root / variant, "--structure-only", "--json", "-", "-q")
        assert r.code == 0, (variant, r.err)
        assert r.json["summary"]["leaves"] == len(index[variant]["items"][variant])
        values = run_cli(ckpt, root / variant, "-q")
        assert values.code == 2, variant  # reading values now fails: proof the data really is gone
