"""`apron serve` and `apron client` as a person runs them: real processes, real sockets, auth on
with the development secret (the embedded default), a private redis-server, SIGTERM to stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def apron(*args: str, cwd: Path, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300, **kwargs
    )


@pytest.fixture
def served(python_repository: Path, tmp_path: Path):  # noqa: F811
    """`apron serve` on free ports in tmp_path (where its development secret is created)."""
    env = {**os.environ, "APRON_LOG_FORMAT": "text", "APRON_GIL_SWITCH_INTERVAL_MS": "0.25", "APRON_GC_GEN0_THRESHOLD": "4321"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--repository", str(python_repository), "--port", "0", "--metrics-port", "0", "--no-build-demo"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    target, deadline = None, time.monotonic() + 300  # a condition: ends once the banner is printed
    while target is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        match = re.search(r"APRON gateway on (\S+)", line)
        target = match[1] if match else None
    assert target, f"apron serve did not start: {process.stderr.read() if process.poll() is not None else ''}"
    yield target, process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_serve_sets_the_gil_switch_interval_and_gc_threshold_it_is_given(served: tuple[str, subprocess.Popen]) -> None:
    """--gil-switch-interval-ms and --gc-gen0-threshold (here from their APRON_ variables) reach the
    gateway process, whose start-up line reports what it runs with."""
    _, process = served
    process.terminate()
    _, stderr = process.communicate(timeout=120)
    assert re.search(r" serving .*\bgil_switch_interval_ms=0\.25\b", stderr), stderr[-2000:]
    assert re.search(r" serving .*\bgc_gen0_threshold=4321\b", stderr), stderr[-2000:]


def test_serve_and_client_round_trip(served: tuple[str, subprocess.Popen], tmp_path: Path) -> None:
    target, process = served
    history = ["--history", "track-0000", "--history", "track-0006", "--history", "track-0007"]
    first = apron("client", "--target", target, "--json", "recommend", "--user", "alice", *history, "--k", "5", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert len(answer["items"]) == 5 and answer["model_version"] == "1"

    top = apron("client", "--target", target, "recommend", "--user", "alice", "--k", "3", "--profile-view", "top",
                "--profile-top-n", "2", cwd=tmp_path)  # fmt: skip
    assert top.returncode == 0, top.stderr
    assert len([line for line in top.stdout.splitlines() if re.match(r"  tag\d ", line)]) <= 2
    none = apron("client", "--target", target, "--json", "recommend", "--user", "alice", "--k", "3", "--profile-view", "none",
                 cwd=tmp_path)  # fmt: skip
    assert none.returncode == 0 and "profile" not in json.loads(none.stdout) and len(json.loads(none.stdout)["items"]) == 3

    edit = apron("client", "--target", target, "edit", "--user", "alice", "--scale", "tag0=0", cwd=tmp_path)
    assert edit.returncode == 0, edit.stderr
    assert "stored edits: tag0: scale 0" in edit.stdout and "[scale 0]" in edit.stdout

    profile = apron("client", "--target", target, "profile", "--user", "alice", cwd=tmp_path)
    assert profile.returncode == 0 and "tag0" in profile.stdout
    prototypes = apron("client", "--target", target, "prototypes", cwd=tmp_path)
    assert prototypes.returncode == 0 and "k_max 20" in prototypes.stdout

    # the rollout commands (the development token is a service token)
    status = apron("client", "--target", target, "admin", "status", cwd=tmp_path)
    assert status.returncode == 0 and "serving version 1 (primary, 100% of users)" in status.stdout, status.stderr
    assert "repository versions: 1" in status.stdout
    pinned = apron("client", "--target", target, "admin", "load", "--version", "1", "--pin", cwd=tmp_path)
    assert pinned.returncode == 0 and "(pinned)" in pinned.stdout, pinned.stderr
    missing = apron("client", "--target", target, "admin", "load", "--version", "9", cwd=tmp_path)
    assert missing.returncode == 2 and "INVALID_ARGUMENT" in missing.stderr and "holds [1]" in missing.stderr
    process.send_signal(signal.SIGHUP)  # a reload with nothing newer: the process serves on
    again = apron("client", "--target", target, "admin", "status", cwd=tmp_path)
    assert again.returncode == 0 and "serving version 1" in again.stdout and process.poll() is None

    # client mistakes: one clear line, exit 2
    bad = apron("client", "--target", target, "recommend", "--user", "alice", "--k", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "INVALID_ARGUMENT: k must be in [1, 20]" in bad.stderr
    unknown = apron("client", "--target", target, "edit", "--user", "alice", "--scale", "jazz", cwd=tmp_path)
    assert unknown.returncode == 2 and "expected TAG=NUMBER" in unknown.stderr
    twice = apron("client", "--target", target, "edit", "--user", "alice", "--scale", "jazz=0", "--scale", "jazz=2", cwd=tmp_path)
    assert twice.returncode == 2 and "--scale jazz: given twice (0 and 2)" in twice.stderr, twice.stderr
    # auth is on: without the development secret (another directory) the call is refused
    stranger = apron("client", "--target", target, "prototypes", cwd=tmp_path.parent)
    assert stranger.returncode == 2 and "UNAUTHENTICATED" in stranger.stderr

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert "stopped" in process.stderr.read()


def test_serve_reports_a_missing_model(tmp_path: Path) -> None:
    result = apron("serve", "--repository", str(tmp_path / "nothing"), "--no-build-demo", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "apron_metadata.json does not exist" in result.stderr and "Traceback" not in result.stderr


def test_a_client_that_reaches_no_gateway_says_what_to_do(tmp_path: Path) -> None:
    from common.net import free_port

    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = apron("client", "--target", target, "--timeout", "5", "prototypes", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "UNAVAILABLE" in result.stderr
    assert f"nothing answers at {target}: is `apron serve` running?" in result.stderr and "--target" in result.stderr


def test_a_gateways_own_unavailable_gets_no_connection_hint() -> None:
    from serving.cli import rpc_error_message

    redis_down = "the profile store (Redis) is unavailable: Error 111 connecting to localhost:6379. Connection refused."
    assert rpc_error_message("UNAVAILABLE", redis_down, "h:1") == f"UNAVAILABLE: {redis_down}"


def test_profile_rows_at_zero_are_summarised_unless_edited() -> None:
    """A sharp model puts a short history on a few prototypes: the client lists those, the edited
    ones (even at 0.0%), and counts the rest in one line."""
    from serving.cli import format_profile
    from serving.proto_gen.apron.v1 import recommender_pb2 as pb

    profile = pb.Profile(history_length=2, weights=[
        pb.PrototypeWeight(prototype="80s", weight=0.75, base_weight=0.5, prototype_item_id="157"),
        pb.PrototypeWeight(prototype="jazz", weight=0.0, base_weight=0.5, prototype_item_id="903",
                           edit=pb.Edit(prototype="jazz", scale=0.0)),
        pb.PrototypeWeight(prototype="rock", weight=0.25, base_weight=0.0, prototype_item_id="154"),
        pb.PrototypeWeight(prototype="metal", weight=0.0, base_weight=0.0, prototype_item_id="707"),
        pb.PrototypeWeight(prototype="punk", weight=1e-31, base_weight=1e-31, prototype_item_id="1513"),
    ])  # fmt: skip
    lines = format_profile(profile)
    assert [line.split()[0] for line in lines[1:-1]] == ["80s", "rock", "jazz"]
    assert "[scale 0]" in lines[3] and lines[-1] == "  ... and 2 more prototypes at 0.0%"
