"""The soak script end to end on the tiny model, briefly (`pytest -m slow tests/reliability`; not in
the default run: the real soak is minutes long, see RELIABILITY.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.soak import soak
from tests.deploy.gateway import tiny_processed_dataset


@pytest.mark.slow
def test_soak_holds_seventy_percent_without_failures(python_repository: Path, tmp_path: Path) -> None:
    dataset = tiny_processed_dataset(tmp_path / "data" / "tiny")
    out = tmp_path / "soak"
    code = soak.main([
        "--dataset", str(dataset), "--repository", str(python_repository), "--minutes", "1.5",
        "--capacity-seconds", "15", "--capacity-users", "8", "--sample-seconds", "1", "--out", str(out),
        "--max-memory-growth", "0.10",
    ])  # fmt: skip
    report = json.loads((out / "soak.json").read_text())
    assert report["soak"]["failures"] == 0 and report["soak"]["requests"] > 100, report["soak"]
    assert report["soak"]["rps"] == pytest.approx(0.7 * report["capacity"]["rps"], rel=0.25)
    assert report["memory"]["flat"], report["memory"]
    assert code == 0
