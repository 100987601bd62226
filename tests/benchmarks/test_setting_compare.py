"""The one-integer-setting gateway A/Bs (`settings_ab.compare_main`): benchmarks/gc_threshold.py and
benchmarks/inline_batch.py run real gateways with the setting's default and a compared value and
report both, with the gateway's own collection pauses and its event loop's share of the open loop
(how fast is never asserted)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from benchmarks import gc_threshold, inline_batch
from serving.config import DEFAULT_INLINE_MIN_BATCH, GC_GEN0_THRESHOLD
from tests.benchmarks.settings_cells import check_sample_cells

COMMANDS = {
    "gc_threshold": (gc_threshold, [f"{GC_GEN0_THRESHOLD:,} (the default)", "700 (Python's own)"], "per threshold, the thresholds"),
    "inline_batch": (
        inline_batch, [f"{DEFAULT_INLINE_MIN_BATCH} (the default)", f"{inline_batch.COMPARED} (compared)"], "per batch size, the batch sizes"
    ),
}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_each_value_gets_a_row_of_measured_figures(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module, labels, footer = COMMANDS[command]
    output = tmp_path / "table.md"
    argv = ["--items", "300", "--rounds", "1", "--seconds", "1", "--clients", "4", "--load-processes", "1"]
    module.main([*argv, "--workdir", str(tmp_path / "work"), "--output", str(output)])
    text = output.read_text()
    assert text in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "(" in line.split("|")[1]]
    assert [row.split("|")[1].strip() for row in rows] == labels
    for row in rows:
        check_sample_cells(row.split("|")[2:-1])
    assert f"300 items; medians of 1 rounds {footer} alternating" in text
    assert "Calls refused for load in the open loops (in no p99 above): " in text  # none, or how many of each row


def test_the_table_says_what_the_open_loops_refused() -> None:
    """A refused call is in no latency: the p99 column's medians leave it out, the line under the
    table counts it, row by row over every round."""
    from benchmarks.settings_ab import Row, Sample, settings_table

    def sample(refused: int) -> Sample:
        return Sample(100.0, 1.0, 2.0, 0.2, 70.0, 3.0, 0.5, 1.0, 0.5, open_answered=560 - refused, refused=refused)

    quiet = settings_table(["setting"], [Row(["1"], [sample(0)]), Row(["4"], [sample(0)])], 64, 0.7)
    assert quiet[-2:] == ["", "Calls refused for load in the open loops (in no p99 above): none."]
    shed = settings_table(["setting"], [Row(["1"], [sample(0)]), Row(["4"], [sample(40), sample(2)])], 64, 0.7)
    assert shed[-1] == "Calls refused for load in the open loops (in no p99 above): 1: 0 of 560; 4: 42 of 1,120."


@pytest.mark.parametrize(("module", "argv", "message"), [
    (gc_threshold, ["--compare", "0"], "each threshold must be at least 1"),
    (gc_threshold, ["--compare"], "nothing to compare"),
    (gc_threshold, ["--compare", str(GC_GEN0_THRESHOLD)], "nothing to compare"),
    (inline_batch, ["--compare", "0"], "each batch size must be at least 1"),
    (inline_batch, ["--compare", str(DEFAULT_INLINE_MIN_BATCH)], "nothing to compare"),
])  # fmt: skip
def test_settings_that_measure_nothing_are_refused(
    module: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        module.main(argv)
    assert message in capsys.readouterr().err
