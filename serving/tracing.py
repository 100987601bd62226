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
    ├── redis.read                      the cached profile and stored edits (one round trip; when a
    │                                   kept copy was scored meanwhile, the wait left after the scorer)
    ├── apron_profile batch wait        a cache miss waiting for its micro-batch
    ├── apron_profile inference         the batch's run (Triton: the whole remote call)
    ├── redis.write                     the computed profile (Recommend) or the edits (EditProfile)
    ├── apron_scorer batch wait
    └── apron_scorer inference

So tracing off costs a call one `None` test per stage mark and one at its end; on, one list
append per stage and the spans themselves, built as finished spans after the answer is computed
(`python -m benchmarks.tracing_cost`; figures in serving/README.md). `traceparent` is read from the
call's metadata (`context.invocation_metadata()`: gRPC metadata, or the HTTP headers of the
HTTP/JSON adapter); the sampler (`OTEL_TRACES_SAMPLER`, parent-based by default) decides once per
call. Triton is not sent the trace context: its own tracing, if on, starts its own traces.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serving import stages

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, Status

log = logging.getLogger("apron.tracing")

SERVICE = "apron.v1.Recommender"
DEFAULT_SERVICE_NAME = "apron-gateway"
TRACEPARENT = "traceparent"
# W3C trace context: version-traceid-parentid-flags (a future version may append fields)
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-|$)")
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

_provider: TracerProvider | None = None  # None: tracing off
_processors: tuple[SpanProcessor, ...] = ()
_resource: Resource | None = None  # the provider's (service.name ...)
_scope: InstrumentationScope | None = None
_UNSET: Status | None = None


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this gateway cannot do."""


def enabled() -> bool:
    return _provider is not None


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The trace exporters the OTEL_* variables ask for ([]: tracing off). Pure: tested without SDK."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:  # the spec's default is otlp; ours is off unless an endpoint says where to send
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        names = ["otlp"] if endpoint else []
    if names in ([], ["none"]):
        return []
    unknown = sorted(set(names) - set(EXPORTERS))
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unsupported {', '.join(unknown)} (use {', '.join(EXPORTERS)} or none)")
    # the protocol, whichever way otlp was asked for (an endpoint alone too): a gRPC exporter sending
    # to an HTTP collector loses every span without an error
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if "otlp" in names and protocol != "grpc":
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: this gateway exports OTLP over grpc only")
    return names


def configure_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Switch tracing on when the OTEL_* variables ask for an exporter; True when on. The SDK is
    imported only then (the gateway's start and `apron --help` do not pay for it). `environ` decides
    on or off (tests); the SDK reads its own settings from the process environment."""
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
    global _provider, _processors
    for processor in processors:
        provider.add_span_processor(processor)
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Status, StatusCode

    global _resource, _scope, _UNSET
    _provider, _processors = provider, processors
    _resource, _scope, _UNSET = provider.resource, InstrumentationScope("apron.gateway"), Status(StatusCode.UNSET)
    stages.record_intervals(True)


def shutdown() -> None:
    """Tracing off; spans still queued are exported first."""
    global _provider, _processors
    provider, _provider, _processors = _provider, None, ()
    stages.record_intervals(False)
    if provider is not None:
        provider.shutdown()


def metadata_traceparent(metadata: Iterable[tuple[Any, Any]] | None) -> str | None:
    """The `traceparent` entry of gRPC metadata or HTTP headers (str or bytes, any case: ASGI
    headers are lower-case bytes)."""
    for key, value in metadata or ():
        if (key if isinstance(key, str) else key.decode("latin-1")).lower() == TRACEPARENT:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


def parse_traceparent(traceparent: str | None) -> tuple[str, str, int] | None:
    """(trace id, parent span id, flags) of a valid W3C `traceparent`, else None. Pure."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None:
        return None
    version, trace, span, flags = match.groups()
    if version == "ff" or trace == "0" * 32 or span == "0" * 16 or (version == "00" and len(traceparent.strip()) != 55):
        return None
    return trace, span, int(flags, 16)


def traceparent_trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C `traceparent` (None for none or an invalid one)."""
    parsed = parse_traceparent(traceparent)
    return None if parsed is None else parsed[0]


