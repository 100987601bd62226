"""What tracing (serving/tracing.py) costs a call, off and on, measured in one run.

Two measurements, each alternating off and on block by block so that the load from other
processes falls on both alike (the result is a difference, and a ratio, within one run):

1. the hooks alone: a cached Recommend's stage marks on a `StageClock`, then the boundary's
   tracing work (`enabled()` off; `start_call` + `end_call` on, through a BatchSpanProcessor whose
   exporter drops the spans: the export itself runs in the SDK's thread, off the event loop);
2. end to end: cached Recommend calls one at a time against a real gateway in this process
   (ONNX Runtime, a synthetic 1,000-item model, a private redis-server), client and gateway on
   one event loop: latency per call and this process's CPU per call.

    python -m benchmarks.tracing_cost [--calls 2000] [--blocks 10]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks.inprocess_gateway import alternate, comparison
from serving import stages, tracing

# the stages a cached Recommend marks, in order (tests/serving/test_stages.py's CACHED_RECOMMEND)
CACHED_MARKS = (
    stages.AUTH, stages.DISPATCH, stages.ADMISSION, stages.VALIDATE, stages.REDIS_READ, stages.EDITS,
    stages.SCORER_QUEUE, stages.SCORER_RUN, stages.SCORER_RESUME, stages.SCORER, stages.RESPONSE, stages.RECORD,
)  # fmt: skip
METADATA = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)


class DroppingExporter(SpanExporter):
    """Counts spans and throws them away: the gateway's side of an export, without a collector."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def tracing_on(max_queue: int = 2048) -> DroppingExporter:
    """Tracing on as `configure_from_env` does it (the queue: room for a block of hook calls,
    which come faster than any gateway's, so that no span is dropped instead of exported)."""
    exporter = DroppingExporter()
    tracing.install(TracerProvider(), BatchSpanProcessor(exporter, max_queue_size=max_queue))
    return exporter


def hooks_once() -> None:
    """One call's stage marks and the boundary's tracing work (what rpc_boundary does)."""
    clock = stages.StageClock(time.perf_counter())
    for stage in CACHED_MARKS:
        clock.mark(stage)
    if tracing.enabled():
        span = tracing.start_call("Recommend", METADATA, "OK", "1")
        tracing.end_call(span, clock, "OK")


def time_hooks(calls: int) -> float:
    """Mean µs per call of `hooks_once`, in the current tracing state."""
    start = time.perf_counter()
    for _ in range(calls):
        hooks_once()
    return (time.perf_counter() - start) / calls * 1e6


def tracing_state(server: object) -> Callable[[], None]:
    """Tracing on in the running gateway (`inprocess_gateway.State`); switched off by `tracing.shutdown`."""
    tracing_on()
    return tracing.shutdown


def tracing_off(server: object) -> Callable[[], None]:
    return lambda: None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="gateway calls per state (default 2000)")
    parser.add_argument("--hook-calls", type=int, default=20000, help="hook-only calls per block (default 20000)")
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks per state (default 10)")
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.calls < 1:
        parser.error("--calls and --blocks must be at least 1")
    print(f"machine: {platform.machine()}, {platform.processor() or platform.platform()}, python {platform.python_version()}")

    hooks: dict[str, list[float]] = {"off": [], "on": []}
    time_hooks(args.hook_calls)  # warm-up
    for _ in range(args.blocks):
        for state in ("off", "on"):
            exporter = tracing_on(max(2048, 4 * args.hook_calls)) if state == "on" else None
            hooks[state].append(time_hooks(args.hook_calls))
            tracing.shutdown()
            assert exporter is None or exporter.spans == 4 * args.hook_calls  # call + 3 stage spans each
    off, on = np.median(hooks["off"]), np.median(hooks["on"])
    print(f"hooks per cached Recommend: off {off:.2f} µs, on {on:.2f} µs (+{on - off:.1f} µs; median of {args.blocks} blocks)")

    with tempfile.TemporaryDirectory() as workdir:
        states = {"off": tracing_off, "on": tracing_state}
        gateway = asyncio.run(alternate(args.calls, args.blocks, Path(workdir), states, METADATA))
    print("\n".join(comparison(gateway, "off", "on", "gateway")))


if __name__ == "__main__":
    main()
