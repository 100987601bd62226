"""benchmarks/int8_quality.py: its ranking metrics are the offline protocol's, read from the served
top 100; the whole command reports every part (speeds never asserted)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from benchmarks import int8_quality
from export.onnx_export import export_onnx
from tests.export.fixtures import TINY, tiny_checkpoint, tiny_dataset  # noqa: F401
from training.checkpoint import load_checkpoint
from training.metrics import exclude_history, ndcg_at_k, recall_at_k


def test_metrics_from_the_served_top_100_equal_the_offline_ones(tiny_checkpoint: Path) -> None:  # noqa: F811
    """Ranks of the served graphs' top 100 stand in for the model's scores: Recall@20/50 and
    NDCG@100 come out as `training.metrics` computes them from the PyTorch model's full scores."""
    model, _ = load_checkpoint(tiny_checkpoint)
    _, _, users = tiny_dataset()
    rng = np.random.default_rng(0)
    fold_in = users[:40] * (rng.random(users[:40].shape) < 0.6)
    heldout = sp.csr_matrix(users[:40] - fold_in)
    keep = [u for u in range(40) if fold_in[u].any() and heldout[u].nnz]
    histories = [np.flatnonzero(fold_in[u]).astype(np.int64) for u in keep]
    served = int8_quality.served_answers(export_onnx(model, k_max=int8_quality.TOP_N).onnx, histories, heldout[keep], TINY["n_items"])
    with torch.no_grad():
        scores = exclude_history(model(torch.from_numpy(fold_in[keep]).float()).numpy(), fold_in[keep])
    expected = {"Recall@20": recall_at_k(scores, heldout[keep], 20), "Recall@50": recall_at_k(scores, heldout[keep], 50), "NDCG@100": ndcg_at_k(scores, heldout[keep], 100)}
    for name, values in expected.items():
        np.testing.assert_allclose(served.per_user[name], values, atol=1e-6, err_msg=name)
    assert int8_quality.agreement(served.top_ids, served.top_ids) == 1.0
    assert int8_quality.agreement(served.top_ids, served.top_ids[:, ::-1]) < 1.0


def test_every_part_reports_both_precisions(tmp_path: Path) -> None:
    output = tmp_path / "int8.md"
    int8_quality.main([
        "--dataset", "synthetic", "--epochs", "1", "--items", "200", "--scorer-seconds", "0.05",
        "--rounds", "1", "--seconds", "0.5", "--load-processes", "1", "--output", str(output),
    ])  # fmt: skip
    text = output.read_text()
    for metric in int8_quality.METRICS:
        row = re.search(rf"^\| {metric} \| ([\d.]+) \| ([\d.]+) \| ([+-][\d.]+) \(([+-][\d.]+) to ([+-][\d.]+)\) \|$", text, re.M)
        assert row is not None, metric
        fp32, int8, mean, low, high = map(float, row.groups())
        assert 0 <= fp32 <= 1 and 0 <= int8 <= 1 and low <= mean <= high
    assert re.search(r"int8 keeps [\d.]+% of fp32's top 10", text)
    for batch in (1, 32):
        cells = re.search(rf"^\| {batch} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)× \|$", text, re.M)
        assert cells is not None and all(float(c) > 0 for c in cells.groups())
    for precision in int8_quality.PRECISIONS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {precision} |"))
        *cells, busy = row.split("|")[2:-1]  # the last: the event loop's share in the open loop, a percentage
        *figures, gc_us = (float(cell) for cell in cells)  # a short run may collect nothing
        assert busy.strip().endswith("%")
        assert all(figure > 0 for figure in figures) and gc_us >= 0


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--items", "100"], ["--scorer-seconds", "0"]])
def test_settings_that_measure_nothing_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        int8_quality.main(argv)
    assert "--epochs must be at least 1" in capsys.readouterr().err
