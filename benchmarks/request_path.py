"""The request path, stage by stage, beside a bare grpc.aio echo server measured in the same run.

The floor of any Python gRPC service on a machine is a grpc.aio unary echo (the design of
`/work/shared/perf/grpc_redis_floor.py`: 200-byte messages, no work): its p50 with one call in flight
and its server CPU per call at saturation. The gateway's own figures are compared with them as
ratios, which hold on any machine. Where the gateway's time goes comes from its
`apron_stage_seconds{method,stage}` histograms (serving/stages.py), read from its `/metrics`
before and after each phase; the tail-latency evidence from the same endpoint (RPC durations,
batch sizes, garbage-collection pauses) and from the load generator's own send lag.

What lies outside the stages is split in two by the gateway's call log (`CALL_LOG_ENV`,
`serving.stages.log_calls`: each call's first and last mark) set against the clients' own send and
receipt times (`LoadStats`): `time.perf_counter` is CLOCK_MONOTONIC on Linux, one clock for every
process on the machine, so the two sides' times subtract.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.load import LoadStats, ProcessLoad, closed_loop, run_load
from benchmarks.timing import Timing
from common.net import free_port
from serving.stages import METHOD_STAGES

ECHO_PAYLOAD = b"x" * 200  # the echo's request and response (/work/shared/perf's size)
ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Call"
ECHO_CHANNELS = 4  # per load process, as the gateway's load client uses
CALL_LOG_ENV = "BENCH_CALL_LOG"  # benchmarks/gateway_process.py: the gateway's call log goes to this path
ALWAYS_DEFER_ENV = "BENCH_ALWAYS_DEFER"  # "1": the gateway process defers a lone call too (loop_turn_cost.py)


def _identity(data: bytes) -> bytes:
    return data


# ----------------------------------------------------------------------------- the echo server


Interceptors = Callable[[], list[grpc.aio.ServerInterceptor]]  # module-level: a spawned process gets it by name


async def _echo(port: int, ready: Any, service: str, interceptors: Interceptors | None) -> None:
    server = grpc.aio.server(interceptors=interceptors() if interceptors else None)

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo, request_deserializer=_identity, response_serializer=_identity)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Call": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _serve_echo(port: int, ready: Any, service: str, interceptors: Interceptors | None) -> None:
    asyncio.run(_echo(port, ready, service, interceptors))


@contextlib.contextmanager
def echo_server(service: str = ECHO_SERVICE, interceptors: Interceptors | None = None) -> Iterator[tuple[str, int]]:
    """A bare grpc.aio echo server (`/<service>/Call`, behind `interceptors()` when given) in its own
    (spawned) process: (address, pid) until the block exits."""
    context = multiprocessing.get_context("spawn")
    port, ready = free_port(), context.Event()
    process = context.Process(target=_serve_echo, args=(port, ready, service, interceptors), name="apron-echo", daemon=True)
    process.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("the echo server did not start within 120 s")
        yield f"127.0.0.1:{port}", process.pid  # type: ignore[misc]
    finally:
        process.terminate()
        process.join(30)


class EchoClient:
    """Echo calls over ECHO_CHANNELS connections (requests take turns)."""

    def __init__(self, address: str, channels: int = ECHO_CHANNELS):
        self.channels = [
            grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(channels)
        ]
        self.calls = [
            channel.unary_unary(ECHO_METHOD, request_serializer=_identity, response_deserializer=_identity)
            for channel in self.channels
        ]

    async def call(self, i: int) -> None:
        await self.calls[i % len(self.calls)](ECHO_PAYLOAD, timeout=30)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


@dataclass(frozen=True)
class EchoSource:
    """Builds an `EchoClient` inside a load process (spawned, so picklable)."""

    address: str

    def open(self) -> EchoClient:
        return EchoClient(self.address)


def process_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# ----------------------------------------------------------------------------- CPU by thread

EVENT_LOOP, GRPC_CORE, OTHER_THREADS = "event loop", "gRPC core", "other threads"
THREAD_GROUPS = (EVENT_LOOP, GRPC_CORE, OTHER_THREADS)
MODES = ("user", "system")
# gRPC core's own threads as Linux names them (/proc/<pid>/task/<tid>/comm: its event engine's
# workers, its timer thread, its timer lifeguard). Threads started from Python are all named
# "python" there (grpc.aio's completion-queue poller, the micro-batchers' workers, the metrics
# server), and ONNX Runtime's intra-op pool inherits the name: they make up OTHER_THREADS.
GRPC_CORE_PREFIXES = ("event_engine", "grpc", "lifeguard")


def thread_group(pid: int, tid: int, name: str) -> str:
    if tid == pid:  # the main thread: the asyncio event loop that runs every handler
        return EVENT_LOOP
    return GRPC_CORE if name.startswith(GRPC_CORE_PREFIXES) else OTHER_THREADS


@dataclass(frozen=True)
class ThreadCpu:
    """A process's CPU seconds so far by thread group and mode: `seconds[group, "user" | "system"]`.
    Subtract two snapshots for a window's; system time is the kernel's on the threads' behalf (the
    socket calls, epoll, futex waits and wake-ups, the context switches between the threads)."""

    seconds: Mapping[tuple[str, str], float]

    def __sub__(self, earlier: ThreadCpu) -> ThreadCpu:
        return ThreadCpu({key: value - earlier.seconds.get(key, 0.0) for key, value in self.seconds.items()})

    def __add__(self, other: ThreadCpu) -> ThreadCpu:
        return ThreadCpu({key: value + other.seconds.get(key, 0.0) for key, value in self.seconds.items()})

    def group_s(self, group: str) -> float:
        return sum(self.seconds.get((group, mode), 0.0) for mode in MODES)

    def mode_s(self, mode: str) -> float:
        """Every group's seconds in one mode ("user" or "system")."""
        return sum(self.seconds.get((group, mode), 0.0) for group in THREAD_GROUPS)

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


