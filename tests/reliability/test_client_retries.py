"""The client follows the service: what `ApronClient` retries (`serving/client.py`'s `retry_delay`),
and the draining gateway's signal that makes a CANCELLED call safe to retry (`serving/drain.py`),
end to end: a call held in a gateway that stops is cut at the end of its grace with the trailer
`apron-draining`, and the client's retry is answered by the replica that took over the port; and
a retry waits for a connection rather than failing while grpc backs off reconnecting."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.net import free_port
from serving.client import INITIAL_BACKOFF_S, MAX_BACKOFF_S, RETRY_ATTEMPTS, ApronClient, retry_delay
from serving.drain import DRAINING_KEY, cut_at
from serving.errors import RETRY_AFTER_KEY
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from serving.redis_process import RedisProcess
from serving.server import ApronServer, create_server
from tests.polling import eventually, wait_until
from tests.serving.conftest import gateway_config, hold_scores, liked_history, running_gateway

Code = grpc.StatusCode
DRAINING = {DRAINING_KEY: "1"}


def test_retry_delay_retries_only_what_is_safe() -> None:
    assert retry_delay(Code.UNAVAILABLE, {}, 1, 1.0) == INITIAL_BACKOFF_S
    assert retry_delay(Code.UNAVAILABLE, {}, 3, 1.0) == INITIAL_BACKOFF_S * 4
    assert retry_delay(Code.UNAVAILABLE, {}, 3, 0.5) == INITIAL_BACKOFF_S * 2  # full jitter
    assert retry_delay(Code.UNAVAILABLE, {}, RETRY_ATTEMPTS - 1, 1.0) <= MAX_BACKOFF_S  # capped
    assert retry_delay(Code.UNAVAILABLE, {}, RETRY_ATTEMPTS, 1.0) is None  # attempts spent
    assert retry_delay(Code.UNAVAILABLE, {RETRY_AFTER_KEY: "250"}, 1, 0.1) == 0.25  # the server's word wins
    assert retry_delay(Code.UNAVAILABLE, {RETRY_AFTER_KEY: "soon"}, 1, 1.0) == INITIAL_BACKOFF_S  # unreadable: backoff
    assert retry_delay(Code.CANCELLED, DRAINING, 1, 1.0) == INITIAL_BACKOFF_S
    assert retry_delay(Code.ABORTED, {}, 1, 1.0) == INITIAL_BACKOFF_S  # an EditProfile that stored nothing
    assert retry_delay(Code.ABORTED, {}, RETRY_ATTEMPTS, 1.0) is None
    assert retry_delay(Code.CANCELLED, {}, 1, 1.0) is None  # cancelled by whom? maybe done: not retried
    assert retry_delay(Code.CANCELLED, {DRAINING_KEY: "0"}, 1, 1.0) is None
    # shed before any work, with the server's word on when to come back: retried then
    assert retry_delay(Code.RESOURCE_EXHAUSTED, {RETRY_AFTER_KEY: "199"}, 1, 0.5) == 0.199
    assert retry_delay(Code.RESOURCE_EXHAUSTED, {RETRY_AFTER_KEY: "199"}, RETRY_ATTEMPTS, 0.5) is None
    for trailers in ({}, {RETRY_AFTER_KEY: "soon"}):  # no word (a message over the size limit): it would fail again
        assert retry_delay(Code.RESOURCE_EXHAUSTED, trailers, 1, 1.0) is None
    for code in (Code.INVALID_ARGUMENT, Code.DEADLINE_EXCEEDED, Code.INTERNAL, Code.RESOURCE_EXHAUSTED, Code.NOT_FOUND):
        assert retry_delay(code, DRAINING, 1, 1.0) is None, code


def test_the_drain_cuts_calls_before_grpc_does() -> None:
    assert cut_at(10.0) == 9.5 and cut_at(0.4) == 0.2 and cut_at(0.0) == 0.0


async def test_a_call_cut_by_a_draining_gateway_says_so_and_the_client_retries_it_on_the_replacement(
    python_repository: Path, redis_server: RedisProcess, main_tags: np.ndarray
) -> None:
    user_id = "drained-user"
    # the server's own deadline far beyond the test's waits: the held calls end by the drain, nothing else
    config = gateway_config(python_repository, redis_server.url, reuse_port=True, request_timeout_s=600.0)
    first, port = await create_server(config)
    await first.start()
    release = hold_scores(first)  # never set before the stop: the drain must cut the call
    request = pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=3)
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            held_raw = pb_grpc.RecommenderStub(channel).Recommend(request, timeout=600)
            with ApronClient(f"127.0.0.1:{port}", timeout_s=600) as client:
                held_client = asyncio.ensure_future(asyncio.to_thread(client.recommend, user_id, 3, request.history))
                await eventually(lambda: in_flight(first) == 2, "both calls held in the first gateway")
                # the replacement binds the same port (SO_REUSEPORT); the first one's connections stay its own
                async with running_gateway(dataclasses.replace(config, port=port)) as second:
                    stopped = True
                    await first.stop(grace=1.0)
                    with pytest.raises(grpc.aio.AioRpcError) as cut:
                        await held_raw
                    assert cut.value.code() is Code.CANCELLED
                    assert (DRAINING_KEY, "1") in tuple(cut.value.trailing_metadata() or ())
                    answer = await held_client  # retried, answered by the replacement
                    assert len(answer.items) == 3 and client.retries >= 1
                    assert second.metric("apron_rpc_duration_seconds_count", method="Recommend", code="OK") == 1
    finally:
        release.set()
        if not stopped:
            await first.stop(grace=0)


def serving_port(port: int) -> grpc.Server:
    """A bare server on `port` that answers ListPrototypes (empty) and health checks: something to
    connect to, for what the client does about connections."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    prototypes = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")  # bytes in, bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("apron.v1.Recommender", {"ListPrototypes": prototypes}),))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def test_a_retry_waits_for_a_connection_while_grpc_backs_off_reconnecting() -> None:
    """After a failed connect grpc fails calls at once for about a second while it backs off
    reconnecting, and the client's attempts fit in less than that: retries that did not wait would
    all fail (as when a reconnect lands on a replaced gateway's closing socket, the test above).
    Here the server the client reached stops, and its replacement comes up on the port only after
    the client's call failed once: the retry waits for the connection and is answered."""
    port = free_port()
    with ApronClient(f"127.0.0.1:{port}", timeout_s=60) as client, futures.ThreadPoolExecutor(1) as pool:
        first = serving_port(port)
        client.prototypes()
        first.stop(grace=None).wait()
        answer = pool.submit(client.prototypes)
        wait_until(lambda: client.retries >= 1 or answer.done(), "the first attempt refused: nothing listens on the port")
        second = serving_port(port)
        try:
            answer.result(timeout=60)  # raises the client's error if its retries did not wait
        finally:
            second.stop(grace=None).wait()
    assert client.retries >= 1


def test_a_client_no_server_ever_answered_fails_once_its_attempts_are_spent() -> None:
    """Nothing listens, and nothing ever did: the attempts are spent at once, not the whole timeout
    (`apron client` with a wrong --target says so; tests/serving/test_cli.py)."""
    with ApronClient(f"127.0.0.1:{free_port()}", timeout_s=60) as client, pytest.raises(grpc.RpcError) as refused:
        client.prototypes()
    assert refused.value.code() is Code.UNAVAILABLE and client.retries == RETRY_ATTEMPTS - 1 and not client.answered


def in_flight(server: ApronServer) -> int:
    return len(server.drain.in_flight)
