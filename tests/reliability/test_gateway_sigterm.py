"""`apron serve` sent SIGTERM under load: calls already in the server finish (the drain), later ones
get UNAVAILABLE, no call is answered wrongly, and the process exits 0 well within its grace period.

The micro-batcher's wait is raised to 300 ms so that every call spends that long inside the server:
a call sent well before the signal is certainly in flight when it arrives."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from tests.reliability.conftest import Tokens
from tests.reliability.gateway_process import run_gateway
from tests.serving.conftest import liked_history

pytestmark = pytest.mark.timeout(300)

BATCH_WAIT_S = 0.3
GRACE_S = 10.0
N_CLIENTS = 12


async def test_sigterm_drains_in_flight_calls(python_repository, redis_server, tokens: Tokens, main_tags, tmp_path: Path):
    args = [
        "--repository", str(python_repository), "--no-build-demo", "--redis-url", redis_server.url,
        "--jwt-secret-file", str(tokens.path), "--max-batch-wait-ms", str(BATCH_WAIT_S * 1000),
        "--max-batch-size", "64", "--shutdown-grace-s", str(GRACE_S),
    ]  # fmt: skip
    histories = {f"drain-{i}": liked_history(main_tags, i % 6, (i + 1) % 6, seed=i) for i in range(N_CLIENTS)}
    metadata = tokens.service()
    with run_gateway(args, tmp_path) as gateway:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)

            def request(user: str) -> pb.RecommendRequest:
                return pb.RecommendRequest(user_id=user, history=histories[user], k=10)

            # The right answers, before any fault (deterministic model, cached profile).
            expected = {}
            for user in histories:
                response = await stub.Recommend(request(user), metadata=metadata, timeout=30)
                expected[user] = [item.item_id for item in response.items]

            calls: list[tuple[str, float, float, grpc.StatusCode, list[str]]] = []
            signalled = asyncio.Event()

            async def client(user: str) -> None:
                while True:
                    start = time.monotonic()
                    try:
                        response = await stub.Recommend(request(user), metadata=metadata, timeout=30)
                        code, items = grpc.StatusCode.OK, [item.item_id for item in response.items]
                    except grpc.aio.AioRpcError as error:
                        code, items = error.code(), []
                    calls.append((user, start, time.monotonic(), code, items))
                    if code != grpc.StatusCode.OK and signalled.is_set():
                        return

            clients = [asyncio.create_task(client(user)) for user in histories]
            while len(calls) < 3 * N_CLIENTS:  # load running
                await asyncio.sleep(0.01)
            # The clients move in waves (one batch each): signal halfway through a wave.
            wave = len(calls)
            while len(calls) == wave:  # a wave just ended, so the next one has just been sent
                await asyncio.sleep(0.005)
            await asyncio.sleep(BATCH_WAIT_S / 2)
            signal_time = time.monotonic()
            gateway.process.terminate()  # SIGTERM
            signalled.set()
            await asyncio.wait_for(asyncio.gather(*clients), timeout=GRACE_S + 30)
            exit_code = await asyncio.to_thread(gateway.process.wait, GRACE_S + 30)
            stopped_after = time.monotonic() - signal_time

    assert exit_code == 0, gateway.log_tail()
    assert stopped_after < GRACE_S, f"took {stopped_after:.1f} s: the drain should end when the calls do"
    codes = {code for *_, code, _ in calls}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    wrong = [(user, items) for user, _, _, code, items in calls if code == grpc.StatusCode.OK and items != expected[user]]
    assert not wrong, f"{len(wrong)} calls answered wrongly"
    # In flight at the signal: sent well before it (the server had them), ended after it.
    in_flight = [c for c in calls if c[1] < signal_time - BATCH_WAIT_S / 3 and c[2] > signal_time]
    assert len(in_flight) >= N_CLIENTS // 2, len(in_flight)
    assert all(code == grpc.StatusCode.OK for *_, code, _ in in_flight), [c[3] for c in in_flight]
    assert "shutting down" in gateway.log() and "Traceback" not in gateway.log()
