"""Match two trees path by path: pairs to compare, one-sided paths, shape and kind mismatches.

Trees arrive here already in canonical form (mapping rules, when there are any, run between `tree`
and `pair`), so pairing is exact matching of key paths, in A's order followed by B-only paths.
"""

from __future__ import annotations

from .datatypes import KeyPath, Kind, Leaf, Pair, PairStatus

#: Kinds that hold numbers and can be compared with each other.
NUMERIC = {Kind.ARRAY, Kind.SCALAR, Kind.PRNG_KEY}
#: Kinds held in memory as a value read with the metadata, compared exactly (strings, JSON values).
VALUE_KINDS = {Kind.STRING, Kind.JSON}


def pair_trees(a: dict[KeyPath, Leaf], b: dict[KeyPath, Leaf]) -> list[Pair]:
    out = []
    compare = PairStatus.COMPARE
    in_both = 0
    for path, la in a.items():
        lb = b.get(path)
        if lb is None:
            out.append(Pair(path, la, None, PairStatus.ONLY_A))
            continue
        in_both += 1
        if (  # no error, nothing uncomparable, no container chain: inline, a call per leaf costs more
            la.kind is lb.kind is Kind.ARRAY
            and la.shape == lb.shape
            and la.error is None
            and lb.error is None
            and la.not_compared is None
            and lb.not_compared is None
            and la.containers is None
            and lb.containers is None
        ):
            out.append(Pair(path, la, lb, compare))  # the common case, as `_pair` decides it, in fewer steps
        else:
            out.append(_pair(path, la, lb))
    if in_both < len(b):  # else every path of B is one of A's
        out.extend(Pair(path, None, leaf, PairStatus.ONLY_B) for path, leaf in b.items() if path not in a)
    return out


def _pair(path: KeyPath, a: Leaf, b: Leaf | None) -> Pair:
    if b is None:
        return Pair(path, a, None, PairStatus.ONLY_A)
    for side, leaf in (("A", a), ("B", b)):
        if leaf.error:
            return Pair(path, a, b, PairStatus.ERROR, f"checkpoint {side}: {leaf.error}")
    for side, leaf in (("A", a), ("B", b)):
        if leaf.not_compared:
            return Pair(path, a, b, PairStatus.NOT_COMPARED, f"checkpoint {side}: {leaf.not_compared}")
    if a.containers is not None and b.containers is not None and a.containers != b.containers:
        # Same key path through different containers: a list in one, a dict keyed "0", "1" in the other.
        chains = f"containers {_chain(a.containers)} vs {_chain(b.containers)}"
        return Pair(path, a, b, PairStatus.KIND_MISMATCH, chains)
    if a.kind == Kind.EMPTY or b.kind == Kind.EMPTY:
        if a.kind == b.kind:
            # None vs {} is still a structural difference worth reporting.
            if a.value_type == b.value_type:
                return Pair(path, a, b, PairStatus.EQUAL)
            return Pair(path, a, b, PairStatus.KIND_MISMATCH, f"empty node {a.value_type} vs {b.value_type}")
        return Pair(path, a, b, PairStatus.KIND_MISMATCH, f"{a.kind} vs {b.kind}")
    if a.kind in VALUE_KINDS or b.kind in VALUE_KINDS:
        if a.kind != b.kind:
            return Pair(path, a, b, PairStatus.KIND_MISMATCH, f"{a.kind} vs {b.kind}")
        return Pair(path, a, b, PairStatus.COMPARE)
    if a.kind not in NUMERIC or b.kind not in NUMERIC:
        return Pair(path, a, b, PairStatus.KIND_MISMATCH, f"{a.kind} vs {b.kind}")
    if a.shape != b.shape:
        return Pair(path, a, b, PairStatus.SHAPE_MISMATCH, f"shape {list(a.shape or ())} vs {list(b.shape or ())}")
    if a.kind == b.kind == Kind.PRNG_KEY and a.prng_impl != b.prng_impl:
        # Same key data, another generator: not the same state (rbg vs unsafe_rbg draw differently).
        return Pair(path, a, b, PairStatus.KIND_MISMATCH, f"PRNG key impl {a.prng_impl} vs {b.prng_impl}")
    if Kind.PRNG_KEY in (a.kind, b.kind) and a.kind != b.kind:
        why = f"{a.kind} vs {b.kind} (a typed PRNG key against raw key data)"
        return Pair(path, a, b, PairStatus.KIND_MISMATCH, why)
    return Pair(path, a, b, PairStatus.COMPARE)


def _chain(containers: tuple[str, ...]) -> str:
    return "/".join(containers) or "(root)"
