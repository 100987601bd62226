"""A model rollout under load, as an operator runs it: `apron serve` as a real process with its
private redis-server, Locust driving the whole call mix, and meanwhile version 2 exported into the
repository and rolled out with SIGHUP, rolled back with the admin RPC, and rolled out again with it.
Not one call may fail, every answer names one of the two versions, a user known only under version 1
gets an answer, and an edit stored before the swap is applied after it. The same with Triton as the
backend (a real tritonserver in poll mode picks version 2 up beside version 1)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from loadtests.faults import RecommendLoad
from loadtests.gateway_process import GatewayProcess, start_gateway
from serving import auth
from serving.proto_gen.apron.v1 import admin_pb2 as admin
from serving.proto_gen.apron.v1 import admin_pb2_grpc as admin_grpc
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from tests.deploy.gateway import tiny_processed_dataset
from tests.export.fixtures import export_tiny_repository, make_tiny_checkpoint
from tests.polling import eventually, wait_until
from tests.reliability.conftest import Tokens
from tests.serving.conftest import liked_history

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same catalog and prototypes as `tiny_checkpoint`, trained longer: other scores."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint-v2") / "apron.pt", steps=45)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_processed_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture
def repository(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A repository holding version 1 only (version 2 is exported by the test, while serving)."""
    path = tmp_path / "model_repository"
    export_tiny_repository(tiny_checkpoint, path)
    return path