def thread_cpu(pid: int) -> ThreadCpu:
    """`pid`'s threads' user and system CPU seconds so far, by `thread_group` (a thread that ended
    is not counted: take both snapshots of a window while the same threads live)."""
    seconds = dict.fromkeys([(group, mode) for group in THREAD_GROUPS for mode in MODES], 0.0)
    for thread in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:  # ended since the listing
            continue
        group = thread_group(pid, thread.id, name)
        seconds[group, "user"] += thread.user_time
        seconds[group, "system"] += thread.system_time
    return ThreadCpu(seconds)


@dataclass(frozen=True)
class EchoResults:
    one_client: Timing  # one call in flight, persistent channel
    saturated: Timing  # `clients` in flight from the load processes
    server_cpu_s: float  # the echo server's CPU over the saturated run's whole window
    server_calls: int  # calls the server answered in that window (warm-up included)
    server_threads: ThreadCpu  # the same CPU by thread group and mode
    one_client_threads: ThreadCpu  # the server's CPU by thread over the one-client run (warm-up included)
    one_client_calls: int  # the calls of that run, warm-up included

    @property
    def cpu_ms_per_call(self) -> float:
        """The server's CPU per call with `clients` in flight (the saturated run)."""
        return self.server_cpu_s / self.server_calls * 1e3

    @property
    def one_client_cpu_ms_per_call(self) -> float:
        """The server's CPU per call with one call in flight: a lone call pays wake-ups and syscalls
        that a saturated server shares among many, so a one-client gateway phase is set against this."""
        return self.one_client_threads.total_s / self.one_client_calls * 1e3 if self.one_client_calls else float("nan")


def measure_echo(clients: int, seconds: float, processes: int) -> EchoResults:
    """The echo server's one-client p50 and its CPU per call with `clients` in flight."""

    async def one_client(address: str, stats: LoadStats) -> Timing:
        client = EchoClient(address, channels=1)
        timing = await closed_loop(client.call, 1, seconds / 2, warmup_s=0.2, stats=stats)
        await client.close()
        return timing

    with echo_server() as (address, pid):
        one_threads0, one_stats = thread_cpu(pid), LoadStats()
        one = asyncio.run(one_client(address, one_stats))
        one_threads = thread_cpu(pid) - one_threads0
        cpu0, threads0 = process_cpu_s(pid), thread_cpu(pid)
        load = run_load(EchoSource(address), "call", processes, seconds, clients=clients)
        cpu1, threads1 = process_cpu_s(pid), thread_cpu(pid)
    # the server answered the warm-up's calls too, at the same rate: count them by the load's own
    # rate over the warm-up, so CPU and calls cover the same window
    return EchoResults(one, load.timing, cpu1 - cpu0, load.calls_all, threads1 - threads0, one_threads, one_stats.calls)


