"""The `map` stage: each side's trees become one canonical tree, then the two sides are aligned.

Per side: its items merged into one tree, the preset of its detected layout (only when the two
sides' layouts differ, or the one the user names), then the user's rules files in order. Then
`layouts.align` handles what depends on both sides (scanned vs unscanned layers, a moved layer axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..datatypes import KeyPath, Leaf, Tree
from .layouts import align, detect, load_preset
from .rules import MappedSide, apply_rules, load_rules_file


@dataclass(frozen=True)
class MapResult:
    """Both sides in canonical form, which layout each was read as, and notes for the report."""

    a: MappedSide
    b: MappedSide
    layout_a: str | None
    layout_b: str | None
    notes_a: tuple[str, ...]
    notes_b: tuple[str, ...]

    def tolerance_for(self, path: KeyPath) -> tuple[float, float] | None:
        """(atol, rtol) of the last tolerance rule matching `path`, A's rules then B's; None if none."""
        found = None
        for side in (self.a, self.b):
            for pat, atol, rtol in side.tolerances:
                if pat.match(path) is not None:
                    found = (atol, rtol)
        return found

    def dtype_allowed(self, path: KeyPath, a: str, b: str) -> bool:
        """Whether an `allow_dtype` rule of either side lets `path` hold dtype `a` in A and `b` in B."""
        return any(
            pat.match(path) is not None and {a, b} <= allowed
            for side in (self.a, self.b)
            for pat, allowed in side.allow_dtypes
        )


def map_trees(
    trees_a: list[Tree],
    trees_b: list[Tree],
    prefixes: list[str],
    rules: Sequence[str],
    preset: str | None,
    auto: bool,
    layer_axis: int | None,
) -> MapResult:
    """Presets and rules per side, then alignment of the two sides. `prefixes[k]` is the name the
    k-th item of each side goes under ('' for a side's only item)."""
    leaves_a = _merge_items(list(zip(prefixes, trees_a)))
    leaves_b = _merge_items(list(zip(prefixes, trees_b)))
    user = [load_rules_file(f) for f in rules]
    detected = [detect(list(x)) if auto else None for x in (leaves_a, leaves_b)]
    # Presets rename to the canonical form; needed only when the two layouts differ, so a diff of
    # two checkpoints in one layout keeps their own paths.
    layouts = [preset, preset] if preset else (detected if detected[0] != detected[1] else [None, None])
    out = []
    for leaves, layout in zip((leaves_a, leaves_b), layouts):
        sets = ([load_preset(layout)] if layout else []) + user
        out.append((layout, apply_rules(leaves, sets)))
    (layout_a, ma), (layout_b, mb) = out
    aligned = align(ma, mb, layer_axis) if auto or layer_axis is not None else ([], [])
    notes = []
    for layout, found, m in ((layout_a, detected[0], ma), (layout_b, detected[1], mb)):
        n = []
        if layout:
            n.append(f"layout {layout} ({'preset' if preset else 'detected'}): mapped to the canonical form")
        elif found:
            n.append(f"layout {found} (detected, same on both sides: paths kept as stored)")
        if rules:
            n.append("rules: " + ", ".join(rules))
        if m.ignored:
            n.append(f"{len(m.ignored)} path(s) ignored by rules")
        notes.append(n)
    notes[0] += aligned[0]
    notes[1] += aligned[1]
    return MapResult(ma, mb, layout_a, layout_b, tuple(notes[0]), tuple(notes[1]))


def _merge_items(trees: list[tuple[str, Tree]]) -> dict[KeyPath, Leaf]:
    """One tree for a side: several items (matched by name) go under their item names. Every leaf
    remembers its path as it was, so the report can say where rules moved it from."""
    if len(trees) == 1 and not trees[0][0]:
        leaves = trees[0][1].leaves
        if all(leaf.path is path and leaf.source_path is None for path, leaf in leaves.items()):
            return dict(leaves)  # one item, every leaf at its stored path (as readers make them): as is
    out: dict[KeyPath, Leaf] = {}
    for prefix, t in trees:
        for path, leaf in t.leaves.items():
            # A root-level leaf (a single array, a JSON item holding one value, an item not read)
            # keeps the empty path: named after its directory, two sides named differently would
            # never pair.
            new = (prefix,) + path if prefix else path
            # A leaf still at its stored path needs no copy: `source_path` None means "where it was"
            # (rules that move a leaf record where from).
            same = new == leaf.path and leaf.source_path in (None, new)
            out[new] = leaf if same else replace(leaf, path=new, source_path=new)
    return out
