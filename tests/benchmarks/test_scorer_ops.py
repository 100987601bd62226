"""benchmarks/scorer_ops.py profiles the scorer graph asked for k and for K_MAX, and times the
log-softmax's two ONNX forms and the scorer with u folded into f and without (shares and speeds
never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import scorer_ops


def test_each_case_gets_a_row_with_the_topk_share(tmp_path: Path) -> None:
    output = tmp_path / "ops.md"
    scorer_ops.main(["--items", "300", "--batches", "2", "--k", "5", "--runs", "3", "--output", str(output)])
    ops_table, rest = output.read_text().split("The log-softmax over the catalog alone")
    normaliser_table, warm_fold_table, cold_fold_table = rest.split("The whole scorer graph")
    rows = [line.split("|") for line in ops_table.splitlines() if line.startswith("| 300 |")]
    assert [row[3].strip() for row in rows] == ["k = 5", "K_MAX"]
    for row in rows:
        total, top = (float(cell.replace(",", "")) for cell in row[4:6])
        assert total > 0 and 0 < top <= total
    for table in (normaliser_table, warm_fold_table, cold_fold_table):
        [row] = [line.split("|") for line in table.splitlines() if line.startswith("| 300 | 2 |")]
        slow, fast, ratio = (float(cell.replace(",", "").replace("×", "")) for cell in row[3:6])
        assert slow > 0 and fast >= 0 and ratio > 0  # the ratio is of the unrounded times: not recomputed here


def test_the_two_normaliser_forms_give_the_same_log_softmax() -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    logits = np.random.default_rng(1).standard_normal((3, 50)).astype(np.float32) * 4
    expected = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    for form in scorer_ops.NORMALISER_FORMS:
        session = ort.InferenceSession(scorer_ops.normaliser_graph(form), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"x": logits})[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("argv", [["--k", "0"], ["--items", "100", "--k", "200"], ["--runs", "0"]])
def test_settings_that_measure_nothing_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        scorer_ops.main(argv)
    assert "--k in [1, min(K_MAX" in capsys.readouterr().err