def pooled(before: EchoResults, after: EchoResults) -> EchoResults:
    """Two measurements of the echo floor as one: their calls pooled (a p50 over both), the server's
    CPU over both windows' calls. The benchmark measures the floor before and after the gateway's
    phases, so that a machine whose speed drifts during the run moves the floor with them."""

    def pool(a: Timing, b: Timing) -> Timing:
        return Timing(np.concatenate([a.latencies_s, b.latencies_s]), a.batch, a.wall_s + b.wall_s)

    return EchoResults(
        pool(before.one_client, after.one_client), pool(before.saturated, after.saturated),
        before.server_cpu_s + after.server_cpu_s, before.server_calls + after.server_calls,
        before.server_threads + after.server_threads, before.one_client_threads + after.one_client_threads,
        before.one_client_calls + after.one_client_calls,
    )  # fmt: skip


# ----------------------------------------------------------------------------- the gateway's /metrics


Snapshot = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample name, sorted labels) -> value


def scrape(metrics_url: str) -> Snapshot:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    samples: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def total(samples: Snapshot, name: str, **labels: str) -> float:
    """Sum of the samples `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


@dataclass(frozen=True)
class StageSplit:
    """A method's stages over one phase: per stage, calls that went through it and seconds in it."""

    method: str
    calls: int  # the method's RPCs answered in the phase (any status)
    counts: dict[str, float]
    seconds: dict[str, float]

    def per_call_us(self, stage: str) -> float:
        """Mean microseconds of `stage` per call (a stage some calls skip counts 0 for them)."""
        return self.seconds.get(stage, 0.0) / self.calls * 1e6 if self.calls else 0.0

    @property
    def total_us(self) -> float:
        return sum(self.per_call_us(stage) for stage in self.seconds)


def stage_split(samples: Snapshot, method: str) -> StageSplit:
    counts: dict[str, float] = defaultdict(float)
    seconds: dict[str, float] = defaultdict(float)
    for (name, labels), value in samples.items():
        label = dict(labels)
        if label.get("method") != method:
            continue
        if name == "apron_stage_seconds_count":
            counts[label["stage"]] += value
        elif name == "apron_stage_seconds_sum":
            seconds[label["stage"]] += value
    calls = int(total(samples, "apron_rpc_duration_seconds_count", method=method))
    return StageSplit(method, calls, dict(counts), dict(seconds))


def mean_batch(samples: Snapshot, model: str = "apron_scorer") -> float:
    runs = total(samples, "apron_inference_batch_size_count", model=model)
    return total(samples, "apron_inference_batch_size_sum", model=model) / runs if runs else float("nan")


def bucket_quantile(samples: Snapshot, name: str, q: float, **labels: str) -> float:
    """The upper bound of the histogram bucket holding quantile `q` (seconds; inf beyond the last)."""
    buckets: dict[float, float] = defaultdict(float)
    for (sample, ls), value in samples.items():
        label = dict(ls)
        if sample == f"{name}_bucket" and all(label.get(k) == x for k, x in labels.items()):
            buckets[float(label["le"])] += value
    if not buckets:
        return float("nan")
    bounds = sorted(buckets)
    count = buckets[bounds[-1]]
    for bound in bounds:
        if buckets[bound] >= q * count:
            return bound
    return bounds[-1]


# ----------------------------------------------------------------------------- before and after the handler


