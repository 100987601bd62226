"""benchmarks/scorer_ops.py profiles the scorer graph asked for k and for K_MAX (shares never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import scorer_ops


def test_each_case_gets_a_row_with_the_topk_share(tmp_path: Path) -> None:
    output = tmp_path / "ops.md"
    scorer_ops.main(["--items", "300", "--batches", "2", "--k", "5", "--runs", "3", "--output", str(output)])
    rows = [line.split("|") for line in output.read_text().splitlines() if line.startswith("| 300 |")]
    assert [row[3].strip() for row in rows] == ["k = 5", "K_MAX"]
    for row in rows:
        total, top = (float(cell.replace(",", "")) for cell in row[4:6])
        assert total > 0 and 0 < top <= total


@pytest.mark.parametrize("argv", [["--k", "0"], ["--items", "100", "--k", "200"], ["--runs", "0"]])
def test_settings_that_measure_nothing_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        scorer_ops.main(argv)
    assert "--k in [1, min(K_MAX" in capsys.readouterr().err
