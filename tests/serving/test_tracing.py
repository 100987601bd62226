"""OpenTelemetry tracing (`serving/tracing.py`): which OTEL_* settings switch it on, and the spans a
real gateway (real redis-server; ONNX Runtime and tritonserver) records for a call, read back
through the SDK's in-memory exporter."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from serving import stages, tracing
from serving.proto_gen.apron.v1 import admin_pb2 as admin_pb
from serving.proto_gen.apron.v1 import admin_pb2_grpc as admin_grpc
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.redis_process import RedisProcess
from tests.serving.conftest import gateway_config, liked_history, running_gateway

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
FRESH = {"redis.read", "apron_profile batch wait", "apron_profile inference", "redis.write", "apron_scorer batch wait", "apron_scorer inference"}
CACHED = {"redis.read", "apron_scorer batch wait", "apron_scorer inference"}


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, []),  # off by default (the spec's default exporter is otlp; ours needs asking)
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_the_otel_variables_switch_tracing_on(environ: dict[str, str], names: list[str]) -> None:
    assert tracing.exporter_names(environ) == names


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        # otlp asked for by an endpoint alone: the protocol is checked all the same
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
    ],
)
def test_an_exporter_the_gateway_lacks_is_refused(environ: dict[str, str]) -> None:
    with pytest.raises(tracing.TracingConfigError, match="OTEL_"):
        tracing.exporter_names(environ)


def test_configure_from_env_installs_an_otlp_exporter_and_shutdown_removes_it() -> None:
    try:
        assert tracing.configure_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
        assert tracing.enabled() and stages.StageClock(0.0).intervals == []
    finally:
        tracing.shutdown()  # nothing was traced: nothing to send to the unreachable endpoint
    assert not tracing.enabled() and stages.StageClock(0.0).intervals is None
    assert not tracing.configure_from_env({})


@pytest.mark.parametrize(
    ("traceparent", "trace_id"),
    [
        (f"00-{TRACE_ID}-{PARENT_ID}-01", TRACE_ID),
        (f"00-{'0' * 32}-{PARENT_ID}-01", None),  # all-zero trace id: invalid
        ("00-xyz-00f067aa0ba902b7-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),  # all-zero parent id: invalid
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", None),  # version ff: invalid
        (f"01-{TRACE_ID}-{PARENT_ID}-01-future", TRACE_ID),  # a later version may append fields
        (None, None),
    ],
)
def test_traceparent_trace_id(traceparent: str | None, trace_id: str | None) -> None:
    assert tracing.traceparent_trace_id(traceparent) == trace_id


def test_traceparent_is_found_in_grpc_metadata_and_http_headers() -> None:
    value = f"00-{TRACE_ID}-{PARENT_ID}-01"
    assert tracing.metadata_traceparent((("authorization", "x"), ("traceparent", value))) == value
    assert tracing.metadata_traceparent(((b"traceparent", value.encode()),)) == value  # ASGI headers
    assert tracing.metadata_traceparent((("Traceparent", value),)) == value
    assert tracing.metadata_traceparent(None) is None and tracing.metadata_traceparent(()) is None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(TracerProvider(), SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.shutdown()


def call_tree(finished: tuple[ReadableSpan, ...], method: str = "Recommend") -> tuple[ReadableSpan, set[str]]:
    """The one call span and the names of its children; every span in one trace, inside the call."""
    [call] = [span for span in finished if span.name == f"apron.v1.Recommender/{method}"]
    children = [span for span in finished if span is not call]
    assert call.kind == SpanKind.SERVER
    for child in children:
        assert child.parent is not None and child.parent.span_id == call.context.span_id
        assert child.context.trace_id == call.context.trace_id
        assert call.start_time <= child.start_time <= child.end_time <= call.end_time
    return call, {child.name for child in children}


async def test_a_recommend_yields_its_spans_under_the_callers_traceparent(
    spans: InMemorySpanExporter, python_repository: Path, redis_server: RedisProcess, main_tags, caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config(python_repository, redis_server.url, access_log_rate=1.0)
    history = liked_history(main_tags, 0, 1)
    caplog.set_level(logging.INFO, logger="apron.gateway")
    async with running_gateway(config) as gateway:
        await gateway.stub.EditProfile(pb.EditProfileRequest(user_id="trace-user", reset=True))
        spans.clear()
        caplog.clear()
        await gateway.stub.Recommend(pb.RecommendRequest(user_id="trace-user", history=history, k=5), metadata=TRACEPARENT)
        call, children = call_tree(spans.get_finished_spans())
        assert children == FRESH
        assert format(call.context.trace_id, "032x") == TRACE_ID  # the caller's trace
        assert call.parent is not None and format(call.parent.span_id, "016x") == PARENT_ID
        assert call.attributes["rpc.method"] == "Recommend" and call.attributes["rpc.grpc.status_code"] == "OK"
        [line] = [r for r in caplog.records if r.getMessage() == "rpc"]
        assert line.fields["trace_id"] == TRACE_ID  # type: ignore[attr-defined]

        spans.clear()
        caplog.clear()
        await gateway.stub.Recommend(pb.RecommendRequest(user_id="trace-user", history=history, k=5))  # cached, no traceparent
        call, children = call_tree(spans.get_finished_spans())
        assert children == CACHED
        assert call.parent is None  # a new trace: the gateway's span is its root
        [line] = [r for r in caplog.records if r.getMessage() == "rpc"]
        assert line.fields["trace_id"] == format(call.context.trace_id, "032x")  # type: ignore[attr-defined]

        spans.clear()
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await gateway.stub.GetProfile(pb.GetProfileRequest(user_id="trace-nobody"), metadata=TRACEPARENT)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        call, children = call_tree(spans.get_finished_spans(), "GetProfile")
        assert children == {"redis.read"}
        assert call.attributes["rpc.grpc.status_code"] == "NOT_FOUND"

        spans.clear()  # the admin service's calls are named for it, not for the Recommender
        await admin_grpc.ModelAdminStub(gateway.channel).GetModelStatus(admin_pb.GetModelStatusRequest())
        [call] = spans.get_finished_spans()
        assert call.name == "apron.v1.ModelAdmin/GetModelStatus" and call.attributes["rpc.service"] == "apron.v1.ModelAdmin"


async def test_with_tracing_off_the_log_line_carries_the_callers_trace_id(
    python_repository: Path, redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    assert not tracing.enabled()
    caplog.set_level(logging.INFO, logger="apron.gateway")
    async with running_gateway(gateway_config(python_repository, redis_server.url)) as gateway:
        for metadata, trace_id in ((TRACEPARENT, TRACE_ID), ((), None)):
            caplog.clear()
            with pytest.raises(grpc.aio.AioRpcError):
                await gateway.stub.GetProfile(pb.GetProfileRequest(user_id="trace-nobody"), metadata=metadata)
            [line] = [r for r in caplog.records if r.getMessage() == "rpc"]
            assert line.fields.get("trace_id") == trace_id  # type: ignore[attr-defined]


async def test_a_triton_call_is_one_inference_span(
    spans: InMemorySpanExporter, python_repository: Path, redis_server: RedisProcess, triton_server, main_tags
) -> None:
    config = gateway_config(python_repository, redis_server.url, "triton", triton_server.grpc_url)
    async with running_gateway(config) as gateway:
        await gateway.stub.EditProfile(pb.EditProfileRequest(user_id="trace-triton", reset=True))
        spans.clear()
        history = liked_history(main_tags, 0, 1)
        await gateway.stub.Recommend(pb.RecommendRequest(user_id="trace-triton", history=history, k=5), metadata=TRACEPARENT)
        call, children = call_tree(spans.get_finished_spans())
        assert children == {"redis.read", "apron_profile inference", "redis.write", "apron_scorer inference"}
        assert all(
            span.attributes["apron.batched"] == "false" for span in spans.get_finished_spans() if span.name.endswith("inference")
        )


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: what an OpenTelemetry Collector's otlp receiver takes."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, bytes]] = []  # (service.name, span name, trace id)
        self.received = threading.Event()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: object) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(service, span.name, span.trace_id) for span in scope_spans.spans]
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_the_otel_variables_send_spans_to_an_otlp_collector(
    python_repository: Path, redis_server: RedisProcess, main_tags, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As deployed: only OTEL_* variables, the OTLP exporter, a real gRPC receiver."""
    collector = Collector()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_INSECURE": "true"}
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        assert tracing.configure_from_env()
        try:
            async with running_gateway(gateway_config(python_repository, redis_server.url)) as gateway:
                history = liked_history(main_tags, 0, 1)
                await gateway.stub.Recommend(pb.RecommendRequest(user_id="trace-otlp", history=history, k=5), metadata=TRACEPARENT)
        finally:
            tracing.shutdown()  # exports what is queued before it returns: no waiting on the batch delay
        assert collector.received.is_set()
        ours = [(service, name) for service, name, trace in collector.spans if trace.hex() == TRACE_ID]
        assert ("apron-gateway", "apron.v1.Recommender/Recommend") in ours and ("apron-gateway", "redis.read") in ours
    finally:
        server.stop(0)


async def test_an_http_call_joins_the_callers_trace_too(
    spans: InMemorySpanExporter, python_repository: Path, redis_server: RedisProcess, main_tags
) -> None:
    """HTTP/JSON calls run through the same boundary: `traceparent` comes from the HTTP headers."""
    from serving.http import to_json
    from tests.serving.test_http import fetch_json

    config = gateway_config(python_repository, redis_server.url, http_port=0)
    async with running_gateway(config) as gateway:
        request = pb.RecommendRequest(user_id="trace-http", history=liked_history(main_tags, 0, 1), k=5)
        spans.clear()
        answer = await fetch_json(gateway.server.http_port, "/apron.v1.Recommender/Recommend", to_json(request), TRACEPARENT)
        assert answer.status == 200, answer
        call, children = call_tree(spans.get_finished_spans())
        assert format(call.context.trace_id, "032x") == TRACE_ID and format(call.parent.span_id, "016x") == PARENT_ID
        assert "redis.read" in children and "apron_scorer inference" in children
