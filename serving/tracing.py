"""OpenTelemetry traces of the gateway's calls, built from the stage clock (`serving/stages.py`).

Off by default. `configure_from_env()` switches it on when the standard variables ask for an
exporter: `OTEL_TRACES_EXPORTER=otlp` (or `console`), or an `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` without `OTEL_TRACES_EXPORTER` (which `none` turns off again,
as does `OTEL_SDK_DISABLED=true`). The SDK reads the rest itself: `OTEL_SERVICE_NAME` (default
`apron-gateway`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, the
exporter's `OTEL_EXPORTER_OTLP_*` (gRPC OTLP, port 4317 by default).

No second instrumentation: every call already marks its stages on a `StageClock`. With tracing on
the clock also keeps each stage's interval, and at the end of the call the boundary turns them into
spans with their real start and end times:

    apron.v1.Recommender/Recommend      (SERVER; parent: the caller's W3C `traceparent`, if any)
    ├── redis.read                      the cached profile and stored edits (one round trip)
    ├── apron_profile batch wait        a cache miss waiting for its micro-batch
    ├── apron_profile inference         the batch's run (Triton: the whole remote call)
    ├── redis.write                     the computed profile (Recommend) or the edits (EditProfile)
    ├── apron_scorer batch wait
    └── apron_scorer inference

So tracing off costs the call nothing but a `None` check at its end, and tracing on costs one
list append per stage and the spans themselves, created after the answer is computed (measured in
BENCHMARKS.md's "Tracing" row). `traceparent` is read from the call's metadata
(`context.invocation_metadata()`: gRPC metadata, or the HTTP headers of the HTTP/JSON adapter).

The access log line of a call carries its trace id: the span's with tracing on, the caller's
`traceparent`'s with tracing off (the gateway then records no span, but the line still joins the
caller's trace).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from serving import stages

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("apron.tracing")

SERVICE = "apron.v1.Recommender"
DEFAULT_SERVICE_NAME = "apron-gateway"
TRACEPARENT = "traceparent"
# W3C trace context: version-traceid-parentid-flags; an all-zero trace id is invalid
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
EXPORTERS = ("otlp", "console")

# stage -> (span name, attributes): the stages that become spans; the others stay in the call span
_REDIS = {"db.system": "redis"}
SPAN_STAGES: dict[str, tuple[str, dict[str, str]]] = {
    stages.REDIS_READ: ("redis.read", _REDIS),
    stages.REDIS_WRITE: ("redis.write", _REDIS),
    stages.PROFILE_QUEUE: ("apron_profile batch wait", {}),
    stages.PROFILE_RUN: ("apron_profile inference", {"apron.batched": "true"}),
    stages.SCORER_QUEUE: ("apron_scorer batch wait", {}),
    stages.SCORER_RUN: ("apron_scorer inference", {"apron.batched": "true"}),
}
_UNBATCHED = {"apron.batched": "false"}
# the rest of a backend call: the inference itself when it ran outside the micro-batcher (Triton)
REMOTE_STAGES: dict[str, tuple[str, str]] = {
    stages.PROFILE: (stages.PROFILE_RUN, "apron_profile inference"),
    stages.SCORER: (stages.SCORER_RUN, "apron_scorer inference"),
}

# the semantic conventions' server-side errors; a client's mistake or a refusal leaves the status unset
SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})

_tracer: Tracer | None = None  # None: tracing off
_provider: TracerProvider | None = None
_processors: tuple[SpanProcessor, ...] = ()


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this gateway cannot do."""


def enabled() -> bool:
    return _tracer is not None


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The trace exporters the OTEL_* variables ask for ([]: tracing off). Pure: tested without SDK."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:  # the spec's default is otlp; ours is off unless an endpoint says where to send
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    if names == ["none"]:
        return []
    unknown = sorted(set(names) - set(EXPORTERS))
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unsupported {', '.join(unknown)} (use {', '.join(EXPORTERS)} or none)")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if "otlp" in names and protocol != "grpc":
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: this gateway exports OTLP over grpc only")
    return names


