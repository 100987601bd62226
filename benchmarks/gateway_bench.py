"""The gateway under load over real gRPC: micro-batching on vs off with 64 concurrent clients, profile
cache hit vs miss latency, maximum throughput next to the raw scorer's, p99 at 70 % of it, and a
pyinstrument profile of the gateway's event loop under full load.

The gateway (`serving.server`, in-process ONNX Runtime backend, its private redis-server, auth on)
runs in its own process. The load generator is a multi-process asyncio gRPC driver
(`benchmarks.load.run_load`: spawned processes, each an event loop with its own channels, started
together), so it is not capped by one Python process; on a 2-core machine gateway and load still
share the CPU, which the report says.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil

from benchmarks import request_path
from benchmarks.load import LoadStats, Refused, closed_loop, run_load
from benchmarks.request_path import CallSplit, EchoResults, PathPhase, TailEvidence
from benchmarks.timing import Timing
from common.net import free_ports
from serving.batching import INLINE_BELOW_S, LONE_INLINE_FACTOR

IDLE_FUNCTIONS = ("epoll.poll", "select.select", "poll.poll", "kqueue.control")  # the loop waiting, not working
STARTUP_FUNCTIONS = ("<module>", "create_server", "load_model", "start")  # before serving (server.py), imports
HISTORY_LENGTH = 50
N_USERS = 256
K = 10


@dataclass(frozen=True)
class Settings:
    n_items: int
    clients: int
    seconds: float
    workdir: Path
    load_fraction: float
    raw_throughput: float
    profile_if_p99_above_ms: float
    load_processes: int = 2  # the load generator's processes (each an asyncio loop with its own channels)
    request_path: bool = False  # also the echo server, the stage tables and the tail evidence (request_path.py)


@dataclass(frozen=True)
class Hotspot:
    function: str
    location: str
    self_s: float
    share: float  # of the profiled main thread's time


@dataclass(frozen=True)
class CpuUse:
    """CPU milliseconds per request of each process during one closed-loop run: where the cores went.
    The gateway's and its Redis's are their CPU over the whole run (warm-up included) divided by
    the calls the gateway answered in it (its own metrics); the load generator's, its CPU in the
    measured window by the calls measured."""

    gateway_ms: float  # the gateway process, all threads (event loop + ONNX Runtime's)
    redis_ms: float  # its private redis-server
    load_ms: float  # the load generator's processes
    rate: float  # requests per second in the measured window
    wall_s: float
    # the gateway's CPU per request by thread group (request_path.THREAD_GROUPS), over the same window
    gateway_threads_ms: Mapping[str, float]

    def share(self, ms: float) -> float:
        """Share of all the machine's cores that `ms` per request takes at this rate."""
        return ms * self.rate / 1e3 / (os.cpu_count() or 1)

    @property
    def total_ms(self) -> float:
        return self.gateway_ms + self.redis_ms + self.load_ms

    @property
    def busy(self) -> float:
        """Share of all the machine's cores busy with the three processes."""
        return self.share(self.total_ms)


@dataclass(frozen=True)
class GatewayHandle:
    address: str
    pid: int
    metrics_url: str  # its Prometheus /metrics
    # its micro-batcher's --max-batch-wait-ms, read from the environment it was started with as it
    # reads it (ServingConfig.from_env): the tail's reading says whether a request waited for company
    max_batch_wait_ms: float
    call_log: Path | None = None  # each call's first and last mark (request_path.CALL_LOG_ENV), when asked for

    def calls(self, method: str, window: tuple[float, float], calls: int, sent_sum_s: float, received_sum_s: float) -> CallSplit | None:
        """Before, in and after the handler for the calls a phase sent in `window` (None without a call log)."""
        if self.call_log is None:
            return None
        return request_path.call_split(self.call_log, method, window, calls, sent_sum_s, received_sum_s)

    def cpu_s(self) -> tuple[float, float]:
        """(gateway process, its children) user + system CPU seconds so far."""

        def total(process: psutil.Process) -> float:
            times = process.cpu_times()
            return times.user + times.system

        process = psutil.Process(self.pid)
        return total(process), sum(total(child) for child in process.children(recursive=True))

    def thread_cpu(self) -> request_path.ThreadCpu:
        """The gateway process's CPU so far by thread group (event loop, gRPC core, the others) and mode."""
        return request_path.thread_cpu(self.pid)

    def loop_cpu_s(self) -> float:
        """CPU seconds of the gateway's main thread so far: its event loop (gRPC's Python side,
        the handlers, Redis, the metrics), without ONNX Runtime's and gRPC core's threads."""
        main = next(thread for thread in psutil.Process(self.pid).threads() if thread.id == self.pid)
        return main.user_time + main.system_time


@dataclass(frozen=True)
class GatewayResults:
    n_items: int
    clients: int
    max_batch_size: int
    batched: Timing  # closed loop, cached profiles, micro-batching on
    unbatched: Timing  # the same with max_batch_size 1
    cache_hit: Timing  # one client, cached profile
    cache_miss: Timing  # one client, a history the cache has not seen
    offered_rate: float  # load_fraction × batched throughput
    load_fraction: float
    tail: TailEvidence  # the open loop at offered_rate, beside what the gateway, the load generator and the machine saw
    hotspots: list[Hotspot]  # the gateway's main thread under full load (pyinstrument)
    profiled_s: float
    cpu: CpuUse  # during the batched closed-loop run
    load_processes: int
    path: RequestPath | None = None  # with Settings.request_path
    # the closed loop of `batched` again, right after the open loop: the machine's speed when the
    # offered rate ran, which a shared machine need not keep from the run that set the rate
    batched_after: Timing | None = None
    # one client, cached Recommend, with the gateway's stages (`cache_hit`'s phase): the request-path
    # section shows it at the first size; at the others, the gateway section does
    one_client: PathPhase | None = None

    @property
    def max_throughput(self) -> float:
        return self.batched.throughput

    @property
    def offered_share_after(self) -> float | None:
        """The offered rate as a share of the maximum measured right after the open loop."""
        return self.offered_rate / self.batched_after.throughput if self.batched_after is not None and self.batched_after.throughput > 0 else None

    @property
    def at_load(self) -> Timing:
        """The open loop's latencies, from each request's scheduled start."""
        return self.tail.client


