"""A hostile caller against a real `apron serve` subprocess (loadtests/hostile.py measures the same at
full size for RELIABILITY.md): a token-less flood of the largest bodies costs the gateway no memory
for the bodies, while a legitimate caller keeps being answered; undecodable bodies are
INVALID_ARGUMENT (or UNAUTHENTICATED without a token), one log line each, counted, no traceback."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtests import hostile
from loadtests.gateway_process import GatewayProcess, run_gateway
from serving.catalog import ServedModel
from serving.errors import RETRY_AFTER_KEY
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from tests.polling import eventually
from tests.reliability.conftest import Tokens

pytestmark = pytest.mark.timeout(300)

FLOOD_CALLS = 200
# the flood's bodies: the largest the default limits accept (10,000 ids of 128 bytes, 1.3 MB); parsed,
# 200 of them took the gateway's RSS up by several hundred MB
FLOOD_HISTORY = 10_000
RSS_BUDGET_BYTES = 100 * 1024 * 1024
OPEN_STREAMS = 4


@pytest.fixture(scope="module")
def gateway(python_repository: Path, redis_server, tokens: Tokens, tmp_path_factory: pytest.TempPathFactory):
    args = ["--repository", str(python_repository), "--no-build-demo", "--redis-url", redis_server.url,
            "--jwt-secret-file", str(tokens.path), "--max-open-streams", str(OPEN_STREAMS),
            "--max-connection-idle-s", "1"]  # fmt: skip
    with run_gateway(args, tmp_path_factory.mktemp("hostile-gateway")) as gateway:
        yield gateway


def service_token(tokens: Tokens) -> str:
    return dict(tokens.service())["authorization"].removeprefix("Bearer ")


async def test_tokenless_flood_of_large_bodies_costs_no_memory(gateway: GatewayProcess, tokens: Tokens, python_repository: Path):
    history = ServedModel.load(python_repository).metadata.item_ids[:10]
    report = await hostile.flood(
        gateway.target, gateway.process.pid, service_token(tokens), history, calls=FLOOD_CALLS, history=FLOOD_HISTORY
    )
    assert report["flood_statuses"] == {"UNAUTHENTICATED": FLOOD_CALLS}, report
    assert set(report["legitimate_statuses"]) == {"OK"}, report  # answered during the flood
    assert report["peak_rss_growth_mb"] * 1e6 < RSS_BUDGET_BYTES, report
    # refused by the one boundary: counted, one log line each
    assert gateway.metric("apron_rpc_rejections_total", method="Recommend", code="UNAUTHENTICATED") >= FLOOD_CALLS


async def test_undecodable_bodies_are_invalid_argument_without_a_traceback(gateway: GatewayProcess, tokens: Tokens):
    before = gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code="INVALID_ARGUMENT")
    lines_before = len(gateway.log().splitlines())
    report = await hostile.garbage(gateway.target, service_token(tokens), calls=4 * len(hostile.GARBAGE))
    for name in hostile.GARBAGE:
        assert report["statuses"][f"{name}, valid token"] == {"INVALID_ARGUMENT": 2}, report
        assert report["statuses"][f"{name}, no token"] == {"UNAUTHENTICATED": 2}, report
        assert "is not a valid apron.v1.RecommendRequest" in report["details"][f"{name}, valid token"], report
    invalid = 2 * len(hostile.GARBAGE)
    assert gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code="INVALID_ARGUMENT") - before == invalid
    log = "\n".join(gateway.log().splitlines()[lines_before:])
    assert "Traceback" not in log and "DecodeError" not in log, log
    assert log.count("code=INVALID_ARGUMENT") == invalid and log.count("code=UNAUTHENTICATED") == invalid, log


async def test_token_less_streams_and_idle_connections_are_bounded(gateway: GatewayProcess):
    """Health.Watch needs no token: at most --max-open-streams are open at once, the next is refused
    with RESOURCE_EXHAUSTED + retry-after-ms (counted), and a slot freed is taken again; a
    connection with no call in flight is closed after --max-connection-idle-s."""
    request = health_pb2.HealthCheckRequest()
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [stub.Watch(request) for _ in range(OPEN_STREAMS)]
        for watch in watches:
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        refused = stub.Watch(request)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await refused.read()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-open-streams" in error.value.details()
        assert int(dict(await refused.trailing_metadata())[RETRY_AFTER_KEY]) > 0
        assert gateway.metric("apron_rpc_rejections_total", method="Health.Watch", code="RESOURCE_EXHAUSTED") >= 1
        assert (await stub.Check(request, timeout=20)).status == health_pb2.HealthCheckResponse.SERVING  # unary: not a stream
        watches.pop().cancel()

        async def reopened() -> bool:
            watch = stub.Watch(request)
            try:
                serving = (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                return False
            watches.append(watch)
            return serving

        await eventually(reopened, "a watch admitted again once one closed", interval=0.2)
        for watch in watches:
            watch.cancel()

    async with grpc.aio.insecure_channel(gateway.target) as idle:
        await health_pb2_grpc.HealthStub(idle).Check(request, timeout=20)
        assert idle.get_state() == grpc.ChannelConnectivity.READY
        await eventually(lambda: idle.get_state() == grpc.ChannelConnectivity.IDLE, "the idle connection closed by the gateway")


BURST_CALLS = 2_000  # over grpc core's default pending-call limit (1,000), where it starts dropping calls


@pytest.fixture(scope="module", params=[[], ["--max-queue-delay-ms", "250"]], ids=["default", "queue-delay-250ms"])
def admission_gateway(
    request: pytest.FixtureRequest, python_repository: Path, redis_server, tokens: Tokens, tmp_path_factory: pytest.TempPathFactory
):
    """The gateway at its default admission settings, then with the queue delay limit on."""
    args = ["--repository", str(python_repository), "--no-build-demo", "--redis-url", redis_server.url,
            "--jwt-secret-file", str(tokens.path), *request.param]  # fmt: skip
    with run_gateway(args, tmp_path_factory.mktemp("admission-gateway")) as gateway:
        yield gateway


async def test_a_burst_is_answered_ok_or_shed_never_cancelled(
    admission_gateway: GatewayProcess, tokens: Tokens, python_repository: Path
):
    """2,000 Recommends sent at once: each is answered, or shed at admission with RESOURCE_EXHAUSTED
    and `retry-after-ms` and counted; none is dropped in grpc core (a bare CANCELLED, never counted)."""
    gateway = admission_gateway
    history = ServedModel.load(python_repository).metadata.item_ids[:10]
    shed_before = gateway.metric("apron_rpc_rejections_total", method="Recommend", code="RESOURCE_EXHAUSTED")
    report = await hostile.burst(gateway.target, service_token(tokens), history, calls=BURST_CALLS)
    assert set(report["statuses"]) <= {"OK", "RESOURCE_EXHAUSTED"}, report
    assert sum(report["statuses"].values()) == BURST_CALLS, report
    shed = report["statuses"].get("RESOURCE_EXHAUSTED", 0)
    assert report["shed_with_retry_after"] == shed, report
    assert set(report["shed_by"]) <= {"--max-concurrent-rpcs", "--max-queue-delay-ms"}, report
    assert gateway.metric("apron_rpc_rejections_total", method="Recommend", code="RESOURCE_EXHAUSTED") - shed_before == shed
    # the queue drained, calls are admitted again (a shed call would name its retry-after: waited out)
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        body = pb.RecommendRequest(user_id="after-burst", history=history, k=5).SerializeToString()

        async def answered() -> bool:
            return (await hostile.send_raw(channel, body, tokens.service()))[0] == grpc.StatusCode.OK

        await eventually(answered, "a Recommend answered OK after the burst", interval=0.2)
