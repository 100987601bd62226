"""benchmarks/switch_interval.py runs real gateways with the default switch interval (Python's own)
and a tenth of it and reports both (how fast is never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import switch_interval
from tests.benchmarks.settings_cells import check_sample_cells


def test_each_interval_gets_a_row_of_measured_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "switch.md"
    argv = ["--items", "300", "--rounds", "1", "--seconds", "1", "--clients", "4", "--load-processes", "1"]
    switch_interval.main([*argv, "--workdir", str(tmp_path / "work"), "--output", str(output)])
    text = output.read_text()
    assert text in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| 300 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["5 (the default)", "0.5 (compared)"]
    for row in rows:
        check_sample_cells(row.split("|")[3:-1])
    assert "Medians of 1 rounds per interval" in text
