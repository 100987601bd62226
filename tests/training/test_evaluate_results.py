"""RESULTS.md generation: the target verdicts are computed from the numbers, in the Table 1 layout."""

from pathlib import Path

from training.results import comparison, write_report


def _row(ndcg: float, pct: float | str = "N/A", delta: float | str = "N/A") -> dict:
    row = {
        "recall@20": ndcg * 0.9, "recall@20_stderr": 0.01, "recall@50": ndcg * 1.2, "recall@50_stderr": 0.01,
        "ndcg@100": ndcg, "ndcg@100_stderr": 0.02, "delta@20": delta, "pct_delta@20": pct,
        "epochs_run": 12, "best_epoch": 7, "train_wall_time_s": 42.0,
        "settings": {"epochs": 50, "batch_size": 128, "lr": 0.001, "patience": 10, "hyperparameters": {}},
    }  # fmt: skip
    if delta != "N/A":
        row["delta@20_stderr"] = 0.004
    return row


def _results(apron_ndcg: float, apron_pct: float, sem_pct: float) -> dict:
    models = {
        "multivae": _row(0.42),
        "sem-macridvae": _row(0.45, sem_pct, sem_pct / 300),
        "apron": _row(apron_ndcg, apron_pct, apron_pct / 300),
    }
    return {
        "datasets": {"lastfm-2k": {"fingerprint": "f" * 64, "n_items": 2813, "n_tags": 80,
                                   "users": {"train": 1487, "val_tr": 186, "test_tr": 186}, "models": models}},
        "machine": "test machine", "torch": "2.x", "python": "3.11", "date": "today", "total_wall_time_s": 60.0,
    }  # fmt: skip


def test_targets_met() -> None:
    text = "\n".join(comparison(_results(apron_ndcg=0.42, apron_pct=21.0, sem_pct=4.0)))
    assert "Accuracy target met" in text and "6.7% below" in text  # (0.45 - 0.42) / 0.45
    assert "Controllability target met" in text and "21.0%" in text


def test_targets_missed_are_said_with_a_reason() -> None:
    text = "\n".join(comparison(_results(apron_ndcg=0.38, apron_pct=5.0, sem_pct=4.0)))
    assert "Accuracy target NOT met" in text and "15.6% below" in text
    assert "Controllability target NOT met" in text and "Why:" in text


def test_report_has_table_one_layout(tmp_path: Path) -> None:
    path = write_report(_results(0.42, 21.0, 4.0), tmp_path / "RESULTS.md", "python -m training.results")
    text = path.read_text()
    assert "| Method | Recall@20 (↑) | Recall@50 (↑) | NDCG@100 (↑) | Δ@20 (↑) | %Δ@20 (↑) |" in text
    assert "| MultiVAE | 0.3780 ± 0.0100 | 0.5040 ± 0.0100 | 0.4200 ± 0.0200 | N/A | N/A |" in text
    assert "| APRON (ours) |" in text and "0.0700 ± 0.0040 | 21.0 |" in text
    assert "Seed 0" in text and "test machine" in text and "`python -m training.results`" in text
