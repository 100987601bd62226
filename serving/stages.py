"""Where a request's time goes: each RPC's wall time split into named stages, always on.

Every call carries a `StageClock` (in a context variable, so the profile cache, the micro-batcher
and the handlers mark stages without passing it around). `mark(stage)` charges the time since the
previous mark to `stage`; the servicer's boundary observes each stage once per call into the
histogram `apron_stage_seconds{method,stage}` (the way Triton reports queue / compute_input /
compute_infer / compute_output), through label children resolved once (`StageRecorder`), so a
call costs a few `perf_counter` reads and one histogram observation per stage it went through.

The stages of a call, in order (a stage the call did not go through is not observed):

- `auth`: the interceptor verifying the bearer token (a cache hit or a JWT decode);
- `dispatch`: gRPC's own work between the interceptor and the handler (reading the request), and
  parsing the request, which the boundary does once the call is admitted (`servicer.RawRequest`);
- `admission`: the boundary's concurrency limit, verified-caller check and deadline;
- `validate`: request validation, authorization, the per-user rate limit, history ids to indices;
- `redis_read`: the cached profile and stored edits (one round trip); for a Recommend that scores the
  process's kept copy while Redis confirms its version (servicer `_score_while_confirming`), only
  the wait for that read after the scorer, the part of it the scorer did not hide;
- `profile_queue`, `profile_run`, `profile_resume`: a cache miss's `apron_profile` run in the
  micro-batcher: waiting for a batch, the batch's inference, and the event-loop hop back;
- `profile`: the rest of the backend's profile call (Triton: all of it);
- `redis_write`: storing a computed profile (Recommend) or the edits (EditProfile);
- `edits`: applying stored and one-off edits to the profile;
- `scorer_queue`, `scorer_run`, `scorer_resume`: the same three for `apron_scorer`;
- `scorer`: the rest of the backend's top-k call (Triton: all of it);
- `response`: building the response message (the handler's work after its last stage);
- `error`: a failed call, from its last completed stage to the status;
- `record`: the boundary's bookkeeping after the handler (RPC metrics, access log).

Not inside any stage: the wait before the first (the transport, grpc core's queue, the event loop)
and gRPC serializing and sending the response after the last; the benchmark (`BENCHMARKS.md`,
"Request path") puts the stage sums beside the client's latency and a bare grpc.aio echo server
measured in the same run, and splits the rest at the handler with the call log (`log_calls`).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TextIO, TypeVar

from prometheus_client import Histogram

T = TypeVar("T")

AUTH = "auth"
DISPATCH = "dispatch"
ADMISSION = "admission"
VALIDATE = "validate"
REDIS_READ = "redis_read"
PROFILE_QUEUE = "profile_queue"
PROFILE_RUN = "profile_run"
PROFILE_RESUME = "profile_resume"
PROFILE = "profile"
REDIS_WRITE = "redis_write"
EDITS = "edits"
SCORER_QUEUE = "scorer_queue"
SCORER_RUN = "scorer_run"
SCORER_RESUME = "scorer_resume"
SCORER = "scorer"
RESPONSE = "response"
ERROR = "error"
RECORD = "record"

# what the micro-batcher charges for one request: waiting for a run, the run, the hop back
PROFILE_BATCH = (PROFILE_QUEUE, PROFILE_RUN, PROFILE_RESUME)
SCORER_BATCH = (SCORER_QUEUE, SCORER_RUN, SCORER_RESUME)

_AROUND = (AUTH, DISPATCH, ADMISSION, VALIDATE)  # every method's first stages
_AFTER = (RESPONSE, ERROR, RECORD)  # and its last
# The stages each method can go through, in request order: the series `StageRecorder` creates.
METHOD_STAGES: dict[str, tuple[str, ...]] = {
    "Recommend": (
        *_AROUND, REDIS_READ, *PROFILE_BATCH, PROFILE, REDIS_WRITE, EDITS, *SCORER_BATCH, SCORER, *_AFTER,
    ),
    "EditProfile": (*_AROUND, REDIS_READ, EDITS, REDIS_WRITE, *_AFTER),
    "GetProfile": (*_AROUND, REDIS_READ, EDITS, *_AFTER),
    "ListPrototypes": (*_AROUND, *_AFTER),
}  # fmt: skip


_record_intervals = False  # serving/tracing.py on: clocks also keep each interval, for the spans
_call_log: TextIO | None = None  # benchmarks: each finished call's method, first and last mark


def record_intervals(on: bool) -> None:
    """Clocks created from now on keep (stage, start, end) of each mark in `intervals` (tracing)."""
    global _record_intervals
    _record_intervals = on


def log_calls(sink: TextIO | None) -> None:
    """From now on each finished call writes `method start end` (its first and last mark, by
    `time.perf_counter`) as a line to `sink` (None: off, the default). On Linux perf_counter is
    CLOCK_MONOTONIC, which every process on the machine shares: the request-path benchmark
    (benchmarks/gateway_process.py) sets the lines against its clients' send and receive times to
    split what lies outside the stages into before the handler and after it."""
    global _call_log
    _call_log = sink


class StageClock:
    """One call's stages: `mark(stage)` charges the time since the previous mark to `stage`."""

    __slots__ = ("intervals", "last", "spent", "start")

    def __init__(self, start: float):
        self.start = start
        self.last = start
        self.spent: dict[str, float] = {}
        # with tracing on, each mark's interval in order (serving/tracing.py turns them into spans)
        self.intervals: list[tuple[str, float, float]] | None = [] if _record_intervals else None

    def mark(self, stage: str, now: float | None = None) -> None:
        """Charge [previous mark, `now`] (default: the current time) to `stage` and move the mark."""
        if now is None:
            now = time.perf_counter()
        spent = self.spent
        spent[stage] = spent.get(stage, 0.0) + (now - self.last)
        if self.intervals is not None:
            self.intervals.append((stage, self.last, now))
        self.last = now


