"""Writes the pairs under pairs/ (zarr-python, as users save) and the reference JSON reports beside them.

The reports are what streamdiff printed for each case when they were stored; `tests/test_reports.py`
checks that today's output is byte for byte the same (after `normalise`). Run from the repository root:

    PYTHONPATH=$PWD:$PWD/tests python tests/data/reports/make_reports.py          # reports only
    PYTHONPATH=$PWD:$PWD/tests python tests/data/reports/make_reports.py --pairs  # rewrite the pairs too

Rewrite the reports only when the JSON contract changes on purpose (and say so in CHANGELOG.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PAIRS = HERE / "pairs"
MAXTEXT = HERE.parent / "maxtext"

#: Each case: report file name -> CLI arguments (paths relative to tests/data).
CASES: dict[str, list[str]] = {
    # ints and floats that differ, NaN and inf, complex, a leaf settled mostly by equal chunks (rms null),
    # zarr attributes (json leaves), only_a / only_b, a shape mismatch, a dtype and a kind mismatch, a stray file (not_compared),
    # a truncated chunk file (error); --stat adds subtrees.
    "zarr_default.json": ["reports/pairs/a.zarr", "reports/pairs/b.zarr", "--stat"],
    # Tolerances (max_abs_diff_allowed > 0), NaN unequal, every chunk decoded (no shortcut).
    "zarr_tolerance.json": [
        "reports/pairs/a.zarr",
        "reports/pairs/b.zarr",
        "--atol",
        "0.01",
        "--rtol",
        "0.001",
        "--nan-unequal",
        "--no-shortcut",
    ],
    "zarr_structure.json": ["reports/pairs/a.zarr", "reports/pairs/b.zarr", "--structure-only"],
    # Real MaxText checkpoints: floats differ, ints equal; per-layer statistics of the scanned leaves.
    "maxtext_seed_per_layer.json": [
        "maxtext/v024_linen_scan/checkpoints/1",
        "maxtext/v024_linen_scan_seed1/checkpoints/1",
        "--per-layer",
        "--stat=3",
    ],
    # Two layouts mapped to one canonical tree (source_a / source_b), equal bit for bit.
    "maxtext_mapped.json": [
        "maxtext/v024_linen_scan/checkpoints/1",
        "maxtext/conv_pr283f88b_linen_scan_to_nnx/items",
    ],
    # Step picking on a manager root; one side both times ("same directory" note), identical.
    "maxtext_same.json": ["maxtext/v024_linen_scan/checkpoints", "maxtext/v024_linen_scan/checkpoints", "--step", "0"],
}

#: Cases the CLI cannot ask for: blocks smaller than a chunk (`block_bytes`), so leaves stream and
#: report read amplification. Report file name -> (A, B, keyword arguments of `streamdiff.diff`).
API_CASES: dict[str, tuple[str, str, dict]] = {
    "maxtext_streamed.json": (
        "maxtext/v024_linen_scan/checkpoints/1",
        "maxtext/v024_linen_scan_seed1/checkpoints/1",
        {"block_bytes": 4096, "atol": 1e-3},
    ),
    # `regrid`: one chunk in A, eight in B, read in slabs of a few rows (read_amplification > 1);
    # --only leaves the other paths listed as excluded.
    "zarr_streamed.json": ("reports/pairs/a.zarr", "reports/pairs/b.zarr", {"block_bytes": 256, "only": ["regrid"]}),
}


def write_pairs() -> None:
    """A and B: zarr v3 groups written by zarr-python, two chunks per axis (tests/writers.py)."""
    import zarr
    from writers import WRITERS

    shutil.rmtree(PAIRS, ignore_errors=True)
    PAIRS.mkdir()
    rng = np.random.default_rng(12)
    same = rng.standard_normal((6, 5)).astype(np.float32)
    ints = np.arange(24, dtype=np.int32).reshape(4, 6)
    ints_b = ints.copy()
    ints_b[1, 2] += 7
    ints_b[3, 5] -= 2
    nans = rng.standard_normal(10).astype(np.float32)
    nans[[1, 4]] = np.nan
    nans[7] = np.inf
    nans_b = nans.copy()
    nans_b[4] = 0.5  # NaN vs a number
    nans_b[2] += 0.25
    cplx = (rng.standard_normal(6) + 1j * rng.standard_normal(6)).astype(np.complex64)
    cplx_b = cplx.copy()
    cplx_b[3] += 0.5j
    big = rng.standard_normal((16, 16)).astype(np.float32)
    big_b = big.copy()
    big_b[0, 0] += 1.0  # one chunk of four differs: three are settled by equal bytes
    common_a = {"model/same": same, "model/ints": ints, "model/nans": nans, "model/complex": cplx, "model/big": big}
    common_b = {"model/same": same, "model/ints": ints_b, "model/nans": nans_b, "model/complex": cplx_b, "model/big": big_b}
    a = WRITERS["zarr_v3"](PAIRS / "a", {**common_a, "only_here": ints, "shaped": same, "broken": same})
    b = WRITERS["zarr_v3"](PAIRS / "b", {**common_b, "only_there": ints, "shaped": same[:4], "broken": same})
    for side, path in (("a", a), ("b", b)):
        group = zarr.open_group(str(path), mode="r+")
        regrid = np.linspace(-1, 1, 320, dtype=np.float32).reshape(40, 8) * (1 if side == "a" else 1.001)
        z = group.create_array("regrid", shape=regrid.shape, dtype=regrid.dtype, chunks=(40, 8) if side == "a" else (5, 8))
        z[...] = regrid
        # A dtype only B changes (dtype_b), and a leaf that holds text in B (a kind mismatch).
        cast = group.create_array("cast", shape=(4,), dtype="float32" if side == "a" else "float16", chunks=(4,))
        cast[...] = np.arange(4)
        kind = group.create_array("kind", shape=(2,), dtype="int32" if side == "a" else str, chunks=(2,))
        kind[...] = np.arange(2) if side == "a" else np.array(["x", "y"])
        group.attrs.update({"epoch": 3 if side == "a" else 4, "name": "run", "lr": [0.1, 0.01]})
        (path / "notes.txt").write_text("a stray file: in no format streamdiff reads\n")
        path.rename(PAIRS / f"{side}.zarr")
        shutil.rmtree(PAIRS / side)
    # One chunk file of B's `broken` cut short: reading it fails, the leaf is an error.
    chunk = PAIRS / "b.zarr" / "broken" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:5])


def run(args: list[str]) -> tuple[int, str]:
    """The CLI in-process from tests/data, JSON on stdout."""
    import os

    from streamdiff.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(HERE.parent)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*args, "-q", "--json", "-"])
    finally:
        os.chdir(cwd)
    return code, out.getvalue()


def run_api(a: str, b: str, kwargs: dict) -> tuple[int, str]:
    """`streamdiff.diff` from tests/data, the report as `--json` writes it."""
    import os

    from streamdiff import diff, report

    cwd = os.getcwd()
    os.chdir(HERE.parent)
    try:
        r = diff(a, b, **kwargs)
    finally:
        os.chdir(cwd)
    return r.exit_code, report.dumps(r) + "\n"


def normalise(text: str) -> str:
    """The fields that change from run to run, by text substitution (the rest stays byte for byte):
    `summary.seconds` (wall time), `summary.requests` (OCDBT's reads of its b-tree nodes depend on
    which thread asks first) and the absolute path of tests/data in notes and messages."""
    for key in ("seconds", "requests"):
        text = re.sub(rf'^  "{key}": [0-9.e+-]+,$', f'  "{key}": 0,', text, count=1, flags=re.M)
    return text.replace(str(HERE.parent), "<tests/data>")


def main() -> None:
    if "--pairs" in sys.argv:
        write_pairs()
    for name, args in CASES.items():
        code, text = run(args)
        (HERE / name).write_text(json.dumps({"args": args, "exit_code": code}) + "\n" + normalise(text))
        print(name, code)
    for name, (a, b, kwargs) in API_CASES.items():
        code, text = run_api(a, b, kwargs)
        args = {"a": a, "b": b, **kwargs}
        (HERE / name).write_text(json.dumps({"api": args, "exit_code": code}) + "\n" + normalise(text))
        print(name, code)


if __name__ == "__main__":
    main()