@dataclass(frozen=True)
class CallSplit:
    """A phase's calls, mean microseconds: from the client's send to the gateway's first mark (the
    transport, grpc core's queue, the event loop), in the gateway's stages, and from its last mark
    to the client's receipt (grpc's send, the transport, the client)."""

    before_us: float
    handler_us: float
    after_us: float

    @property
    def outside_us(self) -> float:
        """Outside the stages, over the same calls as its two parts (every call of the phase, warm-up
        included): the client's latency mean over its measured window less the stages' mean would be
        over other calls, and would not be the sum of the two."""
        return self.before_us + self.after_us


def call_split(
    log: Path, method: str, window: tuple[float, float], calls: int, sent_sum_s: float, received_sum_s: float
) -> CallSplit | None:
    """The split of the `calls` the clients sent within `window` (perf_counter; their send and
    receipt times summed), from the gateway's log lines of `method` inside the window. None when the
    log does not hold exactly those calls (another client's calls, a lost line): no split then."""
    starts = ends = 0.0
    logged = 0
    with log.open() as lines:
        for line in lines:
            fields = line.split()
            if len(fields) != 3:  # not a whole line (the gateway still writing it): the counts decide
                continue
            name, start, end = fields
            if name == method and window[0] <= float(start) and float(end) <= window[1]:
                starts, ends, logged = starts + float(start), ends + float(end), logged + 1
    if logged != calls or calls == 0:
        return None
    return CallSplit(
        before_us=(starts - sent_sum_s) / calls * 1e6, handler_us=(ends - starts) / calls * 1e6, after_us=(received_sum_s - ends) / calls * 1e6
    )


# ----------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class PathPhase:
    """One measured phase through the gateway: the client's latencies and the gateway's stages."""

    name: str
    clients: int
    timing: Timing  # as the client saw it
    split: StageSplit
    gateway_cpu_s: float  # the gateway process over the phase (all threads), and its redis-server
    redis_cpu_s: float
    mean_batch: float  # requests per apron_scorer run
    loop_cpu_s: float  # the gateway's main thread (its event loop) over the phase
    calls: CallSplit | None  # outside the stages: before the handler and after it (None without a call log)
    threads: ThreadCpu  # the gateway's CPU by thread group and mode over the phase
    scorer_run_s: float  # apron_scorer's runs over the phase, summed (wall)
    scorer_cpu_s: float  # their CPU on the thread that ran them (apron_inference_thread_cpu_seconds_total)

    @property
    def cpu_ms_per_call(self) -> float:
        return self.gateway_cpu_s / self.split.calls * 1e3 if self.split.calls else float("nan")

    @property
    def loop_ms_per_call(self) -> float:
        return self.loop_cpu_s / self.split.calls * 1e3 if self.split.calls else float("nan")

    @property
    def scorer_cpu_ms_per_call(self) -> float:
        return self.scorer_cpu_s / self.split.calls * 1e3 if self.split.calls else float("nan")


class SchedulingProbe:
    """How late the machine runs a thread that asks to wake up every millisecond: a thread of this
    (otherwise idle) process sleeps 1 ms again and again and records by how much each sleep
    overran, with its time (perf_counter, system-wide on Linux). Run beside a load, it measures how
    long any runnable process waited for a core meanwhile: the other processes' share of a tail."""

    def __init__(self, sleep_s: float = 0.001):
        self.sleep_s = sleep_s
        self.samples: list[tuple[float, float]] = []  # (woke at, overran by)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apron-scheduling-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            time.sleep(self.sleep_s)
            woke = time.perf_counter()
            self.samples.append((woke, woke - before - self.sleep_s))

    def __enter__(self) -> SchedulingProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def overruns_ms(self, window: tuple[float, float]) -> np.ndarray:
        start, end = window
        return np.asarray([late * 1e3 for woke, late in self.samples if start <= woke <= end])


def refused_share(refused: int, answered: int) -> float:
    """The calls refused for load as a share of those offered (answered and refused)."""
    return refused / (refused + answered) if refused else 0.0


def refused_note(refused: int, answered: int) -> str:
    """An open loop's p99 cell's word on the calls the gateway refused for load, which are in no
    latency ("" when none was)."""
    return f"; {refused:,} calls ({refused_share(refused, answered):.1%}) refused for load, in no latency" if refused else ""