def _ns_offset() -> int:
    """Add to a perf_counter reading in ns to get the wall clock in ns (spans need wall times)."""
    return time.time_ns() - time.perf_counter_ns()


@dataclass(slots=True)
class CallTrace:
    """One call's place in a trace: its span's context (`context` None: not sampled, nothing is
    recorded) and the caller's, from `traceparent`."""

    trace_id: int
    context: SpanContext | None
    parent: SpanContext | None
    attributes: dict[str, str]
    offset_ns: int  # perf_counter ns -> wall-clock ns, read once for the call


def parent_context(traceparent: str | None) -> SpanContext | None:
    """The caller's span from a W3C `traceparent` (None for none or an invalid one)."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags

    trace, span, flags = parsed
    return SpanContext(int(trace, 16), int(span, 16), is_remote=True, trace_flags=TraceFlags(flags))


def start_call(
    method: str, metadata: Iterable[tuple[str, Any]] | None, code: str, version: str, service: str = SERVICE
) -> CallTrace:
    """The call's trace: the caller's (`traceparent`) or a new one, and whether the sampler
    (OTEL_TRACES_SAMPLER, parent-based by default) records it. Only with tracing on; `end_call`
    records the spans."""
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context

    assert _provider is not None
    parent = parent_context(metadata_traceparent(metadata))
    trace_id = parent.trace_id if parent is not None else _provider.id_generator.generate_trace_id()
    attributes = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": method,
        "rpc.grpc.status_code": code,
        "apron.model_version": version,
    }
    name = f"{service}/{method}"
    sampled = _provider.sampler.should_sample(
        set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None,
        trace_id,
        name,
        SpanKind.SERVER,
        attributes,
    )
    context = None
    if sampled.decision.is_sampled():
        if sampled.attributes:
            attributes.update(sampled.attributes)
        context = SpanContext(
            trace_id,
            _provider.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=sampled.trace_state,
        )
    return CallTrace(trace_id, context, parent, attributes, _ns_offset())


def trace_id(call: CallTrace | None, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The trace id for the call's log line: its trace's (tracing on), else the caller's traceparent's."""
    if call is not None:
        return format(call.trace_id, "032x")
    return traceparent_trace_id(metadata_traceparent(metadata))


def end_call(call: CallTrace, clock: stages.StageClock, code: str = "OK", message: str = "") -> None:
    """The call's span and the spans of the stages it went through (`SPAN_STAGES`), with their real
    times (status ERROR for the codes the gRPC conventions count as a server's error).

    Every span is finished when it is created, so each is built as the SDK's finished span
    (`ReadableSpan`) and handed to the span processors (the export: their thread) at once: the
    SDK's live span costs tens of microseconds more (locks, attribute checks, its tracer's work)
    and would record nothing a finished one does not."""
    if call.context is None:  # not sampled
        return
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

    assert _provider is not None
    offset, context = call.offset_ns, call.context
    new_span_id = _provider.id_generator.generate_span_id
    intervals = clock.intervals or []
    ran = {stage for stage, _, _ in intervals}
    spans = [
        ReadableSpan(
            f"{call.attributes['rpc.service']}/{call.attributes['rpc.method']}",
            context=context,
            parent=call.parent,
            resource=_resource,
            attributes=call.attributes,
            kind=SpanKind.SERVER,
            status=Status(StatusCode.ERROR, message) if code in SERVER_ERRORS else _UNSET,
            instrumentation_scope=_scope,
            start_time=int(clock.start * 1e9) + offset,
            end_time=int(clock.last * 1e9) + offset,
        )
    ]
    for stage, start, end in intervals:
        found = SPAN_STAGES.get(stage)
        if found is None:
            remote = REMOTE_STAGES.get(stage)
            if remote is None or remote[0] in ran:  # in-process: the batched run's span has it
                continue
            found = (remote[1], _UNBATCHED)
        name, attributes = found
        spans.append(
            ReadableSpan(
                name,
                context=SpanContext(call.trace_id, new_span_id(), is_remote=False, trace_flags=context.trace_flags),
                parent=context,
                resource=_resource,
                attributes=attributes,
                instrumentation_scope=_scope,
                start_time=int(start * 1e9) + offset,
                end_time=int(end * 1e9) + offset,
            )
        )
    for processor in _processors:
        for span in spans:
            processor.on_end(span)