@dataclass(frozen=True)
class RequestPath:
    """The request-path section: the echo floor and the gateway's phases, measured in one run."""

    echo_before: EchoResults  # the floor measured before the gateway's phases
    echo_after: EchoResults  # and after its one-client phases
    phases: dict[str, PathPhase]  # by PHASES key
    # the targets' phases (AGAIN) measured a second time, right after echo_after: a second pairing
    again: dict[str, PathPhase]
    own_intake: PathPhase | None = None  # the saturated phase again with --grpc-intake COMPARED_INTAKE (serving/intake.py)

    @property
    def echo(self) -> EchoResults:
        """The floor the stage table compares with: both measurements pooled (`request_path.pooled`)."""
        return request_path.pooled(self.echo_before, self.echo_after)

    def pairings(self) -> list[tuple[EchoResults, dict[str, PathPhase]]]:
        """The floor and the gateway measured back to back, twice: the first echo with the first
        phases, the second with their repeat. A target holds only if it holds in each, so a moment
        when the machine ran the gateway faster than the floor (or slower) decides nothing alone."""
        return [(self.echo_before, self.phases), (self.echo_after, self.again)]


def unavailable() -> str:
    """Why the gateway cannot be benchmarked here ("" when it can)."""
    try:
        server = importlib.import_module("serving.server")
    except ModuleNotFoundError as error:
        return f"gateway not ready ({error.name} is missing)"
    if not hasattr(server, "create_server"):
        return "gateway not ready (serving.server has no create_server)"
    return ""


# ----------------------------------------------------------------------------- the gateway process


def export_repository(n_items: int, workdir: Path, int8: bool = False) -> Path:
    """A synthetic model of `n_items` exported as `apron export` does (`int8`: `--int8`)."""
    from benchmarks.synthetic import synthetic_checkpoint
    from export.pipeline import export_checkpoint
    from export.triton_repository import RepositorySettings

    target = workdir / f"gateway-{n_items}{'-int8' if int8 else ''}"
    shutil.rmtree(target, ignore_errors=True)
    checkpoint = synthetic_checkpoint(target / "apron.pt", n_items)
    export_checkpoint(checkpoint, target / "model_repository", settings=RepositorySettings(backend="onnxruntime", int8=int8))
    return target / "model_repository"


@contextmanager
def gateway_process(
    repository: Path,
    secret: Path,
    max_batch_size: int,
    profile_to: Path | None = None,
    more_settings: Mapping[str, object] | None = None,
    call_log: Path | None = None,
) -> Iterator[GatewayHandle]:
    """The gateway serving `repository` in a child process until the block exits; `more_settings`
    are further ServingConfig fields (e.g. workers, backend, device); with `call_log`, each call's
    first and last mark are written there (`GatewayHandle.calls`)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from serving.config import ServingConfig, env_name

    port, metrics_port = free_ports(2)
    settings = {
        "repository": repository, "port": port, "metrics_port": metrics_port, "build_demo": "false",
        "jwt_secret_file": secret, "max_batch_size": max_batch_size, "log_level": "WARNING",
        # an empty private Redis per gateway (a temp dir, no AOF): nothing cached by an earlier run
        "redis_dir": "", "redis_aof": "false", **(more_settings or {}),
    }  # fmt: skip
    # with --workers N the port answers once the first worker serves; the parent prints its worker
    # pids once all do, and only then are new connections spread over all of them
    all_serving = b"worker pids:" if int(str(settings.get("workers", 1))) > 1 else b""
    env = {**os.environ, **{env_name(key): str(value) for key, value in settings.items()}}
    if call_log is not None:
        env[request_path.CALL_LOG_ENV] = str(call_log)
    wait_ms = ServingConfig.from_env(env).max_batch_wait_ms  # as benchmarks/gateway_process.py reads it
    command = [sys.executable, "-m", "benchmarks.gateway_process"]
    if profile_to is not None:
        command = [sys.executable, "-m", "pyinstrument", "-r", "json", "-o", str(profile_to), "-m", "benchmarks.gateway_process"]
    log = open(repository.parent / f"gateway-b{max_batch_size}.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited with {process.returncode}: see {log.name}")
            try:
                with grpc.insecure_channel(address) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING and all_serving in Path(log.name).read_bytes():
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not serving after 180 s: see {log.name}")
            time.sleep(0.3)
        yield GatewayHandle(address, process.pid, f"http://127.0.0.1:{metrics_port}/metrics", wait_ms, call_log)
    finally:
        process.send_signal(signal.SIGTERM)  # graceful: pyinstrument writes its profile on exit
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# ----------------------------------------------------------------------------- the load


class Client:
    """Recommend calls of benchmark users over `channels` connections (requests take turns), with a
    service token. The same `seed` gives the same users' histories in every process."""

    def __init__(self, address: str, token: str, item_ids: list[str], seed: int = 0, channels: int = 1):
        from serving import auth
        from serving.proto_gen.apron.v1 import recommender_pb2 as pb
        from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc

        self.pb = pb
        # separate subchannel pools: each channel is its own TCP connection (with --workers, the
        # kernel spreads connections, not calls, over the gateway processes)
        self.channels = [
            grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(channels)
        ]
        self.stubs = [pb_grpc.RecommenderStub(channel) for channel in self.channels]
        self.metadata = auth.bearer_metadata(token)
        self.rng = np.random.default_rng(seed)
        self.item_ids = item_ids
        self.histories = [self.random_history() for _ in range(N_USERS)]
        self.fresh = 0
        self.sent = 0

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    def random_history(self) -> list[str]:
        return [self.item_ids[i] for i in self.rng.choice(len(self.item_ids), HISTORY_LENGTH, replace=False)]

    async def recommend(self, user_id: str, history: list[str], expect_cached: bool | None, view: int = 0) -> None:
        self.sent += 1
        try:
            reply = await self.stubs[self.sent % len(self.stubs)].Recommend(
                self.pb.RecommendRequest(user_id=user_id, history=history, k=K, profile_view=view),
                metadata=self.metadata, timeout=30,
            )  # fmt: skip
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:  # the gateway shedding load: an open loop counts it
                raise Refused(error.details()) from error
            raise
        if len(reply.items) != K or (expect_cached is not None and reply.profile_from_cache != expect_cached):
            raise RuntimeError(f"unexpected reply: {len(reply.items)} items, from cache {reply.profile_from_cache}")

    async def cached(self, i: int) -> None:
        user = i % N_USERS
        await self.recommend(f"bench-{user}", self.histories[user], expect_cached=True)

    async def cached_no_profile(self, i: int) -> None:
        """A cached Recommend that asks for no profile (RecommendRequest.profile_view NONE)."""
        user = i % N_USERS
        await self.recommend(f"bench-{user}", self.histories[user], expect_cached=True, view=self.pb.PROFILE_VIEW_NONE)

    async def get_profile(self, i: int) -> None:
        self.sent += 1
        reply = await self.stubs[self.sent % len(self.stubs)].GetProfile(
            self.pb.GetProfileRequest(user_id=f"bench-{i % N_USERS}"), metadata=self.metadata, timeout=30
        )
        if not reply.profile.weights:
            raise RuntimeError("unexpected reply: GetProfile without a profile")

    async def miss(self, i: int) -> None:
        self.fresh += 1
        await self.recommend(f"fresh-{self.fresh}", self.random_history(), expect_cached=False)

    async def warm(self) -> None:
        """Every benchmark user's profile into the cache (the gateway's own Redis)."""
        for user in range(N_USERS):
            await self.recommend(f"bench-{user}", self.histories[user], expect_cached=None)


