"""Locust headless against a real gateway: every task of the mix runs without failures and lands in
Locust's CSV/HTML report, and the thresholds given on the command line set the exit code."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.mix import TASKS
from tests.deploy.gateway import Gateway, running_gateway, tiny_processed_dataset

ROOT = Path(__file__).resolve().parents[2]
TASK_NAMES = {"Recommend cached", "Recommend fresh", "Recommend one-off edits", "EditProfile", "GetProfile"}


@pytest.fixture(scope="module")
def gateway(python_repository: Path) -> Gateway:
    with running_gateway(python_repository) as running:
        yield running


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_processed_dataset(tmp_path_factory.mktemp("data") / "tiny")


def locust(gateway: Gateway, dataset: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "locust", "--config", "loadtests/locust.conf",
        "--host", gateway.address, "--dataset", str(dataset), "--token", gateway.token,
        "--users", "4", "--spawn-rate", "4", "--run-time", "4s",
        "--csv", str(out / "apron"), "--html", str(out / "report.html"), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_mix_runs_without_failures_and_writes_the_report(gateway: Gateway, dataset: Path, tmp_path: Path) -> None:
    result = locust(gateway, dataset, tmp_path, "--max-failure-ratio", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "apron_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert set(rows) >= TASK_NAMES, f"tasks missing from the stats: {TASK_NAMES - set(rows)}"
    for name in TASK_NAMES:
        assert int(rows[name]["Request Count"]) > 0 and int(rows[name]["Failure Count"]) == 0, rows[name]
    total = rows["Aggregated"]
    assert int(total["Request Count"]) >= sum(int(rows[name]["Request Count"]) for name in TASK_NAMES)
    assert float(total["99%"]) > 0
    assert (tmp_path / "report.html").stat().st_size > 1000
    assert "thresholds met" in result.stderr


def test_impossible_p99_threshold_fails_the_run(gateway: Gateway, dataset: Path, tmp_path: Path) -> None:
    result = locust(gateway, dataset, tmp_path, "--max-p99-ms", "0.001", "--run-time", "2s")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "p99" in result.stderr and "--max-p99-ms 0.001" in result.stderr
    assert (tmp_path / "apron_stats.csv").is_file()  # the report is still written


def test_weights_select_the_tasks(gateway: Gateway, dataset: Path, tmp_path: Path) -> None:
    weights = [f"--{option.replace('_', '-')}" for option, _ in TASKS.values()]
    only_get_profile = [arg for flag in weights for arg in (flag, "1" if flag == "--weight-get-profile" else "0")]
    result = locust(gateway, dataset, tmp_path, *only_get_profile, "--run-time", "2s")
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "apron_stats.csv").open() as handle:
        names = {row["Name"] for row in csv.DictReader(handle)} - {"Aggregated"}
    # ListPrototypes and the first Recommend of each user run in on_start, whatever the weights
    assert names == {"GetProfile", "ListPrototypes", "Recommend cached"}
