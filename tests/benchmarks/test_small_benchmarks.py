"""benchmarks/tracing_cost.py and benchmarks/cli_startup.py run and report (how fast is never asserted)."""

from __future__ import annotations

import re

import pytest

from benchmarks import cli_startup, tracing_cost
from serving import tracing


def test_tracing_cost_reports_off_and_on(capsys: pytest.CaptureFixture[str]) -> None:
    tracing_cost.main(["--calls", "20", "--blocks", "2", "--hook-calls", "50"])
    out = capsys.readouterr().out
    assert re.search(r"hooks per cached Recommend: off [\d.]+ µs, on [\d.]+ µs", out)
    assert re.search(r"gateway p50: off [\d.]+ ms, on [\d.]+ ms", out) and "CPU per call" in out
    assert not tracing.enabled()  # left off


def test_cli_startup_reports_a_median(capsys: pytest.CaptureFixture[str]) -> None:
    cli_startup.main(["--runs", "1"])
    assert re.search(r"apron --help \(.+\): median [\d.]+ s", capsys.readouterr().out)
