"""benchmarks/redis_pipe_cost.py measures version reads on redis-py and on the pipe, then real
gateways with `--redis-pipe` on and off, and reports both (how fast is never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import redis_pipe_cost
from tests.benchmarks.settings_cells import check_sample_cells


def test_both_ways_of_reading_get_measured_rows_alone_and_through_gateways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "pipe.md"
    argv = ["--reads", "40", "--concurrency", "4", "--blocks", "2", "--items", "300", "--rounds", "1", "--seconds", "1",
            "--clients", "4", "--load-processes", "1"]  # fmt: skip
    redis_pipe_cost.main([*argv, "--workdir", str(tmp_path / "work"), "--output", str(output)])
    text = output.read_text()
    assert text in capsys.readouterr().out
    reads = {row.split("|")[1].strip(): [float(cell) for cell in row.split("|")[2:6]] for row in text.splitlines()
             if row.startswith(("| redis-py |", "| pipe |"))}  # fmt: skip
    assert set(reads) == {"redis-py", "pipe"} and all(value > 0 for row in reads.values() for value in row)
    gateways = [row for row in text.splitlines() if row.startswith(("| on (default) |", "| off (redis-py) |"))]
    assert len(gateways) == 2
    for row in gateways:
        check_sample_cells(row.split("|")[2:-1])
    assert "Medians of 2 blocks (reads) and 1 rounds (gateways, 300 items)" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--reads", "0"], "must be at least 1"),
    (["--rounds", "-1"], "--rounds must be at least 0"),
    (["--load-fraction", "0"], "--load-fraction is a share"),
])  # fmt: skip
def test_settings_that_measure_nothing_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        redis_pipe_cost.main(argv)
    assert message in capsys.readouterr().err