@dataclass(frozen=True)
class TailEvidence:
    """Where the open-loop run at 70 % load spent its tail (item 4 of issue 19)."""

    client: Timing  # latency from each request's scheduled start, as the load generator measured it
    send_lag_ms: tuple[float, float]  # (p50, p99) of actual send time - scheduled send time
    server_p50_ms: float  # the gateway's own RPC duration, upper bounds of the histogram buckets
    server_p99_ms: float
    split: StageSplit
    mean_batch: float  # requests per apron_scorer run
    batches: int
    scorer_run_s: float  # apron_scorer's runs, summed (apron_inference_duration_seconds)
    gc: dict[str, tuple[float, float, float]]  # generation -> (collections, seconds in all, p99 bucket ms: nan if none)
    wall_s: float
    load_cpu_share: float  # the load generator's share of the machine's cores
    gateway_cpu_share: float
    loop_ms_per_call: float  # CPU of the gateway's event-loop thread per call
    loop_busy: float  # its share of the time at the offered rate
    scheduling_ms: tuple[float, float, float]  # SchedulingProbe's overrun (p50, p99, max) in the measured window
    # threshold -> share of the answered calls over it (client, the gateway's own: nan without its histogram)
    over_ms: dict[float, tuple[float, float]]
    load_gc_ms: tuple[int, float, float]  # the load processes' own collections: (count, ms in all, longest ms)
    max_batch_wait_ms: float  # the gateway's --max-batch-wait-ms: the reading says whether a request waited for company
    calls: CallSplit | None = None  # from the actual send: before the handler, in it, after it
    refused: int = 0  # calls the gateway refused for its load (RESOURCE_EXHAUSTED): in no latency above

    @property
    def refused_share(self) -> float:
        return refused_share(self.refused, self.client.calls)

    @property
    def mean_run_ms(self) -> float:
        return self.scorer_run_s / self.batches * 1e3 if self.batches else float("nan")

    @property
    def scorer_busy(self) -> float:
        """Share of the run's wall time the scorer was running a batch (one at a time)."""
        return self.scorer_run_s / self.wall_s


def scorer_use(samples: Snapshot) -> tuple[float, float]:
    """apron_scorer's runs over a phase: their wall time summed, and their CPU on the thread that ran them."""
    return (
        total(samples, "apron_inference_duration_seconds_sum", model="apron_scorer"),
        total(samples, "apron_inference_thread_cpu_seconds_total", model="apron_scorer"),
    )


def gc_pauses(samples: Snapshot) -> dict[str, tuple[float, float, float]]:
    found = {}
    for generation in ("0", "1", "2"):
        count = total(samples, "apron_gc_pause_seconds_count", generation=generation)
        seconds = total(samples, "apron_gc_pause_seconds_sum", generation=generation)
        # no collection: no pause to take a quantile of (nan, not a 0.0 that reads as a measured bound)
        p99 = bucket_quantile(samples, "apron_gc_pause_seconds", 0.99, generation=generation) * 1e3 if count else float("nan")
        found[generation] = (count, seconds, p99)
    return found


def stage_rows(splits: Mapping[str, StageSplit], method_stages: Mapping[str, tuple[str, ...]] = METHOD_STAGES) -> list[str]:
    """The stage table: one row per stage any of `splits` went through, mean µs per call in each."""
    order: list[str] = []
    for split in splits.values():
        for stage in method_stages[split.method]:
            if stage not in order and split.counts.get(stage):
                order.append(stage)
    header = "| stage | " + " | ".join(splits) + " |"
    lines = [header, "| --- |" + " ---: |" * len(splits)]
    for stage in order:
        cells = [f"{split.per_call_us(stage):,.0f}" if split.counts.get(stage) else "" for split in splits.values()]
        lines.append(f"| `{stage}` | " + " | ".join(cells) + " |")
    lines.append("| **sum of the stages** | " + " | ".join(f"**{s.total_us:,.0f}**" for s in splits.values()) + " |")
    return lines