@dataclass(frozen=True)
class ClientSource:
    """Builds a `Client` inside a load process (`benchmarks.load.run_load`: spawned, so picklable)."""

    address: str
    token: str
    item_ids: list[str]
    channels: int = 4

    def open(self) -> Client:
        return Client(self.address, self.token, self.item_ids, seed=0, channels=self.channels)


# the request-path phases: key -> (column title, Client method, method name in the gateway's metrics)
PHASES = {
    "one": ("1 client, Recommend", "cached", "Recommend"),
    "one_bare": ("1 client, Recommend, profile_view NONE", "cached_no_profile", "Recommend"),
    "get": ("1 client, GetProfile", "get_profile", "GetProfile"),
}
SATURATED = "saturated"
AGAIN = (SATURATED, "one", "get")  # the phases the request-path targets read, measured twice (RequestPath.pairings)
COMPARED_INTAKE = 1  # --grpc-intake against the default in the request-path section: grpc.aio's own intake alone


def run(settings: Settings) -> GatewayResults:
    from export.metadata import metadata_path
    from serving import auth
    from serving.config import ServingConfig

    repository = export_repository(settings.n_items, settings.workdir)
    item_ids = json.loads(metadata_path(repository).read_text())["item_ids"]
    secret = repository.parent / "jwt_secret"
    secret.write_text(secrets.token_hex(32))
    token = auth.mint_token(auth.read_secret_file(secret).key, "benchmark", auth.Role.SERVICE, ttl_s=3600)
    max_batch = ServingConfig().max_batch_size
    seconds, clients = settings.seconds, settings.clients
    processes = settings.load_processes
    # the floor first, alone on the machine: a bare grpc.aio echo server (again after the gateway's
    # one-client phases: the machine's speed drifts over a run)
    echo = request_path.measure_echo(clients, seconds, processes) if settings.request_path else None
    echo_after = None

    def saturate(gateway: GatewayHandle) -> tuple[Timing, CpuUse, PathPhase]:
        """Full load (closed loop, cached profiles) from the load processes, with every process's CPU."""
        source = ClientSource(gateway.address, token, item_ids)
        before, (gateway0, redis0), loop0 = request_path.scrape(gateway.metrics_url), gateway.cpu_s(), gateway.loop_cpu_s()
        threads0, window0 = gateway.thread_cpu(), time.perf_counter()
        load = run_load(source, "cached", processes, seconds, clients=clients)
        window = (window0, time.perf_counter())
        after, (gateway1, redis1), loop1 = request_path.scrape(gateway.metrics_url), gateway.cpu_s(), gateway.loop_cpu_s()
        threads = gateway.thread_cpu() - threads0
        samples = request_path.delta(before, after)
        split = request_path.stage_split(samples, "Recommend")
        phase = PathPhase(
            f"{clients} clients, Recommend", clients, load.timing, split, gateway1 - gateway0, redis1 - redis0,
            request_path.mean_batch(samples), loop1 - loop0,
            gateway.calls("Recommend", window, load.calls_all, load.sent_sum_s, load.received_sum_s), threads,
            *request_path.scorer_use(samples),
        )  # fmt: skip
        cpu = CpuUse(
            gateway_ms=phase.cpu_ms_per_call, redis_ms=(redis1 - redis0) / split.calls * 1e3,
            load_ms=load.cpu_s / load.timing.calls * 1e3, rate=load.timing.throughput, wall_s=load.timing.wall_s,
            gateway_threads_ms={group: threads.group_s(group) / split.calls * 1e3 for group in request_path.THREAD_GROUPS},
        )  # fmt: skip
        return load.timing, cpu, phase

    async def warm(gateway: GatewayHandle) -> None:
        client = Client(gateway.address, token, item_ids)
        await client.warm()
        await client.close()

    async def one_client(gateway: GatewayHandle, call: str, method: str, title: str) -> PathPhase:
        """One client, one call in flight on a persistent channel, with the gateway's stages."""
        client = Client(gateway.address, token, item_ids)
        before, (gateway0, redis0), loop0 = request_path.scrape(gateway.metrics_url), gateway.cpu_s(), gateway.loop_cpu_s()
        threads0, stats, window0 = gateway.thread_cpu(), LoadStats(), time.perf_counter()
        timing = await closed_loop(getattr(client, call), 1, seconds / 2, warmup_s=0.2, stats=stats)
        window = (window0, time.perf_counter())
        after, (gateway1, redis1), loop1 = request_path.scrape(gateway.metrics_url), gateway.cpu_s(), gateway.loop_cpu_s()
        threads = gateway.thread_cpu() - threads0
        await client.close()
        samples = request_path.delta(before, after)
        split = request_path.stage_split(samples, method)
        return PathPhase(
            title, 1, timing, split, gateway1 - gateway0, redis1 - redis0, request_path.mean_batch(samples), loop1 - loop0,
            gateway.calls(method, window, stats.calls, stats.sent_sum_s, stats.received_sum_s), threads,
            *request_path.scorer_use(samples),
        )  # fmt: skip

    async def misses(gateway: GatewayHandle) -> Timing:
        client = Client(gateway.address, token, item_ids)
        miss = await closed_loop(client.miss, 1, seconds / 2, warmup_s=0.2)
        await client.close()
        return miss

    def open_loop_at(gateway: GatewayHandle, rate: float) -> TailEvidence:
        before, (gateway0, _), loop0 = request_path.scrape(gateway.metrics_url), gateway.cpu_s(), gateway.loop_cpu_s()
        window0 = time.perf_counter()
        with request_path.SchedulingProbe() as probe:
            load = run_load(ClientSource(gateway.address, token, item_ids), "cached", processes, seconds, rate=rate)
        window = (window0, time.perf_counter())
        after, (gateway1, _), loop1 = request_path.scrape(gateway.metrics_url), gateway.cpu_s(), gateway.loop_cpu_s()
        calls = gateway.calls("Recommend", window, load.calls_all, load.sent_sum_s, load.received_sum_s)
        return request_path.tail_evidence(
            load, request_path.delta(before, after), gateway1 - gateway0, loop1 - loop0, probe, calls,
            max_batch_wait_ms=gateway.max_batch_wait_ms,
        )

    with gateway_process(repository, secret, max_batch, call_log=repository.parent / "calls.log") as gateway:
        asyncio.run(warm(gateway))
        batched, cpu, saturated = saturate(gateway)
        phases = {SATURATED: saturated}
        for key, (title, call, method) in PHASES.items():
            if key == "one" or settings.request_path:
                phases[key] = asyncio.run(one_client(gateway, call, method, title))
        again: dict[str, PathPhase] = {}
        if settings.request_path:  # the gateway idle meanwhile; then its targets' phases again, beside it
            echo_after = request_path.measure_echo(clients, seconds, processes)
            for key in AGAIN:
                if key == SATURATED:
                    again[key] = saturate(gateway)[2]
                else:
                    title, call, method = PHASES[key]
                    again[key] = asyncio.run(one_client(gateway, call, method, title))
        miss = asyncio.run(misses(gateway))
        rate = settings.load_fraction * batched.throughput
        tail = open_loop_at(gateway, rate)
        batched_after = saturate(gateway)[0]
    with gateway_process(repository, secret, 1) as gateway:
        asyncio.run(warm(gateway))
        unbatched, _, _ = saturate(gateway)
    own_intake = None
    if settings.request_path:  # --grpc-intake COMPARED_INTAKE against the default (serving/intake.py)
        more = {"grpc_intake": COMPARED_INTAKE}
        log = repository.parent / f"calls-intake-{COMPARED_INTAKE}.log"
        with gateway_process(repository, secret, max_batch, more_settings=more, call_log=log) as gateway:
            asyncio.run(warm(gateway))
            _, _, own_intake = saturate(gateway)
    profile = repository.parent / "gateway-profile.json"
    with gateway_process(repository, secret, max_batch, profile_to=profile) as gateway:
        asyncio.run(warm(gateway))
        saturate(gateway)
    hotspots, profiled_s = hotspots_from(profile)
    path = RequestPath(echo, echo_after, phases, again, own_intake) if echo is not None and echo_after is not None else None
    return GatewayResults(
        n_items=settings.n_items, clients=clients, max_batch_size=max_batch, batched=batched, unbatched=unbatched,
        cache_hit=phases["one"].timing, cache_miss=miss, offered_rate=rate, load_fraction=settings.load_fraction,
        tail=tail, hotspots=hotspots, profiled_s=profiled_s, cpu=cpu, load_processes=processes, path=path,
        batched_after=batched_after, one_client=phases["one"],
    )  # fmt: skip


