"""benchmarks/threads_bench.py runs real gateways with each thread setting and reports them (how
fast is never asserted)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from benchmarks import threads_bench
from serving.backends.base import default_threads
from tests.benchmarks.settings_cells import check_sample_cells


@pytest.mark.parametrize("int8", [False, True])
def test_each_setting_gets_a_row_of_measured_figures_and_the_pick_is_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], int8: bool
) -> None:
    output = tmp_path / "threads.md"
    argv = ["--items", "300", "--rounds", "1", "--seconds", "1", "--clients", "4", "--load-processes", "1"]
    threads_bench.main([*argv, *(["--int8"] if int8 else []), "--workdir", str(tmp_path / "work"), "--output", str(output)])
    text = output.read_text()
    assert text in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| 300 (int8) |" if int8 else "| 300 |")]
    settings = sorted({default_threads(), len(os.sched_getaffinity(0))})
    assert [int(row.split("|")[3]) for row in rows] == settings
    for row in rows:
        check_sample_cells(row.split("|")[4:13])
    # 300 items make a small scorer graph: `--ort-threads 0` gives it the cores less one
    assert [row.split("|")[3].strip() for row in rows if row.split("|")[13].strip() == "this"] == [str(default_threads())]
    assert re.search(r"Medians of 1 rounds per setting", text)


@pytest.mark.parametrize(("argv", "message"), [
    (["--load-fraction", "0"], "--load-fraction is a share"),
    (["--load-fraction", "1.5"], "--load-fraction is a share"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--clients", "0"], "--clients and --load-processes at least 1"),
])  # fmt: skip
def test_settings_that_measure_nothing_are_refused_before_any_gateway_starts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        threads_bench.main(argv)
    assert message in capsys.readouterr().err
