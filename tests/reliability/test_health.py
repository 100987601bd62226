"""Health that tells the truth, on real `apron serve` processes over loopback (RELIABILITY.md):

- liveness (`apron.live`, `/healthz/live`) apart from readiness (`apron.ready`, the overall `""`,
  `apron.v1.Recommender`, `/healthz/ready`), `/metrics` beside them and 404 for any other path;
- external Redis down: the gateway stays live AND ready (Recommend with a history still answers),
  says so through `apron.redis` and `apron_backend_up{backend="redis"}`, and the shipped
  `ApronClient` and `apron client` get their Recommend answered (EditProfile: UNAVAILABLE after
  its bounded retries);
- a version whose apron_metadata does not match its graphs (profile and scorer swapped, the item
  list shortened, k_max 1e9) is refused at start with a message naming the mismatch, and refused
  at a hot rollout while the old version keeps serving.

Every wait is on a condition (a health status, a process's exit), never on the clock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from loadtests.gateway_process import (
    APRON,
    CODE_ROOT,
    GatewayProcess,
    GatewayProcessError,
    run_gateway,
    start_gateway,
)
from serving import auth, health
from serving.client import RETRY_ATTEMPTS, ApronClient
from serving.redis_process import RedisProcess
from tests.polling import wait_until
from tests.reliability.conftest import Tokens
from tests.serving.conftest import liked_history

pytestmark = pytest.mark.timeout(300)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TIMEOUT_S = 60.0  # client deadlines far beyond any call on a loaded machine


def gateway_args(repository: Path, tokens: Tokens, redis_url: str, *extra: str) -> list[str]:
    return ["--repository", str(repository), "--no-build-demo", "--jwt-secret-file", str(tokens.path),
            "--redis-url", redis_url, "--edit-rate", "0", *extra]  # fmt: skip


def code_env() -> dict[str, str]:
    """This checkout's code for a subprocess (`apron client`), as the gateway gets it."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CODE_ROOT), os.environ.get("PYTHONPATH")]))}


def status(gateway: GatewayProcess, service: str) -> int:
    with grpc.insecure_channel(gateway.target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT_S).status


def http_get(gateway: GatewayProcess, path: str) -> tuple[int, str]:
    """(HTTP status, body) of GET `path` on the gateway's metrics port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}{path}", timeout=TIMEOUT_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def backend_up(gateway: GatewayProcess, backend: str) -> float:
    _, text = http_get(gateway, "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "apron_backend_up" and sample.labels.get("backend") == backend:
                return sample.value
    raise AssertionError(f"apron_backend_up{{backend={backend!r}}} not in /metrics")


def assert_live_and_ready(gateway: GatewayProcess) -> None:
    for service in (health.LIVE, health.READY, "", health.RECOMMENDER, health.INFERENCE):
        assert status(gateway, service) == SERVING, service
    assert http_get(gateway, "/healthz/live") == (200, "ok\n")
    assert http_get(gateway, "/healthz/ready") == (200, "ok\n")


def test_redis_down_the_gateway_stays_live_and_ready_and_the_client_is_answered(
    python_repository: Path, tokens: Tokens, main_tags, tmp_path: Path
) -> None:
    history = liked_history(main_tags, 0, 1)
    with RedisProcess() as redis, run_gateway(gateway_args(python_repository, tokens, redis.url), tmp_path) as gateway:
        assert_live_and_ready(gateway)
        assert status(gateway, health.REDIS) == SERVING and backend_up(gateway, "redis") == 1
        assert backend_up(gateway, "inference") == 1
        for path in ("/", "/healthz", "/healthz/nope", "/metricsx"):
            assert http_get(gateway, path)[0] == 404, path

        token = auth.mint_token(tokens.secret, "health-test", auth.Role.SERVICE)
        with ApronClient(gateway.target, token=token, timeout_s=TIMEOUT_S) as client:
            client.edit("alice", scale={"tag1": 0.5})  # while Redis answers
            redis.stop()
            wait_until(lambda: status(gateway, health.REDIS) == NOT_SERVING, "apron.redis NOT_SERVING")
            assert backend_up(gateway, "redis") == 0
            assert_live_and_ready(gateway)  # degraded, not out of rotation, not restarted

            answer = client.recommend("alice", history=history, k=5)
            assert len(answer.items) == 5 and not answer.profile_from_cache
            assert client.retries == 0  # answered at once: no health-checking detour, no retry
            command = [*APRON, "client", "--target", gateway.target, "--token", token, "recommend", "--user", "alice",
                       *(f"--history={item}" for item in history), "--k", "5"]  # fmt: skip
            cli = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=code_env())
            assert cli.returncode == 0 and "model version 1, profile computed" in cli.stdout, cli.stderr

            with pytest.raises(grpc.RpcError) as refused:
                client.edit("alice", scale={"tag1": 0.25})
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, refused.value
            assert client.retries == RETRY_ATTEMPTS - 1  # retried, and bounded
        assert_live_and_ready(gateway)
    assert "Traceback" not in gateway.log()


# ------------------------------------------------------------------------------ metadata against graphs


def swap_graphs(repository: Path, version: int) -> None:
    profile = repository / "apron_profile" / str(version) / "model.onnx"
    scorer = repository / "apron_scorer" / str(version) / "model.onnx"
    held = profile.with_suffix(".held")
    profile.rename(held)
    scorer.rename(profile)
    held.rename(scorer)


def edit_metadata(repository: Path, version: int, attack: str) -> None:
    """One of the attacks on version `version`'s apron_metadata (and the newest-version copy)."""
    path = repository / f"apron_metadata.v{version}.json"
    meta = json.loads(path.read_text())
    if attack == "shortened item list":
        for field in ("item_ids", "item_names"):
            meta[field] = meta[field][:100]
        meta["n_items"] = 100
    elif attack == "k_max 1e9":
        meta["k_max"] = 10**9
    path.write_text(json.dumps(meta))
    (repository / "apron_metadata.json").write_text(json.dumps(meta))


