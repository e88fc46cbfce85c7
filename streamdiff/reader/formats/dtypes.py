"""dtype names as checkpoints spell them, and how each family is compared.

zarr v2 `.zarray` uses numpy typestrs ('<f4') for standard types and ml_dtypes names ('bfloat16',
'int4', 'float8_e4m3fn') for the rest; zarr v3 uses names ('float32'). We normalise both to numpy
dtype names. ml_dtypes registers its names with numpy, so `np.dtype('bfloat16')` works once it is
imported (tensorstore depends on it).
"""

from __future__ import annotations

import ml_dtypes  # noqa: F401  (registers bfloat16, int4, float8_* with numpy)
import numpy as np

from ...errors import CorruptCheckpointError


def normalize(name: str) -> str:
    """A zarr v2 typestr or zarr v3 / ml_dtypes name -> numpy dtype name ('float32', 'bfloat16')."""
    try:
        return np.dtype(name).name
    except TypeError as e:
        raise CorruptCheckpointError(f"unknown dtype {name!r}") from e


def itemsize(name: str) -> int:
    return np.dtype(name).itemsize


def family(name: str) -> str:
    """'float', 'complex', 'int' (incl. ml_dtypes int2/int4 and uint*), or 'bool'.

    ml_dtypes' sub-byte ints are not numpy integer subtypes, hence the name check.
    """
    if name == "bool":
        return "bool"
    if name.startswith(("int", "uint")):
        return "int"
    if name.startswith("complex"):
        return "complex"
    return "float"


def is_exact(name: str) -> bool:
    """Integers and bools compare exactly; floats and complex with the tolerance."""
    return family(name) in ("int", "bool")


def compute_dtype(a: str, b: str) -> np.dtype:
    """Statistics are computed in float64 (complex128 if either side is complex)."""
    if "complex" in (family(a), family(b)):
        return np.dtype(np.complex128)
    return np.dtype(np.float64)
