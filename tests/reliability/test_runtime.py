"""One runtime for one process and for `--workers N` (serving/runtime.py, serving/resources.py): the
private redis-server is started once and, killed with -9, restarted by the same supervisor in both
shapes, with every acknowledged edit still there and the gateway answering again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import psutil
import pytest

from loadtests.faults import redis_child
from loadtests.gateway_process import start_gateway
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from tests.polling import eventually
from tests.reliability.conftest import Tokens
from tests.serving.conftest import liked_history


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_killed_private_redis_is_restarted_by_the_runtime(
    workers: int, python_repository: Path, tokens: Tokens, main_tags, tmp_path: Path
) -> None:
    args = ["--repository", str(python_repository), "--no-build-demo", "--jwt-secret-file", str(tokens.path),
            "--redis-dir", str(tmp_path / "redis"), "--workers", str(workers), "--edit-rate", "0"]  # fmt: skip
    gateway = start_gateway(args, tmp_path)
    service = tokens.service("runtime")
    try:
        assert len([c for c in psutil.Process(gateway.process.pid).children() if "redis-server" in c.name()]) == 1
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            history = liked_history(main_tags, 0, 1)
            first = await stub.Recommend(pb.RecommendRequest(user_id="runtime", history=history, k=3), metadata=service, timeout=60)
            tag = first.profile.weights[0].prototype
            await stub.EditProfile(
                pb.EditProfileRequest(user_id="runtime", edits=[pb.Edit(prototype=tag, scale=0.5)]), metadata=service, timeout=60
            )
            old = redis_child(gateway.process.pid)
            assert old is not None
            old.send_signal(signal.SIGKILL)
            await eventually(
                lambda: (new := redis_child(gateway.process.pid)) is not None and new.pid != old.pid,
                "the runtime started a new redis-server",
            )

            async def profile_back() -> bool:
                try:
                    reply = await stub.GetProfile(pb.GetProfileRequest(user_id="runtime"), metadata=service, timeout=60)
                except grpc.aio.AioRpcError:
                    return False
                return [e.prototype for e in reply.stored_edits] == [tag]

            await eventually(profile_back, "the acknowledged edit read back after the restart", timeout=120)
        assert "the private redis-server died" in gateway.log()
    finally:
        assert gateway.terminate() == 0


def test_ctrl_c_stops_the_gateway_and_then_its_private_redis(python_repository: Path, tokens: Tokens, tmp_path: Path) -> None:
    """A terminal's Ctrl-C sends SIGINT to the whole foreground process group (`make serve`). The
    private redis-server must not get it: it would exit while the gateway drains its calls, be taken
    for a crash (an ERROR) and be started again, only to be stopped a moment later."""
    args = ["--repository", str(python_repository), "--no-build-demo", "--jwt-secret-file", str(tokens.path),
            "--redis-dir", str(tmp_path / "redis")]  # fmt: skip
    gateway = start_gateway(args, tmp_path, new_session=True)
    try:
        redis = redis_child(gateway.process.pid)
        assert redis is not None
        os.killpg(gateway.process.pid, signal.SIGINT)  # the group: what the terminal does
        gateway.process.wait(timeout=120)
    finally:
        gateway.terminate()
    assert "redis-server died" not in gateway.log(), gateway.log_tail()
    assert gateway.process.returncode == 0, gateway.log_tail()
    assert not redis.is_running() or redis.status() == psutil.STATUS_ZOMBIE  # stopped by the gateway, after its drain