ATTACKS = {  # attack -> what the refusal must name
    "swapped graphs": "it is the apron_scorer graph (profile and scorer swapped?)",
    "shortened item list": "beyond n_items 100: its catalog is larger",
    "k_max 1e9": "k_max 1000000000 is outside [1, n_items 150]",
}


def attacked_copy(python_repository: Path, tmp_path: Path, attack: str, version: int = 1) -> Path:
    repository = tmp_path / "model_repository"
    if not repository.exists():
        shutil.copytree(python_repository, repository)
    if attack == "swapped graphs":
        swap_graphs(repository, version)
    else:
        edit_metadata(repository, version, attack)
    return repository


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_version_whose_metadata_does_not_match_its_graphs_is_refused_at_start(
    attack: str, python_repository: Path, redis_server: RedisProcess, tokens: Tokens, tmp_path: Path
) -> None:
    repository = attacked_copy(python_repository, tmp_path, attack)
    with pytest.raises(GatewayProcessError) as refused:
        start_gateway(gateway_args(repository, tokens, redis_server.url), tmp_path / "gateway")
    message = str(refused.value)
    assert "exited with 2" in message and "version 1 refused, its apron_metadata does not match its graphs" in message
    assert ATTACKS[attack] in message
    assert "Traceback" not in message


def test_a_hot_rollout_of_a_mismatched_version_is_refused_and_the_old_one_serves_on(
    python_repository: Path, redis_server: RedisProcess, tokens: Tokens, main_tags, tmp_path: Path
) -> None:
    repository = tmp_path / "model_repository"
    shutil.copytree(python_repository, repository)
    token = auth.mint_token(tokens.secret, "health-test", auth.Role.SERVICE)
    with run_gateway(gateway_args(repository, tokens, redis_server.url), tmp_path / "gateway") as gateway:
        # version 2: version 1's files with its graphs swapped
        for model in ("apron_profile", "apron_scorer"):
            shutil.copytree(repository / model / "1", repository / model / "2")
        swap_graphs(repository, 2)
        meta = json.loads((repository / "apron_metadata.v1.json").read_text())
        (repository / "apron_metadata.v2.json").write_text(json.dumps({**meta, "model_version": 2}))
        with ApronClient(gateway.target, token=token, timeout_s=TIMEOUT_S) as client:
            with pytest.raises(grpc.RpcError) as refused:
                client.load_model(2)
            assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert ATTACKS["swapped graphs"] in refused.value.details()
            status_now = client.model_status()
            assert [v.version for v in status_now.serving] == [1] and "version 2 refused" in status_now.last_error
            assert client.recommend("bob", history=liked_history(main_tags, 2, 3), k=3).model_version == 1
        assert_live_and_ready(gateway)
