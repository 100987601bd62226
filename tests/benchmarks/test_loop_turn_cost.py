"""benchmarks/loop_turn_cost.py runs both states through whole gateways and reports each (speeds
never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import loop_turn_cost


def test_both_states_get_a_row_of_positive_figures(tmp_path: Path) -> None:
    output = tmp_path / "turn.md"
    loop_turn_cost.main(
        ["--items", "200", "--rounds", "1", "--seconds", "0.5", "--workdir", str(tmp_path / "work"), "--output", str(output)]
    )
    states = (loop_turn_cost.AT_ONCE, loop_turn_cost.DEFERRED)
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in output.read_text().splitlines() if line.startswith(tuple(f"| {s} |" for s in states))}
    assert set(rows) == set(states)
    for cells in rows.values():
        p50, cpu, *_, total = (float(cell.replace(",", "")) for cell in cells)
        assert p50 > 0 and cpu > 0 and total > 0
    assert "Medians of 1 rounds" in output.read_text() and "the one client on the same cores" in output.read_text()


@pytest.mark.parametrize("argv", [["--items", "50"], ["--rounds", "0"], ["--seconds", "0"]])
def test_settings_that_measure_nothing_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        loop_turn_cost.main(argv)
    assert "--items must be above the clients' history length (50)" in capsys.readouterr().err
