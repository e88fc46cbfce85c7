"""Lazy views: how a canonical leaf is seen through the stored arrays.

A mapped leaf is a tree of tensorstore index transforms and `ts.stack` over stored leaves, never a
copy, so streaming and the memory budget work through it. Rules (`rules.py`) and alignment
(`layouts.py`) stack layers and move axes only through `stacked`, `move_axis` and `transposed` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import tensorstore as ts

from ..datatypes import KeyPath, Leaf, format_path


@dataclass(frozen=True)
class View:
    """How to see a canonical leaf through stored arrays: a tree of lazy tensorstore transforms."""

    op: str  # 'base' | 'transpose' | 'index' | 'stack'
    leaf: Leaf | None = None  # base
    children: tuple[View, ...] = ()
    axes: tuple[int, ...] = ()  # transpose: result axis k = child axis axes[k]
    axis: int = 0  # index / stack
    index: int = 0  # index

    @property
    def stored(self) -> Leaf:
        """The stored leaf a 'base' view reads."""
        if self.leaf is None:
            raise ValueError(f"a {self.op!r} view reads no stored leaf of its own")
        return self.leaf

    @property
    def shape(self) -> tuple[int, ...]:
        if self.op == "base":
            shape = self.stored.shape
            if shape is None:  # views are made of arrays, whose shapes the readers always know
                raise ValueError(f"{format_path(self.stored.path)}: a view of a leaf without a shape")
            return shape
        c = self.children[0].shape
        if self.op == "transpose":
            return tuple(c[a] for a in self.axes)
        if self.op == "index":
            return c[: self.axis] + c[self.axis + 1 :]
        return c[: self.axis] + (len(self.children),) + c[self.axis :]

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """Smallest decodable unit seen through the transform (for block planning)."""
        if self.op == "base":
            source = self.stored.source
            return None if source is None else source.read_chunk_shape
        c = self.children[0].chunks
        if c is None:
            return None
        if self.op == "transpose":
            return tuple(c[a] for a in self.axes)
        if self.op == "index":
            return c[: self.axis] + c[self.axis + 1 :]
        return c[: self.axis] + (1,) + c[self.axis :]

    def open(self, context: ts.Context) -> ts.TensorStore:
        if self.op == "base":
            leaf = self.stored
            if leaf.source is None:
                return ts.array(np.asarray(leaf.value))
            return ts.open(leaf.source.spec, context=context, read=True, assume_metadata=True).result()
        if self.op == "stack":
            return ts.stack([c.open(context) for c in self.children], axis=self.axis)
        child = self.children[0].open(context)
        if self.op == "transpose":
            return child[ts.d[list(self.axes)].transpose[:]]
        return child[ts.d[self.axis][self.index]]

    def describe(self) -> str:
        if self.op == "base":
            return format_path(self.stored.path)
        if self.op == "transpose":
            return f"transpose({self.children[0].describe()}, {list(self.axes)})"
        if self.op == "index":
            return f"{self.children[0].describe()}[axis {self.axis} = {self.index}]"
        parts = [c.describe() for c in self.children]
        inner = ", ".join(parts) if len(parts) <= 3 else f"{parts[0]}, ..., {parts[-1]}"
        return f"stack([{inner}], axis {self.axis})"


def view_of(leaf: Leaf) -> View:
    """The view a leaf is read through: its own, or the stored leaf as it is."""
    return leaf.view if leaf.view is not None else View("base", leaf=leaf)


def with_view(leaf: Leaf, path: KeyPath, view: View) -> Leaf:
    """A canonical leaf seen through `view` (shape follows the view; storage hidden behind it)."""
    return replace(
        leaf, path=path, shape=view.shape, view=view, source=None, value=None, source_path=leaf.source_path or leaf.path
    )


def move_axis(rank: int, source: int, destination: int) -> tuple[int, ...]:
    """The transpose axes that move axis `source` to `destination` (both in range(rank)), as
    `numpy.moveaxis` does."""
    axes = list(range(rank))
    axes.insert(destination, axes.pop(source))
    return tuple(axes)


def transposed(leaf: Leaf, axes: tuple[int, ...]) -> Leaf:
    """`leaf` with result axis k = its axis `axes[k]`; the leaf itself for the identity."""
    if list(axes) == list(range(len(axes))):
        return leaf
    return with_view(leaf, leaf.path, View("transpose", children=(view_of(leaf),), axes=tuple(axes)))


def stacked(members: dict[int, Leaf], path: KeyPath, axis: Callable[[tuple[int, ...], int], int | None]) -> Leaf | None:
    """Per-layer leaves (layer index -> leaf) as one leaf at `path`, stacked on the axis that
    `axis(member shape, layer count)` chooses.

    None when they are not a clean run 0..L-1 of arrays of one shape (a gap or a shape that differs
    means they are not one stack: stacking them would invent a layout), or when `axis` says None."""
    idx = sorted(members)
    parts = [members[i] for i in idx]
    if idx != list(range(len(idx))) or len({p.shape for p in parts}) != 1 or parts[0].shape is None:
        return None
    k = axis(parts[0].shape, len(parts))
    if k is None:
        return None
    return with_view(parts[0], path, View("stack", children=tuple(view_of(p) for p in parts), axis=k))


def source_of(leaf: Leaf | None) -> str | None:
    """The stored path, or the view, behind a canonical leaf (for `--explain` and the report)."""
    if leaf is None:
        return None
    return leaf.view.describe() if leaf.view is not None else format_path(leaf.source_path or leaf.path)


def moved_source(leaf: Leaf | None) -> str | None:
    """`source_of` a leaf that rules moved or viewed; None when it is where it was stored."""
    if leaf is None or (leaf.view is None and (leaf.source_path is None or leaf.source_path == leaf.path)):
        return None
    return source_of(leaf)
