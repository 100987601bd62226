"""`apron serve` sent SIGTERM with calls in flight: those calls finish with the right answers (the
drain), later calls get UNAVAILABLE, no call is answered wrongly, and the process exits 0.

Nothing here depends on timing. The micro-batcher is set to run a batch only when it is full
(N_CLIENTS calls) or after HOLD_S: the first wave of N_CLIENTS calls runs at once and gives the
right answers; the second wave, one call short of a full batch, stays inside the server until the
hold ends, and the test sends SIGTERM as soon as the gateway's own gauge shows all of those calls in
flight (a condition, polled). The shutdown grace is far longer than the hold, so the drain ends when
the calls do."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtests.gateway_process import GatewayProcess, run_gateway
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from tests.polling import eventually
from tests.reliability.conftest import Tokens
from tests.serving.conftest import liked_history

pytestmark = pytest.mark.timeout(300)

HOLD_S = 15.0  # how long an incomplete batch waits: the margin for sending SIGTERM after the poll
GRACE_S = 120.0
N_CLIENTS = 12


def in_flight(gateway: GatewayProcess) -> float:
    url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "apron_rpcs_in_flight" and sample.labels.get("method") == "Recommend"
    )


async def test_sigterm_drains_in_flight_calls(python_repository, redis_server, tokens: Tokens, main_tags, tmp_path: Path):
    args = [
        "--repository", str(python_repository), "--no-build-demo", "--redis-url", redis_server.url,
        "--jwt-secret-file", str(tokens.path), "--max-batch-wait-ms", str(HOLD_S * 1000),
        "--max-batch-size", str(N_CLIENTS), "--shutdown-grace-s", str(GRACE_S),
        "--request-timeout-s", str(GRACE_S),
    ]  # fmt: skip
    histories = {f"drain-{i}": liked_history(main_tags, i % 6, (i + 1) % 6, seed=i) for i in range(N_CLIENTS)}
    metadata = tokens.service()
    with run_gateway(args, tmp_path) as gateway:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)

            async def recommend(user: str) -> tuple[grpc.StatusCode, list[str]]:
                request = pb.RecommendRequest(user_id=user, history=histories[user], k=10)
                try:
                    response = await stub.Recommend(request, metadata=metadata, timeout=GRACE_S)
                except grpc.aio.AioRpcError as error:
                    return error.code(), []
                return grpc.StatusCode.OK, [item.item_id for item in response.items]

            # The right answers, before any fault: one full wave runs at once (and caches the profiles).
            first = await asyncio.gather(*(recommend(user) for user in histories))
            assert all(code == grpc.StatusCode.OK for code, _ in first), first
            expected = {user: items for user, (_, items) in zip(histories, first, strict=True)}

            held_users = list(histories)[:-1]  # one short of a full batch: held for HOLD_S
            held = [asyncio.ensure_future(recommend(user)) for user in held_users]
            await eventually(lambda: in_flight(gateway) == len(held_users), f"{len(held_users)} calls in flight")
            gateway.process.terminate()  # SIGTERM

            async def refused() -> bool:
                """A call sent after the signal is refused, or answered rightly if the server took it
                before it stopped accepting; one that races the stop itself may be CANCELLED by grpc
                (taken, never handled: see RELIABILITY.md)."""
                code, items = await recommend(held_users[0])
                assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), code
                assert code != grpc.StatusCode.OK or items == expected[held_users[0]]
                return code == grpc.StatusCode.UNAVAILABLE

            await eventually(refused, "new calls refused after SIGTERM", timeout=GRACE_S)
            drained = await asyncio.gather(*held)
            exit_code = await asyncio.to_thread(gateway.process.wait, GRACE_S + 30)

    assert exit_code == 0, gateway.log_tail()
    assert [code for code, _ in drained] == [grpc.StatusCode.OK] * len(held_users), drained
    wrong = [user for user, (_, items) in zip(held_users, drained, strict=True) if items != expected[user]]
    assert not wrong, f"{len(wrong)} calls answered wrongly"
    assert "shutting down" in gateway.log() and "Traceback" not in gateway.log()