def is_idle(function: str, location: str) -> bool:
    """The event loop waiting in its selector (pyinstrument names the C call, or, for time inside it,
    `[self]` of selectors.py)."""
    return function in IDLE_FUNCTIONS or (function == "[self]" and location.startswith("selectors.py"))


def hotspots_from(profile: Path, top: int = 10) -> tuple[list[Hotspot], float]:
    """Self time per function from pyinstrument's JSON tree (the gateway's main thread, which runs
    the event loop: gRPC, protobuf, Redis, edits, batching; ONNX Runtime's own threads are not in it).
    Start-up (imports, building the server, loading and warming the model) is left out: the table
    is about serving."""
    root = json.loads(profile.read_text())["root_frame"]
    self_time: dict[tuple[str, str], float] = defaultdict(float)
    startup = 0.0

    def walk(frame: dict) -> None:
        nonlocal startup
        function = frame.get("function", "?")
        if function in STARTUP_FUNCTIONS and frame is not root:  # the root is the entry script's <module>
            startup += frame["time"]
            return
        children = frame.get("children", [])
        own = frame["time"] - sum(child["time"] for child in children)
        key = (function, f"{frame.get('file_path_short', '?')}:{frame.get('line_no', '?')}")
        self_time[key] += max(own, 0.0)
        for child in children:
            walk(child)

    walk(root)
    total = root["time"] - startup
    idle = sum(t for key, t in self_time.items() if is_idle(*key))
    ranked = sorted(((key, t) for key, t in self_time.items() if not is_idle(*key)), key=lambda kv: -kv[1])
    hotspots = [Hotspot("(event loop idle: waiting for I/O or inference threads)", "selector", idle, idle / total)]
    return hotspots + [Hotspot(f, loc, t, t / total) for (f, loc), t in ranked[:top]], total


