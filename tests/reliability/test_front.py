"""The nginx front (serving/front.py) before a real `apron serve`, over real sockets: a burst is
answered or shed by the front at once with RESOURCE_EXHAUSTED and `retry-after-ms`, never queued in
grpc core and never CANCELLED or UNAVAILABLE; what the front passes on is the gateway's own answer
(auth, validation, OK), unchanged."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtests import hostile
from loadtests.gateway_process import GatewayProcess, run_gateway
from serving.catalog import ServedModel
from serving.errors import RETRY_AFTER_KEY
from serving.front import (
    MAX_BODY_FLAG,
    MAX_CALLS_FLAG,
    RETRY_AFTER_MS,
    FrontConfig,
    NginxFront,
    nginx_binary,
    render_nginx_conf,
    split_address,
)
from serving.front import main as front_main
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from tests.polling import wait_until
from tests.reliability.conftest import Tokens
from tests.serving.certs import make_pki

pytestmark = pytest.mark.timeout(300)

FRONT_MAX_CALLS = 16  # far below the gateway's own --max-concurrent-rpcs (256): every shed call is the front's
BURST_CALLS = 2_000
BURST_CHANNELS = 8  # hostile.burst's default: one warm-up call per channel before the burst


@pytest.fixture(scope="module")
def gateway(python_repository: Path, redis_server, tokens: Tokens, tmp_path_factory: pytest.TempPathFactory):
    args = ["--repository", str(python_repository), "--no-build-demo", "--redis-url", redis_server.url,
            "--jwt-secret-file", str(tokens.path), "--front-refusals-port", "0"]  # fmt: skip
    with run_gateway(args, tmp_path_factory.mktemp("front-gateway")) as gateway:
        yield gateway


def refusals_port(gateway: GatewayProcess) -> int:
    """The UDP port the gateway took for --front-refusals-port 0 (its "serving" log line)."""
    found = re.search(r"front_refusals_port=(\d+)", gateway.log())
    assert found, gateway.log_tail()
    return int(found[1])


@pytest.fixture(scope="module")
def front(gateway: GatewayProcess):
    config = FrontConfig(
        listen="127.0.0.1:0", upstream=gateway.target, max_calls=FRONT_MAX_CALLS, refusals_to=f"127.0.0.1:{refusals_port(gateway)}"
    )
    with NginxFront(config) as front:
        yield front


def service_token(tokens: Tokens) -> str:
    return dict(tokens.service())["authorization"].removeprefix("Bearer ")


async def test_a_burst_through_the_front_is_answered_or_shed_at_once(
    front: NginxFront, gateway: GatewayProcess, tokens: Tokens, python_repository: Path
):
    history = ServedModel.load(python_repository).metadata.item_ids[:10]
    answered_before = gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code="OK")
    shed_before = gateway.metric("apron_rpc_rejections_total", method="Recommend", code="RESOURCE_EXHAUSTED")
    front_shed_before = gateway.metric("apron_front_refused_total")
    report = await hostile.burst(front.target, service_token(tokens), history, calls=BURST_CALLS, channels=BURST_CHANNELS)
    assert set(report["statuses"]) <= {"OK", "RESOURCE_EXHAUSTED"}, report
    assert sum(report["statuses"].values()) == BURST_CALLS, report
    ok, shed = report["statuses"].get("OK", 0), report["statuses"].get("RESOURCE_EXHAUSTED", 0)
    assert ok >= 1 and shed >= 1, report  # 2,000 at once through a limit of 16: both
    assert report["shed_with_retry_after"] == shed and report["shed_by"] == {MAX_CALLS_FLAG: shed}, report
    # the front shed them: the gateway never saw them, and answered every call the front passed on
    assert gateway.metric("apron_rpc_rejections_total", method="Recommend", code="RESOURCE_EXHAUSTED") == shed_before
    answered = gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code="OK") - answered_before
    assert answered == ok + BURST_CHANNELS
    # ... and counted each on its /metrics all the same, from the front's reports (sent as they happen;
    # nginx may still be sending the last ones)
    wait_until(lambda: gateway.metric("apron_front_refused_total") - front_shed_before >= shed, "the refusals counted")
    assert gateway.metric("apron_front_refused_total") - front_shed_before == shed


async def test_the_front_passes_the_gateways_answers_through(front: NginxFront, tokens: Tokens, python_repository: Path):
    history = ServedModel.load(python_repository).metadata.item_ids[:5]
    async with grpc.aio.insecure_channel(front.target) as channel:
        recommend = channel.unary_unary(hostile.RECOMMEND, request_serializer=None, response_deserializer=None)
        body = pb.RecommendRequest(user_id="front-user", history=history, k=3).SerializeToString()
        reply = pb.RecommendResponse.FromString(await recommend(body, metadata=tokens.service(), timeout=30))
        assert len(reply.items) == 3
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await recommend(body, timeout=30)  # no token: the gateway's refusal
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bad = pb.RecommendRequest(user_id="front-user", history=history, k=-1).SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await recommend(bad, metadata=tokens.service(), timeout=30)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "k" in (invalid.value.details() or "")
        # the longest history the gateway accepts (10,000 ids) passes the front's body limit, held in memory
        catalog = ServedModel.load(python_repository).metadata.item_ids
        longest = (list(catalog) * (10_000 // len(catalog) + 1))[:10_000]
        big = pb.RecommendRequest(user_id="front-big", history=longest, k=3, include_heard=True).SerializeToString()
        assert len(pb.RecommendResponse.FromString(await recommend(big, metadata=tokens.service(), timeout=60)).items) == 3


async def test_a_request_over_the_fronts_body_limit_gets_a_grpc_status_naming_it(
    gateway: GatewayProcess, tokens: Tokens, python_repository: Path
):
    """nginx answers a body over client_max_body_size with HTTP 413, which a gRPC client reads as
    UNKNOWN "status: 413"; the front answers RESOURCE_EXHAUSTED naming its limit and the flag."""
    history = ServedModel.load(python_repository).metadata.item_ids[:5]
    small = FrontConfig(listen="127.0.0.1:0", upstream=gateway.target, max_body_bytes=2_000)
    with NginxFront(small) as front:
        async with grpc.aio.insecure_channel(front.target) as channel:
            recommend = channel.unary_unary(hostile.RECOMMEND, request_serializer=None, response_deserializer=None)
            fits = pb.RecommendRequest(user_id="front-small", history=history, k=3).SerializeToString()
            assert len(pb.RecommendResponse.FromString(await recommend(fits, metadata=tokens.service(), timeout=30)).items) == 3
            large = pb.RecommendRequest(user_id="front-small", history=list(history) * 200, k=3).SerializeToString()
            assert len(large) > 2_000
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await recommend(large, metadata=tokens.service(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    assert "2000 bytes" in (refused.value.details() or "") and MAX_BODY_FLAG in (refused.value.details() or "")


async def test_health_watches_through_the_front_are_not_counted_as_calls(front: NginxFront, tokens: Tokens, python_repository: Path):
    """More open Health.Watch streams than the front's call limit: a Recommend still gets through
    (the watches are bounded by the gateway's --max-open-streams, not by the front)."""
    history = ServedModel.load(python_repository).metadata.item_ids[:5]
    async with grpc.aio.insecure_channel(front.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(FRONT_MAX_CALLS + 4)]
        try:
            for watch in watches:  # each open: its first answer came back through the front
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            recommend = channel.unary_unary(hostile.RECOMMEND, request_serializer=None, response_deserializer=None)
            body = pb.RecommendRequest(user_id="front-watcher", history=history, k=3).SerializeToString()
            assert len(pb.RecommendResponse.FromString(await recommend(body, metadata=tokens.service(), timeout=30)).items) == 3
        finally:
            for watch in watches:
                watch.cancel()


def test_the_rendered_config_is_valid_nginx(tmp_path: Path) -> None:
    config = FrontConfig(listen="127.0.0.1:1", upstream="127.0.0.1:2", max_calls=7)
    text = render_nginx_conf(config, tmp_path)
    (tmp_path / "nginx.conf").write_text(text)
    checked = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "limit_conn apron_calls 7;" in text and f"{MAX_CALLS_FLAG})" in text
    assert all(f" {ms};" in text for ms in RETRY_AFTER_MS) and RETRY_AFTER_KEY in text
    assert "syslog:" not in text  # no --refusals-to: nothing reported
    reporting = render_nginx_conf(dataclasses.replace(config, refusals_to="127.0.0.1:5140"), tmp_path)
    (tmp_path / "nginx.conf").write_text(reporting)
    checked = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    shed = reporting[reporting.index("location @shed"):]
    assert reporting.count("access_log syslog:server=127.0.0.1:5140,") == shed.count("access_log syslog:") == 1  # refusals only
    with pytest.raises(ValueError, match="refusals_to must be host:port"):
        FrontConfig(listen="127.0.0.1:1", upstream="127.0.0.1:2", refusals_to="gateway")
    with pytest.raises(ValueError):
        FrontConfig(listen="127.0.0.1:1", upstream="127.0.0.1:2", max_calls=0)
    with pytest.raises(ValueError, match="max_body_bytes must be 0"):
        FrontConfig(listen="127.0.0.1:1", upstream="127.0.0.1:2", max_body_bytes=-1)
    with pytest.raises(ValueError):
        FrontConfig(listen="127.0.0.1:1", upstream="127.0.0.1:2", tls_cert="cert.pem")  # no key
    # plaintext only on loopback: the gateway behind may be a laptop's
    for listen in ("0.0.0.0:8443", "[::]:8443", "10.1.2.3:8443"):
        with pytest.raises(ValueError, match="reachable from other machines: give --tls-cert"):
            FrontConfig(listen=listen, upstream="127.0.0.1:2")
    for listen in ("localhost:8443", "[::1]:8443", "127.0.0.2:8443"):
        FrontConfig(listen=listen, upstream="127.0.0.1:2")
    for listen in ("8443", "127.0.0.1:", "127.0.0.1:http", "::1:8443x", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="listen must be host:port"):
            FrontConfig(listen=listen, upstream="127.0.0.1:2")
    assert split_address("[::1]:8443") == ("::1", 8443)


def test_the_command_line_refuses_bad_settings_with_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--upstream", "127.0.0.1:1", "--max-calls", "0"], ["--upstream", "gateway"]):
        with pytest.raises(SystemExit) as exited:
            front_main([*argv, "--print-config"])
        assert exited.value.code == 2
    assert "max_calls must be at least 1" in capsys.readouterr().err


def test_the_deploys_tls_config_is_valid_nginx(tmp_path: Path) -> None:
    """The deploy's shape (deploy/k8s/gateway.yaml): TLS served with the gateway's certificate, TLS to
    the gateway behind, errors to stderr."""
    pki = make_pki(tmp_path / "pki")
    config = FrontConfig(listen="127.0.0.1:1", upstream="127.0.0.1:2", tls_cert=str(pki.server.cert), tls_key=str(pki.server.key), upstream_tls=True)
    text = render_nginx_conf(config, tmp_path, "stderr")
    (tmp_path / "nginx.conf").write_text(text)
    checked = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "ssl http2;" in text and "grpc_pass grpcs://" in text and "error_log stderr" in text


def test_a_port_taken_before_nginx_binds_it_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """listen port 0: the free port picked may be taken before nginx binds it (other tests, other
    processes); the front then picks another rather than failing."""
    import socket

    from serving import front as front_module

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    taken = f"127.0.0.1:{held.getsockname()[1]}"
    picks = iter([held.getsockname()[1]])
    real = front_module.free_port
    monkeypatch.setattr(front_module, "free_port", lambda host="127.0.0.1": next(picks, None) or real(host))
    try:
        with NginxFront(FrontConfig(listen="127.0.0.1:0", upstream="127.0.0.1:1")) as started:
            assert started.target != taken and started.target.startswith("127.0.0.1:")
    finally:
        held.close()