_clock: contextvars.ContextVar[StageClock | None] = contextvars.ContextVar("apron_stage_clock", default=None)


def current() -> StageClock | None:
    """The clock of the call being handled (None outside a call)."""
    return _clock.get()


def attach(clock: StageClock) -> contextvars.Token:
    """Make `clock` the current call's (the auth interceptor's, for the handler); `end` undoes it."""
    return _clock.set(clock)


def begin(start: float) -> tuple[StageClock, contextvars.Token]:
    """A new clock started at `start` for the rest of this call; `end(token)` removes it."""
    clock = StageClock(start)
    return clock, _clock.set(clock)


def end(token: contextvars.Token) -> None:
    _clock.reset(token)


def unclocked_task(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task for `coroutine` whose marks go nowhere: work that overlaps the call's own stages
    (whose marks would cut them up) and whose wait the call marks itself once it awaits it."""
    context = contextvars.copy_context()
    context.run(_clock.set, None)
    return asyncio.get_running_loop().create_task(coroutine, context=context)


def mark(stage: str) -> None:
    """Charge the time since the call's previous mark to `stage` (nothing outside a call)."""
    clock = _clock.get()
    if clock is not None:
        clock.mark(stage)


def mark_batch(stages: tuple[str, str, str] | None, started: float, ended: float) -> None:
    """A micro-batched request back from its run: (queue, run, resume) = [previous mark, the run's
    start], [start, end], [end, now]."""
    clock = _clock.get()
    if clock is not None and stages is not None:
        queue, run, resume = stages
        clock.mark(queue, started)
        clock.mark(run, ended)
        clock.mark(resume)


class StageRecorder:
    """Observes a finished call's stages into `histogram` (labels method, stage), through label
    children resolved once: those of `METHOD_STAGES` here, any other method's (the admin RPCs) or
    stage on its first call."""

    def __init__(self, histogram: Histogram, method_stages: Mapping[str, Iterable[str]] = METHOD_STAGES):
        self._histogram = histogram
        self._children = {
            method: {stage: histogram.labels(method, stage) for stage in stages} for method, stages in method_stages.items()
        }

    def observe(self, method: str, clock: StageClock) -> None:
        if _call_log is not None:
            _call_log.write(f"{method} {clock.start!r} {clock.last!r}\n")
        children = self._children.get(method)
        if children is None:
            children = self._children[method] = {}
        for stage, seconds in clock.spent.items():
            child = children.get(stage)
            if child is None:
                child = children[stage] = self._histogram.labels(method, stage)
            child.observe(seconds)