# ----------------------------------------------------------------------------- the report


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def render(results: GatewayResults, raw_throughput: float | None) -> list[str]:
    g = results
    cpu = g.cpu
    versus_raw = (
        f" = **{g.max_throughput / raw_throughput:.0%}** of the raw scorer's {fmt(raw_throughput, 0)} rows/s at batch 256"
        if raw_throughput else ""
    )
    lines = [
        f"## Gateway at {g.n_items:,} items",
        "",
        f"Gateway (gRPC, {g.n_items:,} items, in-process ONNX Runtime backend, private redis-server, auth on; "
        f"Recommend with a {HISTORY_LENGTH}-item history and k = {K}; the load generator, a multi-process "
        f"asyncio gRPC driver ({g.load_processes} processes), runs on the same {os.cpu_count()} cores): "
        f"**{fmt(g.max_throughput, 0)} req/s** at {g.clients} concurrent clients{versus_raw}.",
        "",
        f"### Micro-batching on vs off ({g.n_items:,} items, {g.clients} concurrent clients, cached profiles)",
        "",
        "| micro-batcher | req/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
        f"| on (max_batch_size {g.max_batch_size}) | {fmt(g.batched.throughput, 0)} | {fmt(g.batched.p50_ms)} | "
        f"{fmt(g.batched.p99_ms)} |",
        f"| off (max_batch_size 1) | {fmt(g.unbatched.throughput, 0)} | {fmt(g.unbatched.p50_ms)} | {fmt(g.unbatched.p99_ms)} |",
        f"| ratio on / off | {g.batched.throughput / g.unbatched.throughput:.2f}× | | |",
        "",
        f"### Profile cache hit vs miss ({g.n_items:,} items, one client, sequential calls)",
        "",
        "| profile | calls | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
        f"| cached (Redis hit) | {g.cache_hit.calls} | {fmt(g.cache_hit.p50_ms, 2)} | {fmt(g.cache_hit.p99_ms, 2)} |",
        f"| fresh history (miss: apron_profile runs) | {g.cache_miss.calls} | {fmt(g.cache_miss.p50_ms, 2)} | "
        f"{fmt(g.cache_miss.p99_ms, 2)} |",
        f"| miss / hit (p50) | | {g.cache_miss.p50_ms / g.cache_hit.p50_ms:.2f}× | |",
        "",
        *one_client_lines(g),
        *tail_lines(g, g.tail),
        f"### Where the CPU goes ({g.n_items:,} items, {g.clients} clients, cached profiles, {fmt(cpu.wall_s)} s)",
        "",
        "CPU of each process during the micro-batched closed-loop run above (psutil for the gateway and its "
        "Redis, over the whole run divided by the calls the gateway's metrics counted; `time.process_time` "
        "in each load process over the measured window), per request and as a share of all the machine's cores.",
        "",
        "| process | CPU ms per request | share of the machine's cores |",
        "| --- | ---: | ---: |",
        *[
            f"| {name} | {fmt(ms, 2)} | {cpu.share(ms):.0%} |"
            for name, ms in (
                ("gateway (event loop + ONNX Runtime threads)", cpu.gateway_ms),
                ("its redis-server", cpu.redis_ms),
                (f"load generator ({g.load_processes} processes, {g.clients} gRPC clients)", cpu.load_ms),
            )
        ],
        f"| all three | {fmt(cpu.total_ms, 2)} | {cpu.busy:.0%} |",
        "",
        f"### Where the gateway's time goes (pyinstrument, {g.n_items:,} items, {g.clients} clients, "
        f"{fmt(g.profiled_s)} s of the main thread after start-up)",
        "",
        "Self time per function on the gateway's event-loop thread; ONNX Runtime's inference runs in its "
        "own threads and shows up here only as the time the loop waits.",
        "",
        "| function | where | self s | share |",
        "| --- | --- | ---: | ---: |",
        *[f"| `{h.function}` | `{h.location}` | {fmt(h.self_s, 2)} | {h.share:.0%} |" for h in g.hotspots[1:]],
        f"| {g.hotspots[0].function} | | {fmt(g.hotspots[0].self_s, 2)} | {g.hotspots[0].share:.0%} |",
        "",
    ]
    return lines


def one_client_lines(g: GatewayResults) -> list[str]:
    """Where a lone cached Recommend's time goes, for a gateway without the request-path section
    (which holds this phase beside the echo floor at its own size)."""
    phase = g.one_client
    if phase is None or g.path is not None:
        return []
    split = phase.split
    return [
        f"### One client, cached Recommend: where the time goes ({g.n_items:,} items)",
        "",
        "The cache-hit phase above, from the gateway's `apron_stage_seconds` histograms read before and after it "
        "(mean µs per call; as in the request-path section) and the call log's split of what lies outside them "
        "(the client latency rows: the measured window; the rows below them: every call of the phase, warm-up "
        "included, the calls the stages and the call log hold, so outside = before + after).",
        "",
        *phase_rows([phase]),
        f"| the scorer's runs, wall µs per call (`apron_inference_duration_seconds`) | {phase.scorer_run_s / max(split.calls, 1) * 1e6:,.0f} |",
        "",
    ]


def phase_rows(phases: Sequence[PathPhase]) -> list[str]:
    """The stage table of `phases`, one column each (headed by its name), and the rows every phase
    table has below the stages: the client's latency, what lies outside the stages and its split at
    the handler, and the gateway's CPU per call. The request-path section and a lone call's own
    table (at a size without that section) both build theirs here, so the two read alike."""

    def row(label: str, cell: Callable[[PathPhase], str]) -> str:
        return f"| {label} | " + " | ".join(cell(p) for p in phases) + " |"

    return [
        *request_path.stage_rows({p.name: p.split for p in phases}),
        row("client latency, mean µs", lambda p: f"{p.timing.latencies_s.mean() * 1e6:,.0f}"),
        row("client latency, p50 µs", lambda p: f"{p.timing.p50_ms * 1e3:,.0f}"),
        row("outside the stages, mean µs (before + after, below)", lambda p: call_cell(p.calls, "outside_us")),
        row(
            "of which before the handler: the client's send to the first stage (the transport, grpc core's queue, "
            "the event loop), mean µs",
            lambda p: call_cell(p.calls, "before_us"),
        ),
        row(
            "of which after it: the last stage to the client's receipt (grpc's send, the transport, the client), mean µs",
            lambda p: call_cell(p.calls, "after_us"),
        ),
        row("gateway CPU per call, µs (all threads)", lambda p: f"{p.cpu_ms_per_call * 1e3:,.0f}"),
    ]