def configure_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Switch tracing on when the OTEL_* variables ask for an exporter; True when on. The SDK is
    imported only then (the gateway's start and `apron --help` do not pay for it)."""
    environ = os.environ if environ is None else environ
    names = exporter_names(environ)
    if not names:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    # Resource.create reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES; ours only fills a gap
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))  # the sampler: OTEL_TRACES_SAMPLER
    processors = []
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, TLS: OTEL_EXPORTER_OTLP_*
        else:
            exporter = ConsoleSpanExporter()
        processors.append(BatchSpanProcessor(exporter))  # exports in its own thread, off the event loop
    install(provider, *processors)
    log.info("tracing on", extra={"fields": {"exporters": ",".join(names)}})
    return True


def install(provider: TracerProvider, *processors: SpanProcessor) -> None:
    """Trace every call with `provider`, its spans going to `processors` (tests: one with an
    in-memory exporter). The stage spans are handed to the processors directly (`end_call`)."""
    global _tracer, _provider, _processors
    for processor in processors:
        provider.add_span_processor(processor)
    _provider, _processors = provider, processors
    _tracer = provider.get_tracer("apron.gateway")
    stages.record_intervals(True)


def shutdown() -> None:
    """Tracing off; spans still queued are exported first."""
    global _tracer, _provider, _processors
    provider, _provider, _tracer, _processors = _provider, None, None, ()
    stages.record_intervals(False)
    if provider is not None:
        provider.shutdown()


def metadata_traceparent(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == TRACEPARENT:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


def traceparent_trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C `traceparent` (None for none or an invalid one)."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


def _ns_offset() -> int:
    """Add to a perf_counter reading in ns to get the wall clock in ns (spans need wall times)."""
    return time.time_ns() - time.perf_counter_ns()


def start_call(method: str, metadata: Iterable[tuple[str, Any]] | None, clock: stages.StageClock, code: str, version: str) -> Span:
    """The call's span (SERVER), started at the clock's start, its parent the caller's `traceparent`;
    `end_call` adds the stages' spans and ends it. Only with tracing on."""
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    assert _tracer is not None
    traceparent = metadata_traceparent(metadata)
    parent = extract({TRACEPARENT: traceparent}) if traceparent is not None else None
    offset = _ns_offset()
    span = _tracer.start_span(
        f"{SERVICE}/{method}",
        context=parent,
        kind=SpanKind.SERVER,
        start_time=int(clock.start * 1e9) + offset,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": SERVICE,
            "rpc.method": method,
            "rpc.grpc.status_code": code,
            "apron.model_version": version,
        },
    )
    span._apron_offset = offset  # type: ignore[attr-defined]  # one clock reading per call
    return span


def trace_id(span: Span | None, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The trace id for the call's log line: its span's, else the caller's traceparent's."""
    if span is not None:
        context = span.get_span_context()
        if context.is_valid:
            return format(context.trace_id, "032x")
    return traceparent_trace_id(metadata_traceparent(metadata))


def end_call(span: Span, clock: stages.StageClock, code: str = "OK", message: str = "") -> None:
    """The spans of the stages the call went through (`SPAN_STAGES`), then the call span's end
    (status ERROR for the codes the gRPC conventions count as a server's error).

    The stage spans are finished when they are created, so they are built as the SDK's finished
    span (`ReadableSpan`) and handed to the span processors at once: the SDK's live span costs tens
    of microseconds each (locks, attribute checks, the sampler: its decision is the call span's)."""
    offset: int = getattr(span, "_apron_offset", 0) or _ns_offset()
    if span.is_recording():  # sampled: children; otherwise their work would be thrown away
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext

        assert _provider is not None
        call = span.get_span_context()
        new_span_id = _provider.id_generator.generate_span_id
        resource, scope = span.resource, span.instrumentation_scope  # type: ignore[attr-defined]
        intervals = clock.intervals or []
        ran = {stage for stage, _, _ in intervals}
        for stage, start, end in intervals:
            found = SPAN_STAGES.get(stage)
            if found is None:
                remote = REMOTE_STAGES.get(stage)
                if remote is None or remote[0] in ran:  # in-process: the batched run's span has it
                    continue
                found = (remote[1], _UNBATCHED)
            name, attributes = found
            child = ReadableSpan(
                name,
                context=SpanContext(call.trace_id, new_span_id(), is_remote=False, trace_flags=call.trace_flags),
                parent=call,
                resource=resource,
                attributes=attributes,
                instrumentation_scope=scope,
                start_time=int(start * 1e9) + offset,
                end_time=int(end * 1e9) + offset,
            )
            for processor in _processors:
                processor.on_end(child)
        if code in SERVER_ERRORS:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, message))
    span.end(end_time=int(clock.last * 1e9) + offset)
