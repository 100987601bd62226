"""benchmarks/gc_threshold.py runs real gateways with the default youngest-generation threshold and
Python's own and reports both, with the gateway's own collection pauses (how fast is never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import gc_threshold
from serving.config import GC_GEN0_THRESHOLD


def test_each_threshold_gets_a_row_of_measured_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "gc.md"
    argv = ["--items", "300", "--rounds", "1", "--seconds", "1", "--clients", "4", "--load-processes", "1"]
    gc_threshold.main([*argv, "--workdir", str(tmp_path / "work"), "--output", str(output)])
    text = output.read_text()
    assert text in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "(" in line.split("|")[1]]
    assert [row.split("|")[1].strip() for row in rows] == [f"{GC_GEN0_THRESHOLD:,} (the default)", "700 (Python's own)"]
    for row in rows:
        rate, p50, p99, cpu, open_rate, open_p99, one, gc_us = (float(cell) for cell in row.split("|")[2:10])
        assert rate > 0 and 0 < p50 <= p99 and cpu > 0 and one > 0 and gc_us >= 0
        assert open_rate == pytest.approx(0.7 * rate, abs=1) and open_p99 > 0
    assert "300 items; medians of 1 rounds per threshold" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--compare", "0"], "each threshold must be at least 1"),
    (["--compare"], "nothing to compare"),
    (["--compare", str(GC_GEN0_THRESHOLD)], "nothing to compare"),
])  # fmt: skip
def test_settings_that_measure_nothing_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gc_threshold.main(argv)
    assert message in capsys.readouterr().err
