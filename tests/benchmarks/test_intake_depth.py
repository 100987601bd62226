"""benchmarks/intake_depth.py runs real gateways at each --grpc-intake and reports them (how fast is
never asserted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import intake_depth
from serving.intake import unsupported
from tests.benchmarks.settings_cells import check_sample_cells


@pytest.mark.skipif(unsupported() != "", reason="the deeper intake runs on the grpcio versions in VERIFIED_GRPC only")
def test_each_depth_gets_a_row_of_measured_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "intake.md"
    argv = ["--items", "300", "--depths", "1", "8", "--rounds", "1", "--seconds", "1", "--clients", "4", "--load-processes", "1"]
    intake_depth.main([*argv, "--workdir", str(tmp_path / "work"), "--output", str(output)])
    text = output.read_text()
    assert text in capsys.readouterr().out
    rows = re.findall(r"^\| (1 \(grpc.aio's own\)|8 \(default\)) \|(.*)\|$", text, re.M)
    assert [name for name, _ in rows] == ["1 (grpc.aio's own)", "8 (default)"]
    for _, row in rows:
        check_sample_cells(row.split("|"))
    assert "Medians of 1 rounds per setting" in text and "300 items" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--depths", "0", "8"], "each at least 1"),
    (["--depths", "8", "8"], "distinct"),
    (["--rounds", "0"], "--rounds must be at least 1"),
])  # fmt: skip
def test_settings_that_measure_nothing_are_refused_before_any_gateway_starts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        intake_depth.main(argv)
    assert message in capsys.readouterr().err
