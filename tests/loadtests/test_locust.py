"""Locust headless against a real gateway: every task of the mix runs without failures and lands in
Locust's CSV/HTML report, the thresholds given on the command line set the exit code, and calls the
gateway sheds (RESOURCE_EXHAUSTED + retry-after-ms) are retried and counted as throttled, not failed.

Runs end on a condition (`--min-requests`: every task has that many requests), with `--run-time`
only as the deadline; the gateway's limits are set here, not taken from the defaults."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.mix import TASKS
from tests.deploy.gateway import Gateway, running_gateway, tiny_processed_dataset
from tests.serving.certs import Pki, make_pki

ROOT = Path(__file__).resolve().parents[2]
TASK_NAMES = {"Recommend cached", "Recommend fresh", "Recommend one-off edits", "EditProfile", "GetProfile"}


DEADLINE = "120s"  # --run-time: only a deadline, runs end on --min-requests


@pytest.fixture(scope="module")
def gateway(python_repository: Path) -> Gateway:
    """Limits far above what 4 users can reach: nothing is shed."""
    with running_gateway(python_repository, edit_rate=10_000.0, edit_burst=10_000) as running:
        yield running


@pytest.fixture(scope="module")
def strict_gateway(python_repository: Path) -> Gateway:
    """One EditProfile a second per user, no burst: back-to-back editors are shed."""
    with running_gateway(python_repository, edit_rate=1.0, edit_burst=1) as running:
        yield running


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_processed_dataset(tmp_path_factory.mktemp("data") / "tiny")


def locust(gateway: Gateway, dataset: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "locust", "--config", "loadtests/locust.conf",
        "--host", gateway.address, "--dataset", str(dataset), "--token", gateway.token,
        "--users", "4", "--spawn-rate", "4", "--run-time", DEADLINE, "--stop-timeout", "0",
        "--csv", str(out / "apron"), "--html", str(out / "report.html"), "--json-file", str(out / "stats"), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_missing_dataset_is_explained_without_a_traceback(gateway: Gateway, tmp_path: Path) -> None:
    result = locust(gateway, tmp_path / "no-such-dataset", tmp_path, "--min-requests", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no test users in" in result.stderr and "LOADTEST_DATASET=DIR" in result.stderr


def test_a_dataset_of_another_catalog_stops_the_run_with_what_to_pass(gateway: Gateway, dataset: Path, tmp_path: Path) -> None:
    """The gateway serves the tiny model; the dataset's items are renamed: none is in its catalog."""
    from training.data.dataset import ProcessedDataset

    data = ProcessedDataset.load(dataset)
    other = dataclasses.replace(data, item_ids=[f"other-{item}" for item in data.item_ids]).save(tmp_path / "other")
    result = locust(gateway, other, tmp_path, "--min-requests", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trained on another catalog than" in result.stderr and "LOADTEST_DATASET=DIR" in result.stderr


def test_catalog_mismatch_is_none_for_the_served_catalog() -> None:
    from loadtests.catalog import catalog_mismatch  # not locustfile: it patches grpc for gevent

    assert catalog_mismatch({"a", "b", "c"}, ["a", "c"], 1, "d") is None
    assert "1 of its 2 prototype items (e.g. 'x')" in (catalog_mismatch({"a"}, ["a", "x"], 1, "d") or "")


def final_stats(out: Path) -> dict[str, dict]:
    """Locust's stats at the end of the run (its --json-file, written on shutdown; the CSV files are
    rewritten once a second while the run goes, so they may miss its last moments)."""
    return {entry["name"]: entry for entry in json.loads((out / "stats.json").read_text())}


def test_mix_runs_without_failures_and_writes_the_report(gateway: Gateway, dataset: Path, tmp_path: Path) -> None:
    result = locust(gateway, dataset, tmp_path, "--max-failure-ratio", "0", "--min-requests", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    stats = final_stats(tmp_path)
    assert set(stats) >= TASK_NAMES, f"tasks missing from the stats: {TASK_NAMES - set(stats)}"
    for name in TASK_NAMES:
        assert stats[name]["num_requests"] >= 5 and stats[name]["num_failures"] == 0, stats[name]
    with (tmp_path / "apron_stats.csv").open() as handle:
        assert "Aggregated" in {row["Name"] for row in csv.DictReader(handle)}
    report = (tmp_path / "report.html").read_text()
    assert all(name in report for name in TASK_NAMES)
    assert "thresholds met" in result.stderr


def test_impossible_p99_threshold_fails_the_run(gateway: Gateway, dataset: Path, tmp_path: Path) -> None:
    result = locust(gateway, dataset, tmp_path, "--max-p99-ms", "0.001", "--min-requests", "1")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "p99" in result.stderr and "--max-p99-ms 0.001" in result.stderr
    assert (tmp_path / "apron_stats.csv").is_file() and (tmp_path / "report.html").is_file()  # still written


def test_weights_select_the_tasks(gateway: Gateway, dataset: Path, tmp_path: Path) -> None:
    weights = [f"--{option.replace('_', '-')}" for option, _ in TASKS.values()]
    only_get_profile = [arg for flag in weights for arg in (flag, "1" if flag == "--weight-get-profile" else "0")]
    result = locust(gateway, dataset, tmp_path, *only_get_profile, "--min-requests", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    names = set(final_stats(tmp_path))
    # ListPrototypes and the first Recommend of each user run in on_start, whatever the weights
    assert names == {"GetProfile", "ListPrototypes", "Recommend cached"}


def only_edits() -> list[str]:
    weights = [f"--{option.replace('_', '-')}" for option, _ in TASKS.values()]
    return [arg for flag in weights for arg in (flag, "1" if flag == "--weight-edit-profile" else "0")]


def test_shed_calls_are_retried_and_counted_as_throttled(strict_gateway: Gateway, dataset: Path, tmp_path: Path) -> None:
    """4 simulated users edit ONE test user back to back against a 1/s limit: calls are shed, and
    the users wait the retry-after-ms they are given, so nothing fails; each call's wait is in its
    time (it waited at least one retry-after-ms of the front's or the limiter's)."""
    result = locust(
        strict_gateway, dataset, tmp_path, *only_edits(), "--max-test-users", "1", "--max-failure-ratio", "0",
        "--max-throttled-ratio", "1", "--min-requests", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    stats = final_stats(tmp_path)
    assert stats["EditProfile"]["num_requests"] >= 4
    assert sum(entry["num_failures"] for entry in stats.values()) == 0, stats
    throttled = json.loads((tmp_path / "apron_throttled.json").read_text())
    assert throttled.get("EditProfile", 0) > 0, throttled
    assert stats["EditProfile"]["max_response_time"] >= 50  # a shed call's time holds its retry wait
    assert "throttled ratio" in result.stderr


def test_a_run_mostly_shed_breaks_the_default_throttled_threshold(strict_gateway: Gateway, dataset: Path, tmp_path: Path) -> None:
    """The same shedding with the default --max-throttled-ratio (the option's own, 0.01): no failure,
    and still the run fails, saying why."""
    result = locust(strict_gateway, dataset, tmp_path, *only_edits(), "--max-test-users", "1", "--min-requests", "4")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "--max-throttled-ratio 0.01" in result.stderr and "attempts shed" in result.stderr
    assert sum(entry["num_failures"] for entry in final_stats(tmp_path).values()) == 0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_gateway(python_repository: Path, pki: Pki) -> Gateway:
    """TLS on the gRPC port, as the deployed front: a certificate for localhost/127.0.0.1 from a test CA."""
    with running_gateway(python_repository, edit_rate=10_000.0, edit_burst=10_000,
                         tls_cert=str(pki.server.cert), tls_key=str(pki.server.key)) as running:  # fmt: skip
        yield running


def test_tls_ca_reaches_a_tls_gateway(tls_gateway: Gateway, pki: Pki, dataset: Path, tmp_path: Path) -> None:
    """The deployment publishes only TLS: --tls-ca speaks it; --tls-server-name checks the certificate
    for another name than the address dialled (127.0.0.1 here, `localhost` in the certificate too)."""
    for extra in (["--tls-ca", str(pki.ca.cert)], ["--tls-ca", str(pki.ca.cert), "--tls-server-name", "localhost"]):
        result = locust(tls_gateway, dataset, tmp_path, *extra, "--max-failure-ratio", "0", "--min-requests", "2")
        assert result.returncode == 0, (extra, result.stderr[-3000:])
        assert all(entry["num_failures"] == 0 for entry in final_stats(tmp_path).values())


@pytest.mark.parametrize(
    "extra",
    [
        [],  # plaintext against TLS
        ["--tls-server-name", "gateway.example"],  # a name with no TLS to check it on
    ],
    ids=["plaintext", "name-without-ca"],
)
def test_a_tls_gateway_is_not_reached_without_the_right_tls(tls_gateway: Gateway, pki: Pki, dataset: Path, tmp_path: Path, extra: list[str]) -> None:
    # every user stops at its failed set-up call, which ends the run (`setup_failed`), not a deadline
    result = locust(tls_gateway, dataset, tmp_path, *extra, "--min-requests", "1", "--rpc-timeout", "2")
    if extra:
        assert result.returncode == 2 and "--tls-server-name needs --tls-ca" in result.stderr, result.stderr[-3000:]
    else:
        assert result.returncode == 1, result.stderr[-3000:]
        assert final_stats(tmp_path)["ListPrototypes"]["num_failures"] > 0


def test_a_certificate_for_another_name_is_refused(tls_gateway: Gateway, pki: Pki, dataset: Path, tmp_path: Path) -> None:
    result = locust(tls_gateway, dataset, tmp_path, "--tls-ca", str(pki.ca.cert), "--tls-server-name", "gateway.example",
                    "--min-requests", "1", "--rpc-timeout", "2")  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    stats = final_stats(tmp_path)
    assert stats["ListPrototypes"]["num_failures"] == stats["ListPrototypes"]["num_requests"] > 0