def render_path(results: GatewayResults, scorer_batch1: Timing | None, scorer_batch1_cold: Timing | None = None) -> list[str]:
    """The request-path section: the stage tables beside the echo floor, and the two intakes at saturation."""
    g, path = results, results.path
    assert path is not None
    echo, before, after, phases = path.echo, path.echo_before, path.echo_after, path.phases
    ordered = {phase.name: phase for phase in (*(phases[key] for key in PHASES if key in phases), phases[SATURATED])}
    batch1 = f"; the raw scorer at batch 1: p50 {fmt(scorer_batch1.p50_ms, 2)} ms" if scorer_batch1 else ""
    if scorer_batch1 and scorer_batch1_cold:
        batch1 += (
            f" called back to back, {fmt(scorer_batch1_cold.p50_ms, 2)} ms with its caches cold (64 MB of other memory "
            "read before each call, as a gateway's own work between two runs does; `timing.CacheEvictor`): the "
            "`scorer_run` stage below pays the second"
        )

    def echo_at(p: PathPhase) -> tuple[float, float] | None:
        """The echo server's (CPU ms per call, p50 ms) at the phase's client count: its one-client run
        for a one-client phase, its saturated run for the saturated one (a lone call costs a server
        more CPU per call than a saturated one's, so a ratio across client counts means nothing)."""
        if p.clients == 1:
            return echo.one_client_cpu_ms_per_call, echo.one_client.p50_ms
        if p.clients == g.clients:
            return echo.cpu_ms_per_call, echo.saturated.p50_ms
        return None  # no echo run at that count: no figure

    def against_echo(figure: Callable[[PathPhase, tuple[float, float]], str]) -> str:
        return " | ".join("" if (floor := echo_at(p)) is None else figure(p, floor) for p in ordered.values())

    lines = [
        f"## Request path ({g.n_items:,} items)",
        "",
        "The floor, measured in the same run before the gateway's phases and again after its one-client phases, "
        "the two pooled (the machine's speed drifts over a run): a bare grpc.aio unary echo server (200-byte "
        f"messages, no work; `benchmarks/request_path.py`). One client, one call in flight: **p50 "
        f"{fmt(echo.one_client.p50_ms, 2)} ms** (before {fmt(before.one_client.p50_ms, 2)}, after "
        f"{fmt(after.one_client.p50_ms, 2)}), {fmt(echo.one_client_cpu_ms_per_call, 3)} server CPU ms per call (its "
        f"threads' CPU from /proc over the run, warm-up included). {g.clients} calls in flight from the load processes: "
        f"{fmt(echo.saturated.throughput, 0)} req/s at **{fmt(echo.cpu_ms_per_call, 3)} server CPU ms per call** "
        f"(before {fmt(before.cpu_ms_per_call, 3)}, after {fmt(after.cpu_ms_per_call, 3)}){batch1}. Each gateway phase "
        "below is set against the echo server at its own client count.",
        "",
        *pairing_lines(path),
        "Where a call's time goes, from the gateway's own `apron_stage_seconds{method,stage}` histograms "
        "(`serving/stages.py`; always on), read from its `/metrics` before and after each phase: mean "
        "microseconds per call (a stage some calls skip counts 0 for them). Stages are wall time: with "
        f"{g.clients} clients they include waiting for the event loop and the cores. The gateway's CPU "
        "includes ONNX Runtime's threads. What lies outside the stages is split at the handler by the gateway's "
        "call log (each call's first and last stage) against the clients' send and receipt times, one clock for "
        "both processes (`request_path.call_split`). The client latency rows are over each phase's measured window; "
        "the stages and what lies outside them over every call of the phase, its warm-up included (the calls both "
        "the histograms and the call log hold): outside = before + after, over the same calls.",
        "",
        *phase_rows(list(ordered.values())),
        "| of which its event-loop thread, µs | " + " | ".join(f"{p.loop_ms_per_call * 1e3:,.0f}" for p in ordered.values()) + " |",
        f"| echo server CPU per call at the same client count, µs (1 client: its one-client run; {g.clients} clients: "
        "its saturated run) | " + against_echo(lambda p, floor: f"{floor[0] * 1e3:,.0f}") + " |",
        "| gateway CPU per call / that echo server CPU per call | "
        + against_echo(lambda p, floor: f"{p.cpu_ms_per_call / floor[0]:.1f}×") + " |",
        "| requests per `apron_scorer` run | " + " | ".join("" if math.isnan(p.mean_batch) else fmt(p.mean_batch, 1) for p in ordered.values()) + " |",
        f"| echo p50 at the same client count, µs (1 client: its one-client run; {g.clients} clients: its saturated run) | "
        + against_echo(lambda p, floor: f"{floor[1] * 1e3:,.0f}") + " |",
        "| client p50 − that echo p50, µs | " + against_echo(lambda p, floor: f"{(p.timing.p50_ms - floor[1]) * 1e3:,.0f}") + " |",
        "",
        *thread_lines(path),
        *intake_lines(phases[SATURATED], path.own_intake),
    ]
    return lines


def thread_lines(path: RequestPath) -> list[str]:
    """A call's CPU by thread group and mode, the gateway's beside the echo server's, at one client
    and at saturation: which threads, and how much of it the kernel, the gateway spends beyond the
    floor. Each pooled over its two measurements (a gateway phase and its repeat, the echo before
    and after)."""
    echo = path.echo
    # (threads, calls, the scorer's runs: (wall s, CPU s on the thread that ran them) or None for the echo)
    columns: dict[str, tuple[request_path.ThreadCpu, int, tuple[float, float] | None]] = {
        "echo server, 1 client": (echo.one_client_threads, echo.one_client_calls, None),
    }
    for key in ("one", "get", SATURATED):
        if key == SATURATED:
            columns[f"echo server, {path.phases[SATURATED].clients} clients"] = (echo.server_threads, echo.server_calls, None)
        both = [path.phases[key], path.again[key]]
        threads = both[0].threads + both[1].threads
        columns[f"gateway: {both[0].name}"] = (
            threads, sum(p.split.calls for p in both), (sum(p.scorer_run_s for p in both), sum(p.scorer_cpu_s for p in both))
        )  # fmt: skip

    def us(column: str, group: str | None = None, mode: str | None = None) -> float:
        threads, calls, _ = columns[column]
        if group is None:
            return threads.total_s / calls * 1e6
        seconds = threads.group_s(group) if mode is None else threads.seconds[group, mode]
        return seconds / calls * 1e6

    def cell(column: str, group: str) -> str:
        user, system = us(column, group, "user"), us(column, group, "system")
        return f"{user + system:,.0f} ({user:,.0f} / {system:,.0f})"

    names = list(columns)
    rows = [f"| {group} | " + " | ".join(cell(name, group) for name in names) + " |" for group in request_path.THREAD_GROUPS]
    rows.append("| all | " + " | ".join(f"{us(name):,.0f}" for name in names) + " |")

    def scorer(which: int) -> str:
        return " | ".join("" if (runs := columns[name][2]) is None else f"{runs[which] / columns[name][1] * 1e6:,.0f}" for name in names)

    rows.append(f"| of which the scorer's runs, wall (`apron_inference_duration_seconds`) | {scorer(0)} |")
    rows.append(f"| the scorer's runs, CPU of the thread that ran them (`apron_inference_thread_cpu_seconds_total`) | {scorer(1)} |")

    def beyond(gateway: str, floor: str) -> str:
        parts = ", ".join(f"{group} {us(gateway, group) - us(floor, group):+,.0f} µs" for group in request_path.THREAD_GROUPS)
        threads = columns[gateway][0]
        system = threads.mode_s("system") / threads.total_s
        return f"{us(gateway) - us(floor):+,.0f} µs ({parts}; system time {system:.0%} of the gateway's CPU)"

    one_floor, saturated_floor = names[0], names[3]
    return [
        "### Where a call's CPU goes, by thread",
        "",
        "CPU per call of each group of the process's threads, in µs: user + system (user / system; system is the "
        "kernel on their behalf: socket calls, epoll and futex waits, wake-ups and the switches between threads), "
        "read from /proc over each phase (`request_path.thread_cpu`), each phase pooled with its repeat, the echo "
        "server's two measurements pooled. gRPC core: its event engine's threads and timers. Other threads: those "
        "started from Python (grpc.aio's completion-queue poller in both; in the gateway also the micro-batchers' "
        f"workers, which run the scorer unless its recent runs took under {INLINE_BELOW_S * 1e3:g} ms "
        f"({INLINE_BELOW_S * LONE_INLINE_FACTOR * 1e3:g} ms for a lone call, nothing else ready on the loop), when it "
        "runs on the event loop, `serving/batching.py`; and the metrics server).",
        "",
        "| threads | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
        *rows,
        "",
        f"Beyond the echo server's: one client, a Recommend cost the gateway {beyond(names[1], one_floor)} and a "
        f"GetProfile {beyond(names[2], one_floor)}; at saturation a Recommend {beyond(names[4], saturated_floor)}.",
        "",
    ]


