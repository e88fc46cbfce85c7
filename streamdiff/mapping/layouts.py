"""Which layout each side is in, which presets map it, how two mapped sides are aligned, and
where a scanned leaf's layer axis is.

Presets (TOML in `presets/`, read by `rules.read_preset`, which expands their `include`s)
rename every MaxText layout to one canonical form: `model/<module path>` for parameters (and NNX
rng state), `optimizer/opt_state/<i>/<count|mu|nu>/<module path>`, `optimizer/step`, unscanned
layers as `layers_<i>`. Detection looks only at paths.

Alignment then handles what depends on both sides at once:

* one side scanned (`.../layers/<leaf>`, layers stacked on one axis) and the other unscanned
  (`.../layers_<i>/<leaf>` or `.../layers/<i>/<leaf>`): the unscanned leaves are stacked,
  lazily, on the axis the scanned side's shape shows (or `layer_axis` when the shapes cannot
  tell, else axis 1, MaxText's param_scan_axis). Stacking the unscanned side keeps each stored
  chunk decoded once; unstacking the scanned side would decode each of its chunks once per layer;
* both scanned with the layer axis in different places (param_scan_axis 1 vs 0): the second
  side's layer axis is moved to where the first side has it, for leaves under a `layers` key
  whose shapes differ by exactly that move.

After pairing, `LayerAxes` finds the layer axis of each scanned leaf for per-layer statistics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..datatypes import KeyPath, Leaf, Pair, format_path
from ..errors import UsageError
from .patterns import Pattern, RulesError
from .rules import MappedSide, RuleSet, read_preset
from .views import move_axis, stacked, transposed

PRESETS = (
    "maxtext-linen",
    "maxtext-nnx-released",
    "maxtext-nnx",
    "maxtext-nnx-converter",
    "flax-nnx-state",
    "flax-linen",
)
#: Flax Linen variable collections that hold per-module state (`flax-linen` strips params/ and batch_stats/).
LINEN_COLLECTIONS = {"params", "batch_stats"}
#: Per-layer paths: Linen names layers `layers_<i>`, unscanned NNX keeps them in a dict `layers/<i>`.
UNSCANNED = (
    Pattern.compile("{pre:**}/layers_{i:int}/{rest:**}"),
    Pattern.compile("{pre:**}/layers/{i:int}/{rest:**}"),
)


def load_preset(name: str) -> RuleSet:
    """The rules of a preset the user can name (`--preset`) or detection can pick."""
    if name not in PRESETS:
        raise RulesError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    return read_preset(name)


def detect(paths: list[KeyPath]) -> str | None:
    """The MaxText or generic Flax layout of a tree, from its paths alone; None when it is none.

    Generic Flax, after MaxText: `flax-nnx-state` when every leaf is an NNX Variable's `value`
    (`nnx.state(model)` saved directly), `flax-linen` when every leaf sits under a Linen
    collection (`params`, `batch_stats`). A plain module tree (`nnx.to_pure_dict`) is no layout:
    the other side's preset maps it to that form."""

    heads = {p[:2] for p in paths}  # every prefix asked about is one or two keys long

    def has(*prefix: str) -> bool:
        return any(h[: len(prefix)] == prefix for h in heads)

    if has("params", "params"):
        return "maxtext-nnx-released" if has("nnx_aux") else "maxtext-linen"
    if has("model"):
        if any(p[0] == "model" and p[-1] == "value" for p in paths):
            return "maxtext-nnx-converter"
        if has("optimizer") or has("model", "decoder"):
            return "maxtext-nnx"
    if paths and all(len(p) > 1 and p[-1] == "value" for p in paths):
        return "flax-nnx-state"
    if has("params") and all(p and p[0] in LINEN_COLLECTIONS and len(p) > 1 for p in paths):
        return "flax-linen"
    return None


def align(a: MappedSide, b: MappedSide, layer_axis: int | None) -> tuple[list[str], list[str]]:
    """Align the two mapped sides in place; returns what was done, as notes for A and for B."""
    notes: tuple[list[str], list[str]] = ([], [])
    for side_notes, this, other in ((notes[0], a, b), (notes[1], b, a)):
        n = _stack_to_match(this, other, layer_axis)
        if n:
            side_notes.append(f"stacked {n} per-layer leaves to match the scanned layout of the other side")
    moved = _move_layer_axis(a, b, layer_axis)
    if moved:
        notes[1].append(f"moved the layer axis of {moved} leaves to where A has it")
    return notes


def _stack_to_match(this: MappedSide, other: MappedSide, layer_axis: int | None) -> int:
    groups: dict[KeyPath, dict[int, Leaf]] = {}
    # Every target is a path of `other` through a `layers` key, and every member has a key holding
    # 'layers': most trees are skipped without running the patterns on each path.
    if not any("layers" in p for p in other.leaves):
        return 0
    for path, leaf in this.leaves.items():
        if not any("layers" in k for k in path):
            continue
        caps = next((c for c in (p.match(path) for p in UNSCANNED) if c is not None), None)
        if caps is None:
            continue
        target = caps["pre"] + ("layers",) + caps["rest"]
        if target in other.leaves and target not in this.leaves:
            groups.setdefault(target, {})[int(caps["i"])] = leaf
    count = 0
    for target, members in groups.items():
        want = other.leaves[target].shape

        def axis(shape: tuple[int, ...], n: int, want: tuple[int, ...] | None = want) -> int | None:
            return _stack_axis(shape, n, want, layer_axis)

        stack = stacked(members, target, axis)
        if stack is None or stack.view is None:
            continue  # not one stack, or the shapes do not show one (e.g. only layers_0 exists): leave one-sided
        for p in members.values():
            del this.leaves[p.path]
        this.leaves[target] = stack
        first = format_path(members[0].path)
        this.applied.append(f"align: stack {len(members)} x {first} ... on axis {stack.view.axis}")
        count += len(members)
    return count


