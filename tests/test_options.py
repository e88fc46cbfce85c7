"""The options plumbing: the CLI's flags and `streamdiff.diff`'s keywords build one and the same
`DiffOptions`, so a flag cannot be dropped on its way to the pipeline."""

from __future__ import annotations

import pytest
from conftest import MAXTEXT, run_cli

import streamdiff
from streamdiff import api
from streamdiff.errors import UsageError
from streamdiff.options import Budget, DiffOptions, MapOptions, Steps, Tolerance

ROOT_A = MAXTEXT / "v024_linen_scan/checkpoints"
ROOT_B = MAXTEXT / "v024_linen_scan_seed1/checkpoints"


def test_cli_flags_and_diff_keywords_build_equal_options_with_every_field_set(monkeypatch):
    seen: list[DiffOptions] = []
    real = api.compare

    def capture(a, b, o, progress=None):
        seen.append(o)
        return real(a, b, o, progress)

    monkeypatch.setattr(api, "compare", capture)
    flags = ["--atol", "0.5", "--rtol", "0.25", "--nan-unequal", "--step-a", "1", "--step-b", "1"]
    flags += ["--item", "items", "--preset", "maxtext-linen", "--no-auto", "--layer-axis", "1"]
    flags += ["--max-memory", "512M", "--no-shortcut", "-j", "3", "--io-concurrency", "5", "--timeout", "30"]
    flags += ["--only", "**/decoder/**", "--exclude", "**/mu/**", "--per-layer", "--structure-only", "-q"]
    r = run_cli(ROOT_A, ROOT_B, *flags)
    assert r.code in (0, 1), r.err
    streamdiff.diff(
        str(ROOT_A),
        str(ROOT_B),
        atol=0.5,
        rtol=0.25,
        nan_equal=False,
        step_a=1,
        step_b=1,
        item="items",
        preset="maxtext-linen",
        auto=False,
        layer_axis=1,
        max_memory="512M",
        shortcut=False,
        jobs=3,
        io_concurrency=5,
        timeout=30,
        only=["**/decoder/**"],
        exclude=["**/mu/**"],
        per_layer=True,
        structure_only=True,
    )
    cli_options, api_options = seen
    assert cli_options == api_options
    assert cli_options == DiffOptions(
        tolerance=Tolerance(0.5, 0.25, False),
        steps=Steps(None, 1, 1),
        item="items",
        mapping=MapOptions((), "maxtext-linen", False, 1),
        budget=Budget(512 << 20, 3, None, 5, 30),
        structure_only=True,
        shortcut=False,
        scheduler=None,
        only=("**/decoder/**",),
        exclude=("**/mu/**",),
        per_layer=True,
    )


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: Tolerance(atol=float("nan")), "--atol must be a finite number"),
        (lambda: Tolerance(rtol=-1.0), "--rtol must be a finite number"),
        (lambda: Steps(a=-2), "step_a must be a step number"),
        (lambda: Budget(max_memory=1 << 20), "--max-memory must be at least"),
        (lambda: DiffOptions(only="params/**"), "not a string"),
    ],
)
def test_options_are_validated_when_built(make, needle):
    with pytest.raises(UsageError, match=needle):
        make()