def pairing_lines(path: RequestPath) -> list[str]:
    """How the Targets table reads the floor: each measurement beside the gateway phases measured next to it."""
    again = path.again
    return [
        "The Targets table pairs each floor with the gateway measured next to it: the one before with the phases "
        f"below, the one after with the {again[SATURATED].name}, {again['one'].name} and {again['get'].name} phases "
        "run again right after it (gateway CPU "
        f"{fmt(again[SATURATED].cpu_ms_per_call * 1e3, 0)} µs per call at saturation; one client: Recommend p50 "
        f"{fmt(again['one'].timing.p50_ms * 1e3, 0)} µs, GetProfile p50 {fmt(again['get'].timing.p50_ms * 1e3, 0)} µs). "
        "A target is met only if it is met in both pairings: on a shared machine one moment's speed decides nothing alone.",
        "",
    ]


def intake_lines(default: PathPhase, other: PathPhase | None) -> list[str]:
    """The default --grpc-intake against COMPARED_INTAKE at saturation: where the calls wait, and what it serves."""
    from serving.config import ServingConfig

    if other is None:
        return []
    depth = ServingConfig().grpc_intake

    def row(name: str, p: PathPhase) -> str:
        before = "n/a" if p.calls is None else fmt(p.calls.before_us / 1e3, 1)
        return (
            f"| {name} | {fmt(p.timing.throughput, 0)} | {fmt(p.timing.p50_ms, 1)} | {fmt(p.timing.p99_ms, 1)} | {before} | "
            f"{fmt(p.split.total_us / 1e3, 1)} | {fmt(p.cpu_ms_per_call, 2)} | {fmt(p.mean_batch, 1)} |"
        )

    return [
        f"### `--grpc-intake {depth}` (the default) vs {COMPARED_INTAKE} ({default.clients} clients, cached Recommend)",
        "",
        "grpc.aio alone keeps one request for each method's next call waiting in grpc core, and asks again only "
        "once the call it got reached the event loop, so under load it takes one call per method per loop turn and "
        f"the rest wait in core before any stage. The default keeps {depth} waiting per method (`serving/intake.py`). "
        f"The {default.clients}-client phase above (the default), then the same closed loop against a gateway "
        f"with `--grpc-intake {COMPARED_INTAKE}`:",
        "",
        "| requests waiting per method | req/s | p50 ms | p99 ms | before the handler, mean ms | in the stages, mean ms | "
        "gateway CPU ms per call | requests per `apron_scorer` run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        row(f"{depth} (default)", default),
        row(f"{COMPARED_INTAKE} (grpc.aio's own)", other),
        "",
    ]


def loop_share(tail: TailEvidence, closed_loop_ms: float | None, load_fraction: float | None) -> str:
    """Why the offered share of the maximum throughput takes the share of the event loop it does:
    a call's loop CPU here against at the maximum (closed loop), where batches are larger."""
    if not closed_loop_ms or load_fraction is None:
        return ""
    ratio = tail.loop_ms_per_call / closed_loop_ms
    return (
        f" At the maximum throughput (the closed loop, {load_fraction:.0%} of whose rate was offered) a call cost the "
        f"loop {fmt(closed_loop_ms, 2)} ms: here each cost {ratio:.2f}× that (its batches held {fmt(tail.mean_batch, 1)} "
        f"requests), so {load_fraction:.0%} of the rate took {tail.loop_busy:.0%} of the loop."
    )


def call_cell(calls: CallSplit | None, part: str) -> str:
    """One part of a phase's split at the handler, µs; n/a when the gateway's call log did not hold the phase's calls."""
    return "n/a" if calls is None else f"{getattr(calls, part):,.0f}"


def tail_lines(g: GatewayResults, tail: TailEvidence) -> list[str]:
    """Item 4 of issue 19: the open-loop run's tail beside what the gateway and the load generator saw."""
    client = tail.client
    gc_rows = [
        # no collection of a generation: no pause to bound, "none" rather than a "≤ 0.00" no run measured
        f"| generation {generation} | {count:,.0f} | {seconds * 1e3:,.1f} | {seconds / tail.wall_s:.1%} | "
        f"{f'≤ {p99:,.2f}' if count else 'none'} |"
        for generation, (count, seconds, p99) in tail.gc.items()
    ]
    top = sorted(tail.split.seconds, key=lambda stage: -tail.split.seconds[stage])[:4]
    return [
        f"### Tail latency at {g.load_fraction:.0%} of the maximum throughput ({g.n_items:,} items, open loop): the evidence",
        "",
        f"{fmt(g.offered_rate, 0)} req/s offered for {fmt(tail.wall_s)} s ({client.calls:,} calls answered"
        + (f"; {tail.refused:,} more, {tail.refused_share:.1%} of the offered, refused with RESOURCE_EXHAUSTED: the gateway "
           "shed them, and they are in no latency below" if tail.refused else "")
        + f"): p50 {fmt(client.p50_ms, 1)} ms, p99 {fmt(client.p99_ms, 1)} ms. The client's latency is from each request's "
        "scheduled start; the gateway's own RPC duration is its `apron_rpc_duration_seconds` histogram over the calls "
        "it answered (code=\"OK\", as the client's: the refused are in neither; the upper bound of the bucket holding "
        "the quantile); the send lag is how late the load generator sent a "
        "request after its scheduled time (its own event loop busy, or the cores taken); the scheduling delay "
        "is how late the machine woke an otherwise idle thread that sleeps 1 ms at a time "
        "(`request_path.SchedulingProbe`), i.e. how long a runnable process waited for a core.",
        "",
        "| | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
        f"| client, from the scheduled start | {fmt(client.p50_ms, 1)} | {fmt(client.p99_ms, 1)} |",
        f"| the gateway's own RPC duration (bucket bound) | ≤ {fmt(tail.server_p50_ms, 1)} | ≤ {fmt(tail.server_p99_ms, 1)} |",
        f"| load generator's send lag | {fmt(tail.send_lag_ms[0], 1)} | {fmt(tail.send_lag_ms[1], 1)} |",
        f"| the machine's scheduling delay (a 1 ms sleep's overrun; max {fmt(tail.scheduling_ms[2], 1)} ms) | "
        f"{fmt(tail.scheduling_ms[0], 2)} | {fmt(tail.scheduling_ms[1], 1)} |",
        "",
        *over_rows(tail),
        "",
        f"Batches: {tail.batches:,} `apron_scorer` runs of {fmt(tail.mean_batch, 1)} requests and "
        f"{fmt(tail.mean_run_ms, 2)} ms on average (`apron_inference_duration_seconds`): the scorer, one run at a "
        f"time, was running {tail.scorer_busy:.0%} of the time. CPU: the "
        f"gateway {tail.gateway_cpu_share:.0%} and the load generator {tail.load_cpu_share:.0%} of the machine's cores. "
        "Largest stages per call: "
        + ", ".join(f"`{stage}` {tail.split.per_call_us(stage) / 1e3:,.2f} ms" for stage in top)
        + ". Garbage collections in the gateway (`apron_gc_pause_seconds`):",
        "",
        "| | collections | total ms | share of the run | p99 pause ms (bucket bound) |",
        "| --- | ---: | ---: | ---: | ---: |",
        *gc_rows,
        "",
        *tail_reading(tail, g.cpu.gateway_threads_ms.get(request_path.EVENT_LOOP), g.load_fraction),
        *([max_after_line(g), ""] if g.batched_after is not None else []),
    ]


