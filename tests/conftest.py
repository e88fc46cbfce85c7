"""Shared fixtures. Test-only writers (jax/orbax/flax) get 8 host CPU devices for sharded saves."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import logging  # noqa: E402

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# `pytest --hypothesis-profile=long`: thousands of examples for the fuzz and property tests that do
# not fix their own count (tests/test_fuzz_metadata.py reads it).
settings.register_profile("long", max_examples=3000, deadline=None)

# orbax logs a warning for every tiny chunk size the tests ask for on purpose.
logging.getLogger("absl").setLevel(logging.ERROR)

DATA = Path(__file__).parent / "data"
MAXTEXT = DATA / "maxtext"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out)


def run_cli(*args: str) -> CliResult:
    """Run the real CLI entry point in-process, capturing stdout/stderr."""
    from streamdiff.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    """Every Orbax layout variant, written once per session by real orbax (see orbax_corpus.py)."""
    from orbax_corpus import write_corpus

    out = tmp_path_factory.mktemp("corpus")
    return out, write_corpus(str(out))


@pytest.fixture
def copy_ckpt(tmp_path):
    """Copy a checkpoint directory so a test may damage it."""

    def _copy(src: Path | str, name: str = "ckpt") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy
