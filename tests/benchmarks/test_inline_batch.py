"""benchmarks/inline_batch.py runs real gateways with the default smallest inline batch and with the
compared one and reports both, with the share of the open loop the event loop was
busy (how fast is never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import inline_batch
from serving.config import DEFAULT_INLINE_MIN_BATCH


def test_each_setting_gets_a_row_of_measured_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "inline.md"
    argv = ["--items", "300", "--rounds", "1", "--seconds", "1", "--clients", "4", "--load-processes", "1"]
    inline_batch.main([*argv, "--workdir", str(tmp_path / "work"), "--output", str(output)])
    text = output.read_text()
    assert text in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "(" in line.split("|")[1]]
    assert [row.split("|")[1].strip() for row in rows] == [f"{DEFAULT_INLINE_MIN_BATCH} (the default)", f"{inline_batch.COMPARED} (compared)"]
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")[2:-1]]
        rate, p50, p99, cpu, open_rate, open_p99, one, gc_us = (float(cell) for cell in cells[:8])
        assert rate > 0 and 0 < p50 <= p99 and cpu > 0 and one > 0 and gc_us >= 0
        assert open_rate == pytest.approx(0.7 * rate, abs=1) and open_p99 > 0
        assert cells[8].endswith("%") and 0 < int(cells[8][:-1]) <= 200  # a share of the loop (the open loop did work on it)
    assert "300 items; medians of 1 rounds per batch size, the batch sizes alternating" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--compare", "0"], "each batch size must be at least 1"),
    (["--compare", str(DEFAULT_INLINE_MIN_BATCH)], "nothing to compare"),
])  # fmt: skip
def test_settings_that_measure_nothing_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        inline_batch.main(argv)
    assert message in capsys.readouterr().err