def max_after_line(g: GatewayResults) -> str:
    """The maximum throughput measured twice, around the open loop: how much of the machine's
    speed at that moment the offered rate (set from the first) took."""
    assert g.batched_after is not None and g.offered_share_after is not None
    return (
        f"The maximum throughput, measured again right after the open loop (the same closed loop, the same gateway): "
        f"{fmt(g.batched_after.throughput, 0)} req/s, against {fmt(g.max_throughput, 0)} req/s when the offered rate "
        f"was set from it, so the open loop offered {g.offered_share_after:.0%} of the maximum measured after it "
        f"({g.load_fraction:.0%} of the one before)."
    )


NOT_MEASURED_SHARE = "not measured (no answered call in the gateway's `apron_rpc_duration_seconds`)"


def over_rows(tail: TailEvidence) -> list[str]:
    """The shares of the answered calls over each threshold, the client's beside the gateway's own."""
    return [
        "| answered calls slower than | as the client saw them | the gateway's own RPC duration (its code=\"OK\" calls) |",
        "| --- | ---: | ---: |",
        *[
            f"| {threshold:g} ms | {client:.2%} | {NOT_MEASURED_SHARE if math.isnan(server) else f'{server:.2%}'} |"
            for threshold, (client, server) in tail.over_ms.items()
        ],
    ]


def batch_wait(max_batch_wait_ms: float) -> str:
    """Whether a request waited for others to join its batch, from the gateway's own setting."""
    if max_batch_wait_ms == 0:
        return ": no request waited for company (`--max-batch-wait-ms` 0)"
    return (
        f": a request that found the scorer idle waited up to {max_batch_wait_ms:g} ms for others to join its batch "
        f"(`--max-batch-wait-ms` {max_batch_wait_ms:g})"
    )


def tail_reading(tail: TailEvidence, closed_loop_ms: float | None = None, load_fraction: float | None = None) -> list[str]:
    """What the evidence says about the tail, in words computed from it (true on any machine's run);
    `closed_loop_ms`: the event loop's CPU per call at the maximum throughput the offered rate is a
    share (`load_fraction`) of, which says how much of the loop that share takes."""
    threshold = max(tail.over_ms)
    client, server = tail.over_ms[threshold]
    gc_s = sum(seconds for _, seconds, _ in tail.gc.values())
    full_collections = tail.gc.get("2", (0.0, 0.0, 0.0))[0]
    if client <= 0:
        where = f"no call took over {threshold:g} ms"
    elif math.isnan(server):  # no share of the gateway's own to set against the client's
        where = (
            f"{client:.2%} of the answered calls took over {threshold:g} ms as the client saw them; how many of them "
            f"were slow inside the gateway's handler is {NOT_MEASURED_SHARE}"
        )
    elif server >= client:  # the gateway's own durations hold the whole tail: no share of it is outside
        where = (
            f"{server:.2%} of the answered calls took over {threshold:g} ms in the gateway's own durations and "
            f"{client:.2%} as the client saw them: the calls slow at the client were slow inside the gateway's handler"
        )
    else:
        outside = 1 - server / client  # both shares over the answered calls (`request_path.ANSWERED`)
        where = (
            f"{outside:.0%} of the calls the client saw take over {threshold:g} ms were not slow inside the gateway's "
            "handler but before it ran or after it answered (waiting for the gateway's event loop or for a core, the "
            "transport, the load generator)"
        )
    calls = tail.calls
    split = (
        f" On average a call spent {calls.before_us / 1e3:,.2f} ms from its send to the gateway's first stage, "
        f"{calls.handler_us / 1e3:,.2f} ms in the stages and {calls.after_us / 1e3:,.2f} ms from the last stage to "
        "its receipt (`request_path.call_split`)."
        if calls is not None else ""
    )
    return [
        f"Reading: {where}.{split} The gateway's event-loop thread, which gRPC hands every call to, spent "
        f"{fmt(tail.loop_ms_per_call, 2)} ms of CPU per call: at the offered rate it was busy {tail.loop_busy:.0%} of "
        f"the time, and a call that arrives while it is busy waits before its handler runs.{loop_share(tail, closed_loop_ms, load_fraction)} Garbage collection "
        f"paused the gateway {gc_s * 1e3:,.1f} ms in all "
        f"({gc_s / tail.wall_s:.1%} of the run; {full_collections:.0f} full collections). The batches held "
        f"{fmt(tail.mean_batch, 1)} requests on average{batch_wait(tail.max_batch_wait_ms)}. "
        f"The load generator, on the same cores, sent p99 {fmt(tail.send_lag_ms[1], 1)} ms late (its own garbage "
        f"collections, its heap frozen after set-up: {tail.load_gc_ms[0]:,} in all, {fmt(tail.load_gc_ms[1], 1)} ms, "
        f"the longest {fmt(tail.load_gc_ms[2], 1)} ms), and the machine "
        f"woke a sleeping thread p99 {fmt(tail.scheduling_ms[1], 1)} ms (max {fmt(tail.scheduling_ms[2], 1)} ms) late.",
        "",
    ]