def _stack_axis(member: tuple[int, ...], n: int, other: tuple[int, ...] | None, layer_axis: int | None) -> int | None:
    """The axis at which inserting the layer count turns `member` into the other side's shape:
    `layer_axis` if given, else the only axis that fits, else axis 1 (MaxText's param_scan_axis)
    when several fit; None when none does."""
    if layer_axis is not None:
        return layer_axis if layer_axis <= len(member) else None
    fits = [k for k in range(len(member) + 1) if member[:k] + (n,) + member[k:] == other] if other else []
    if len(fits) == 1:
        return fits[0]
    if fits:
        return 1 if 1 in fits else fits[0]
    return None


#: Leaves that must agree before a layer-axis difference is taken as the save's (param_scan_axis).
MIN_MOVE_EVIDENCE = 2


def _move_layer_axis(a: MappedSide, b: MappedSide, layer_axis: int | None = None) -> int:
    """View B's scanned leaves with the layer axis where A has it, when the two saves put it at
    different positions (MaxText's param_scan_axis 0 vs 1).

    That is a property of the whole save, so it shows in every scanned leaf, always as a move of an
    axis of the same size (the layer count). A single leaf whose axes differ is more likely a
    transposed kernel, exactly the bug a diff must show: without `layer_axis` (the user's word), moves
    are made only when at least MIN_MOVE_EVIDENCE leaves need one, all of an axis of one size, and
    at least one of them has 3 or more axes."""
    moves = []
    for path, lb in b.leaves.items():
        if "layers" not in path:
            continue
        la = a.leaves.get(path)
        if la is None or la.shape is None or lb.shape is None or la.shape == lb.shape:
            continue
        perm = _single_move(lb.shape, la.shape)
        if perm is not None:
            moved = next(k for k, src in enumerate(perm) if src != k)  # where A has the moved axis
            moves.append((path, lb, perm, la.shape[moved]))
    # On 2-D leaves a moved axis is a transpose, the conversion bug a diff must show: the save-wide
    # move must also show on some leaf of 3 or more axes (a kernel's layer axis).
    if layer_axis is None and (
        len(moves) < MIN_MOVE_EVIDENCE or len({m[3] for m in moves}) != 1 or all(len(m[2]) < 3 for m in moves)
    ):
        return 0
    for path, lb, perm, _ in moves:
        b.leaves[path] = transposed(lb, tuple(perm))
        b.applied.append(f"align: {format_path(path)} axes {list(perm)}")
    return len(moves)


def _single_move(src: tuple[int, ...], dst: tuple[int, ...]) -> list[int] | None:
    """The permutation moving one axis of `src` that yields `dst`, if exactly one does."""
    if len(src) != len(dst) or sorted(src) != sorted(dst):
        return None
    n = len(src)
    moves = {move_axis(n, i, j) for i in range(n) for j in range(n) if i != j}
    found = [axes for axes in moves if tuple(src[k] for k in axes) == dst]
    return list(found[0]) if len(found) == 1 else None


@dataclass(frozen=True)
class LayerAxes:
    """Where the stacked layer axis of each scanned leaf is, for `per_layer`.

    A scanned leaf is an array under a `layers` key (MaxText's and nn.scan's name for the stack).
    Its layer axis is `forced` (--layer-axis) when given; else the axis on which alignment stacked
    unscanned layers; else the axis holding the layer count: the count is the size most scanned
    leaves have on axis 1 (MaxText's param_scan_axis), and a leaf whose axis 1 is not that size
    (a vector, a PRNG key stacked on axis 0) uses its first axis of that size."""

    forced: int | None
    count: int | None

    @staticmethod
    def of(pairs: list[Pair], forced: int | None) -> LayerAxes:
        scanned = [s for p in pairs if (s := _scanned(p)) is not None]
        if forced is not None and scanned and not any(forced < len(shape) for _, shape in scanned):
            # Every scanned leaf would be left without per-layer statistics: a silent "no layer
            # differs" next to differing leaves. Say what is wrong instead.
            most = max(len(shape) for _, shape in scanned)
            raise UsageError(f"--layer-axis {forced}: no scanned leaf has that axis (they have at most {most} axes)")
        sizes = Counter(shape[1] for a, shape in scanned if len(shape) >= 2 and a.kind == "array")
        return LayerAxes(forced, sizes.most_common(1)[0][0] if sizes else None)

    def axis(self, p: Pair) -> int | None:
        scanned = _scanned(p)
        if scanned is None:
            return None
        a, shape = scanned
        if self.forced is not None:
            return self.forced if self.forced < len(shape) else None
        for leaf in p.both():
            if leaf.view is not None and leaf.view.op == "stack":
                return leaf.view.axis
        if self.count is None:
            return 1 if len(shape) >= 2 else 0
        if len(shape) >= 2 and shape[1] == self.count and a.kind == "array":
            return 1
        return next((k for k, n in enumerate(shape) if n == self.count), None)


def _scanned(p: Pair) -> tuple[Leaf, tuple[int, ...]] | None:
    """(A's leaf, its shape) when `p` is a scanned leaf: compared, an array or PRNG key with axes, under
    a `layers` key; else None."""
    a = p.a
    if p.status != "compare" or a is None or not a.shape or a.kind not in ("array", "prng_key"):
        return None
    return (a, a.shape) if "layers" in p.path else None