def share_over(samples: Snapshot, name: str, threshold_s: float, **labels: str) -> float:
    """Share of a histogram's observations above `threshold_s`, which must be one of its bucket
    bounds (between two bounds the share is not known: ValueError); nan when it holds no
    observations with `labels` (nothing to share)."""
    below = count = 0.0
    bounds: set[float] = set()
    for (sample, ls), value in samples.items():
        label = dict(ls)
        if sample == f"{name}_bucket" and all(label.get(k) == x for k, x in labels.items()):
            if label["le"] == "+Inf":
                count += value
                continue
            bounds.add(float(label["le"]))
            if abs(float(label["le"]) - threshold_s) < 1e-12:
                below += value
    if bounds and not any(abs(bound - threshold_s) < 1e-12 for bound in bounds):
        # summing no bucket would read as "every call over it": refuse instead
        raise ValueError(f"{threshold_s:g} s is not a bucket bound of {name} (bounds: {sorted(bounds)})")
    return (count - below) / count if count else float("nan")  # not 1 - below / count: 10 / 1000 stays 0.01


TAIL_THRESHOLDS_MS = (25.0, 50.0)  # bucket bounds of apron_rpc_duration_seconds
# the client's latencies are of the calls the gateway answered (a refused call raises `load.Refused`
# and is counted apart): the gateway's own durations are read over the same calls, its code="OK"
# series, not over the refusals it answered in microseconds, which would dilute its tail share
ANSWERED = {"method": "Recommend", "code": "OK"}


def tail_evidence(
    load: ProcessLoad,
    samples: Snapshot,
    gateway_cpu_s: float,
    loop_cpu_s: float,
    probe: SchedulingProbe,
    calls: CallSplit | None = None,
    *,
    max_batch_wait_ms: float,
) -> TailEvidence:
    """The open-loop run's client latencies beside what the gateway, the load generator and the
    machine's scheduler saw."""
    lags = load.send_lags_s
    batches = total(samples, "apron_inference_batch_size_count", model="apron_scorer")
    cores = os.cpu_count() or 1
    split = stage_split(samples, "Recommend")
    overruns = probe.overruns_ms(load.window)
    latencies_ms = load.timing.latencies_s * 1e3
    return TailEvidence(
        client=load.timing,
        send_lag_ms=(float(np.percentile(lags, 50) * 1e3), float(np.percentile(lags, 99) * 1e3)) if len(lags) else (0.0, 0.0),
        server_p50_ms=bucket_quantile(samples, "apron_rpc_duration_seconds", 0.5, **ANSWERED) * 1e3,
        server_p99_ms=bucket_quantile(samples, "apron_rpc_duration_seconds", 0.99, **ANSWERED) * 1e3,
        split=split,
        mean_batch=mean_batch(samples),
        batches=int(batches),
        scorer_run_s=total(samples, "apron_inference_duration_seconds_sum", model="apron_scorer"),
        gc=gc_pauses(samples),
        wall_s=load.timing.wall_s,
        load_cpu_share=load.cpu_s / (load.timing.wall_s * cores),
        # the gateway's CPU per call it answered, at the offered rate (its whole-window CPU includes idle start-up)
        gateway_cpu_share=gateway_cpu_s / max(split.calls, 1) * load.timing.throughput / cores,
        loop_ms_per_call=loop_cpu_s / max(split.calls, 1) * 1e3,
        loop_busy=loop_cpu_s / max(split.calls, 1) * load.timing.throughput,
        scheduling_ms=(
            (float(np.percentile(overruns, 50)), float(np.percentile(overruns, 99)), float(overruns.max()))
            if len(overruns) else (float("nan"),) * 3
        ),
        over_ms={
            threshold: (
                float(np.mean(latencies_ms > threshold)),
                share_over(samples, "apron_rpc_duration_seconds", threshold / 1e3, **ANSWERED),
            )
            for threshold in TAIL_THRESHOLDS_MS
        },
        load_gc_ms=(len(load.gc_pauses_s), float(load.gc_pauses_s.sum() * 1e3), float(load.gc_pauses_s.max() * 1e3) if len(load.gc_pauses_s) else 0.0),
        calls=calls,
        refused=load.refused,
        max_batch_wait_ms=max_batch_wait_ms,
    )
