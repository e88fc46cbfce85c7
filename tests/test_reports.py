"""The JSON contract, byte for byte: today's `--json` output equals the reports stored in
tests/data/reports/ (written by its make_reports.py), up to the volatile fields `normalise` names
(wall time, request count, absolute paths)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPORTS = Path(__file__).parent / "data" / "reports"
sys.path.insert(0, str(REPORTS))

import make_reports  # noqa: E402


@pytest.mark.parametrize("name", sorted(make_reports.CASES))
def test_cli_json_report_is_byte_identical_to_the_stored_one(name):
    stored = (REPORTS / name).read_text()
    header, body = stored.split("\n", 1)
    code, text = make_reports.run(make_reports.CASES[name])
    assert json.loads(header) == {"args": make_reports.CASES[name], "exit_code": code}
    assert make_reports.normalise(text) == body


@pytest.mark.parametrize("name", sorted(make_reports.API_CASES))
def test_api_report_dumps_is_byte_identical_to_the_stored_one(name):
    stored = (REPORTS / name).read_text()
    header, body = stored.split("\n", 1)
    a, b, kwargs = make_reports.API_CASES[name]
    code, text = make_reports.run_api(a, b, kwargs)
    assert json.loads(header) == {"api": {"a": a, "b": b, **kwargs}, "exit_code": code}
    assert make_reports.normalise(text) == body