class Locust:
    """Locust headless against `target`, every task of the mix, until `finish()` creates its
    --until-file (and each task has made 5 calls)."""

    def __init__(self, target: str, dataset: Path, token: str, out: Path):
        self.out, self.until = out, out / "done"
        command = [
            sys.executable, "-m", "locust", "--config", "loadtests/locust.conf", "--host", target,
            "--dataset", str(dataset), "--token", token, "--users", "4", "--spawn-rate", "4",
            "--run-time", "600s", "--stop-timeout", "0", "--min-requests", "5", "--until-file", str(self.until),
            "--max-failure-ratio", "0", "--rpc-timeout", "120", "--json-file", str(out / "stats"),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)

    def finish(self) -> dict[str, dict]:
        self.until.touch()
        _, stderr = self.process.communicate(timeout=600)
        stats = self.out / "stats.json"
        assert stats.is_file(), f"locust wrote no stats (exit {self.process.returncode}):\n{stderr[-3000:]}"
        found = {entry["name"]: entry for entry in json.loads(stats.read_text())}
        assert self.process.returncode == 0, stderr[-3000:]
        return found

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def locust_out(tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "locust"
    out.mkdir()
    yield out


async def primary(stub: admin_grpc.ModelAdminStub, token: tuple[tuple[str, str], ...]) -> tuple[int, ...]:
    status = await stub.GetModelStatus(admin.GetModelStatusRequest(), metadata=token, timeout=60)
    return tuple(v.version for v in status.serving)


async def rollout_under_load(
    gateway: GatewayProcess,
    tokens: Tokens,
    dataset: Path,
    out: Path,
    export_v2: Callable[[], object],
    main_tags: np.ndarray,
) -> None:
    service = tokens.service("rollout")
    token = auth.mint_token(tokens.secret, "rollout", auth.Role.SERVICE)
    history = liked_history(main_tags, 2, 3)
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub, admin_stub = pb_grpc.RecommenderStub(channel), admin_grpc.ModelAdminStub(channel)
        # before the swap: a user known under version 1 only, with a stored edit
        first = await stub.Recommend(pb.RecommendRequest(user_id="v1-user", history=history, k=5), metadata=service, timeout=60)
        tag = first.profile.weights[2].prototype
        await stub.EditProfile(
            pb.EditProfileRequest(user_id="v1-user", edits=[pb.Edit(prototype=tag, scale=0)]), metadata=service, timeout=60
        )
        locust = Locust(gateway.target, dataset, token, out)
        readers = RecommendLoad(gateway.target, token, history, n=2, timeout_s=120)
        await readers.start()
        try:
            await eventually(lambda: readers.codes.count("OK") >= 10, "Recommends answered under version 1", timeout=120)
            await asyncio.to_thread(export_v2)  # the load goes on meanwhile
            gateway.process.send_signal(signal.SIGHUP)
            await eventually(lambda: serves_only(admin_stub, service, 2), "version 2 rolled out by SIGHUP", timeout=120)
            await eventually(lambda: 2 in readers.versions, "answers from version 2", timeout=120)
            after = await stub.Recommend(pb.RecommendRequest(user_id="v1-user", k=5), metadata=service, timeout=60)
            assert after.model_version == 2 and not after.profile_from_cache  # recomputed from the v1 history
            edited = {w.prototype: w for w in after.profile.weights}[tag]
            assert edited.weight == 0 and edited.edit.scale == 0  # the edit stored before the swap applies

            status = await admin_stub.LoadModel(admin.LoadModelRequest(version=1, pin=True), metadata=service, timeout=120)
            assert [v.version for v in status.serving] == [1] and status.pinned  # rolled back
            # calls started before the rollback returned may still answer from version 2 (however long
            # they take); every call started after it answers from version 1
            rolled_back = time.monotonic()

            def after_rollback() -> list[int]:
                return [version for start, version in list(readers.answers) if start > rolled_back]

            await eventually(lambda: len(after_rollback()) > 5, "answers after the rollback", timeout=120)
            assert set(after_rollback()) == {1}
            status = await admin_stub.LoadModel(admin.LoadModelRequest(version=0), metadata=service, timeout=120)
            assert [v.version for v in status.serving] == [2] and not status.pinned  # out again, by the RPC
            await eventually(lambda: readers.versions[-1] == 2, "answers from version 2 again", timeout=120)
            stats = locust.finish()
        finally:
            locust.kill()
            await readers.stop()
    assert set(readers.codes) == {"OK"}, f"failed Recommends: {[c for c in readers.codes if c != 'OK']}"
    assert set(readers.versions) == {1, 2}
    failures = {name: entry["num_failures"] for name, entry in stats.items() if entry["num_failures"]}
    assert not failures, f"calls failed under Locust during the rollout: {failures}"
    assert sum(entry["num_requests"] for entry in stats.values()) > 0
    assert "model rollout failed" not in gateway.log()


async def serves_only(stub: admin_grpc.ModelAdminStub, token: tuple[tuple[str, str], ...], version: int) -> bool:
    return await primary(stub, token) == (version,)


async def test_rollout_sighup_rpc_and_rollback_under_locust_load(
    repository: Path, second_checkpoint: Path, dataset: Path, tokens: Tokens, main_tags: np.ndarray, tmp_path: Path, locust_out: Path
) -> None:
    args = ["--repository", str(repository), "--no-build-demo", "--jwt-secret-file", str(tokens.path), "--edit-rate", "0",
            "--redis-dir", str(tmp_path / "redis")]  # fmt: skip
    gateway = start_gateway(args, tmp_path)
    try:
        await rollout_under_load(
            gateway, tokens, dataset, locust_out, lambda: export_tiny_repository(second_checkpoint, repository), main_tags
        )
    finally:
        assert gateway.terminate() == 0


async def test_rollout_under_load_with_triton(
    repository: Path, second_checkpoint: Path, dataset: Path, tokens: Tokens, main_tags: np.ndarray, tmp_path: Path, locust_out: Path
) -> None:
    from tritonclient.grpc import InferenceServerClient

    from export.triton_server import run_triton_server

    with run_triton_server(repository) as triton:
        args = ["--repository", str(repository), "--no-build-demo", "--jwt-secret-file", str(tokens.path),
                "--edit-rate", "0", "--redis-dir", str(tmp_path / "redis"), "--backend", "triton",
                "--triton-url", triton.grpc_url]  # fmt: skip
        gateway = start_gateway(args, tmp_path)
        client = InferenceServerClient(triton.grpc_url)

        def export_and_wait() -> None:
            export_tiny_repository(second_checkpoint, repository)
            wait_until(  # Triton's poll mode loads version 2 beside version 1 (version_policy: the last 2)
                lambda: all(client.is_model_ready(m, v) for m in ("apron_profile", "apron_scorer") for v in ("1", "2")),
                "Triton serves both versions", timeout=180,
            )

        try:
            await rollout_under_load(gateway, tokens, dataset, locust_out, export_and_wait, main_tags)
        finally:
            assert gateway.terminate() == 0
