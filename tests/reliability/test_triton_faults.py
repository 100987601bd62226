"""A real tritonserver killed (SIGKILL), frozen (SIGSTOP) and restarted on the same port under two
gateways: one plain, one with `--triton-fallback`.

Plain: Recommend fails fast with UNAVAILABLE while Triton is dead (and readiness says NOT_SERVING,
liveness SERVING), DEADLINE_EXCEEDED at its deadline
while Triton hangs (never a hung request: nothing stays in flight), EditProfile keeps working (it
needs no model), and the gateway recovers by itself once Triton is back. Fallback: Recommend keeps
answering, with the same items (the same ONNX graphs run in-process), and each fallback is counted."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.net import free_ports
from export.triton_server import run_triton_server
from serving import health
from serving.health import NOT_SERVING, SERVING
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from tests.polling import eventually
from tests.reliability.faults import call
from tests.serving.conftest import gateway_config, liked_history, running_gateway

pytestmark = pytest.mark.timeout(480)

OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
DEADLINE_S = 5.0
OUTAGE_DEADLINE_S = 60.0  # generous: UNAVAILABLE must come back, however loaded the machine


def items(outcome) -> list[str]:
    return [item.item_id for item in outcome.response.items]


async def test_triton_killed_frozen_and_restarted(python_repository: Path, redis_server, main_tags) -> None:
    # Triton takes the last of repeated flags: the fixed gRPC port survives the restart (the HTTP
    # port, used only for readiness, may change). Triton cannot bind port 0 and report it, so this
    # one port is picked free and bound by the first Triton (run_triton_server retries taken ports).
    (grpc_port,) = free_ports(1)
    port_flag = [f"--grpc-port={grpc_port}"]
    triton_url = f"127.0.0.1:{grpc_port}"
    request = pb.RecommendRequest(user_id="triton-fault", history=liked_history(main_tags, 0, 1), k=10)
    edit = pb.EditProfileRequest(user_id="triton-fault", edits=[pb.Edit(prototype="tag3", scale=1.0)])
    plain_config = gateway_config(python_repository, redis_server.url, "triton", triton_url)
    fallback_config = gateway_config(python_repository, redis_server.url, "triton", triton_url, triton_fallback=True)

    with contextlib.ExitStack() as stack:
        triton = stack.enter_context(run_triton_server(python_repository, extra_args=port_flag))
        async with running_gateway(plain_config) as plain, running_gateway(fallback_config) as fallback:
            before = await call(plain.stub.Recommend, request, DEADLINE_S)
            assert before.code == OK, before
            assert items(await call(fallback.stub.Recommend, request, DEADLINE_S)) == items(before)

            # Frozen Triton: the call ends at its deadline, and nothing stays in flight.
            triton.process.send_signal(signal.SIGSTOP)
            try:
                frozen = await call(plain.stub.Recommend, request, 2.0)
                assert frozen.code == grpc.StatusCode.DEADLINE_EXCEEDED, frozen  # ended by the deadline, not hung
            finally:
                triton.process.send_signal(signal.SIGCONT)
            await eventually(lambda: _idle(plain), "no Recommend left in flight after the deadline")
            await eventually(lambda: _ok(plain, request), "Recommend answers again after SIGCONT")

            # Dead Triton: UNAVAILABLE every time (not DEADLINE_EXCEEDED: the failure is reported, not
            # waited out); EditProfile does not need it.
            triton.process.send_signal(signal.SIGKILL)
            triton.process.wait(30)
            outages = [await call(plain.stub.Recommend, request, OUTAGE_DEADLINE_S) for _ in range(5)]
            assert [o.code for o in outages] == [UNAVAILABLE] * 5, outages
            assert "Triton" in outages[0].details
            assert (await call(plain.stub.EditProfile, edit, DEADLINE_S)).code == OK
            # readiness follows the backend (the balancer moves away), liveness does not (no restart);
            # the fallback gateway can still answer: it stays ready
            await eventually(lambda: _is(plain, health.READY, NOT_SERVING), "not ready while Triton is dead")
            assert await _status(plain, health.LIVE) == SERVING and await _status(plain, "") == NOT_SERVING
            assert plain.metric("apron_backend_up", backend="inference") == 0
            assert await _status(fallback, health.READY) == SERVING

            # The fallback gateway answers in-process, with the same items, and counts it.
            rescued = await call(fallback.stub.Recommend, request, DEADLINE_S)
            assert rescued.code == OK and items(rescued) == items(before), rescued
            assert fallback.metric("apron_backend_fallbacks_total", method="top_k") >= 1
            assert plain.metric("apron_backend_fallbacks_total") == 0

            # Triton returns on the same port: both gateways recover without a restart.
            stack.enter_context(run_triton_server(python_repository, extra_args=port_flag))
            waited = await eventually(lambda: _ok(plain, request), "Recommend after Triton restarted")
            await eventually(lambda: _is(plain, health.READY, SERVING), "ready again once Triton answers")
            after = await call(plain.stub.Recommend, request, DEADLINE_S)
            assert items(after) == items(before)
            fallbacks = fallback.metric("apron_backend_fallbacks_total")
            assert (await call(fallback.stub.Recommend, request, DEADLINE_S)).code == OK
            await eventually(
                lambda: _served_by_triton(fallback, request, fallbacks), "the fallback gateway back on Triton"
            )
            print(f"recovered {waited:.1f} s after Triton was ready again")  # reported, not asserted


async def _status(gateway, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return (await health_pb2_grpc.HealthStub(gateway.channel).Check(request, timeout=OUTAGE_DEADLINE_S)).status


async def _is(gateway, service: str, status: int) -> bool:
    return await _status(gateway, service) == status


async def _ok(gateway, request) -> bool:
    return (await call(gateway.stub.Recommend, request, DEADLINE_S)).code == OK


async def _idle(gateway) -> bool:
    return gateway.metric("apron_rpcs_in_flight", method="Recommend") == 0


async def _served_by_triton(gateway, request, fallbacks_before: float) -> bool:
    before = gateway.metric("apron_backend_fallbacks_total")
    ok = (await call(gateway.stub.Recommend, request, DEADLINE_S)).code == OK
    return ok and gateway.metric("apron_backend_fallbacks_total") == before
