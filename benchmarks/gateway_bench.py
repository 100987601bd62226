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
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil

from benchmarks.load import closed_loop, run_load
from benchmarks.timing import Timing
from common.net import free_port

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


@dataclass(frozen=True)
class Hotspot:
    function: str
    location: str
    self_s: float
    share: float  # of the profiled main thread's time


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds each process spent during one closed-loop run: where the cores went."""

    gateway_s: float  # the gateway process, all threads (event loop + ONNX Runtime's)
    redis_s: float  # its private redis-server
    load_s: float  # the load generator's processes
    wall_s: float
    requests: int

    @property
    def busy(self) -> float:
        """Share of all the machine's cores busy with the three processes."""
        return (self.gateway_s + self.redis_s + self.load_s) / (self.wall_s * (os.cpu_count() or 1))

    def ms_per_request(self, seconds: float) -> float:
        return seconds / self.requests * 1e3


@dataclass(frozen=True)
class GatewayHandle:
    address: str
    pid: int

    def cpu_s(self) -> tuple[float, float]:
        """(gateway process, its children) user + system CPU seconds so far."""

        def total(process: psutil.Process) -> float:
            times = process.cpu_times()
            return times.user + times.system

        process = psutil.Process(self.pid)
        return total(process), sum(total(child) for child in process.children(recursive=True))


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
    at_load: Timing  # open loop at offered_rate
    hotspots: list[Hotspot]  # the gateway's main thread under full load (pyinstrument)
    profiled_s: float
    cpu: CpuUse  # during the batched closed-loop run
    load_processes: int

    @property
    def max_throughput(self) -> float:
        return self.batched.throughput


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


def export_repository(n_items: int, workdir: Path) -> Path:
    from benchmarks.synthetic import synthetic_checkpoint
    from export.pipeline import export_checkpoint
    from export.triton_repository import RepositorySettings

    target = workdir / f"gateway-{n_items}"
    shutil.rmtree(target, ignore_errors=True)
    checkpoint = synthetic_checkpoint(target / "apron.pt", n_items)
    export_checkpoint(checkpoint, target / "model_repository", settings=RepositorySettings(backend="onnxruntime"))
    return target / "model_repository"


@contextmanager
def gateway_process(
    repository: Path,
    secret: Path,
    max_batch_size: int,
    profile_to: Path | None = None,
    more_settings: Mapping[str, object] | None = None,
) -> Iterator[GatewayHandle]:
    """The gateway serving `repository` in a child process until the block exits; `more_settings`
    are further ServingConfig fields (e.g. workers, backend, device)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from serving.config import env_name

    port = free_port()
    settings = {
        "repository": repository, "port": port, "metrics_port": -1, "build_demo": "false",
        "jwt_secret_file": secret, "max_batch_size": max_batch_size, "log_level": "WARNING",
        # an empty private Redis per gateway (a temp dir, no AOF): nothing cached by an earlier run
        "redis_dir": "", "redis_aof": "false", **(more_settings or {}),
    }  # fmt: skip
    # with --workers N the port answers once the first worker serves; the parent prints its worker
    # pids once all do, and only then are new connections spread over all of them
    all_serving = b"worker pids:" if int(str(settings.get("workers", 1))) > 1 else b""
    env = {**os.environ, **{env_name(key): str(value) for key, value in settings.items()}}
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
        yield GatewayHandle(address, process.pid)
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

    async def recommend(self, user_id: str, history: list[str], expect_cached: bool | None) -> None:
        self.sent += 1
        reply = await self.stubs[self.sent % len(self.stubs)].Recommend(
            self.pb.RecommendRequest(user_id=user_id, history=history, k=K), metadata=self.metadata, timeout=30
        )
        if len(reply.items) != K or (expect_cached is not None and reply.profile_from_cache != expect_cached):
            raise RuntimeError(f"unexpected reply: {len(reply.items)} items, from cache {reply.profile_from_cache}")

    async def cached(self, i: int) -> None:
        user = i % N_USERS
        await self.recommend(f"bench-{user}", self.histories[user], expect_cached=True)

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

    def saturate(gateway: GatewayHandle) -> tuple[Timing, CpuUse]:
        """Full load (closed loop, cached profiles) from the load processes, with every process's CPU."""
        source = ClientSource(gateway.address, token, item_ids)
        (gateway0, redis0), start = gateway.cpu_s(), time.perf_counter()
        load = run_load(source, "cached", processes, seconds, clients=clients)
        (gateway1, redis1) = gateway.cpu_s()
        # the load's start-up and warm-up (same load, not timed) are inside the CPU window: scale them out
        share = load.timing.wall_s / (time.perf_counter() - start)
        cpu = CpuUse(
            gateway_s=(gateway1 - gateway0) * share, redis_s=(redis1 - redis0) * share, load_s=load.cpu_s,
            wall_s=load.timing.wall_s, requests=load.timing.calls,
        )  # fmt: skip
        return load.timing, cpu

    async def warm(gateway: GatewayHandle) -> None:
        client = Client(gateway.address, token, item_ids)
        await client.warm()
        await client.close()

    async def one_client(gateway: GatewayHandle) -> tuple[Timing, Timing]:
        client = Client(gateway.address, token, item_ids)
        hit = await closed_loop(client.cached, 1, seconds / 2, warmup_s=0.2)
        miss = await closed_loop(client.miss, 1, seconds / 2, warmup_s=0.2)
        await client.close()
        return hit, miss

    with gateway_process(repository, secret, max_batch) as gateway:
        asyncio.run(warm(gateway))
        batched, cpu = saturate(gateway)
        hit, miss = asyncio.run(one_client(gateway))
        rate = settings.load_fraction * batched.throughput
        at_load = run_load(ClientSource(gateway.address, token, item_ids), "cached", processes, seconds, rate=rate).timing
    with gateway_process(repository, secret, 1) as gateway:
        asyncio.run(warm(gateway))
        unbatched, _ = saturate(gateway)
    profile = repository.parent / "gateway-profile.json"
    with gateway_process(repository, secret, max_batch, profile_to=profile) as gateway:
        asyncio.run(warm(gateway))
        saturate(gateway)
    hotspots, profiled_s = hotspots_from(profile)
    return GatewayResults(
        n_items=settings.n_items, clients=clients, max_batch_size=max_batch, batched=batched, unbatched=unbatched,
        cache_hit=hit, cache_miss=miss, offered_rate=rate, load_fraction=settings.load_fraction, at_load=at_load,
        hotspots=hotspots, profiled_s=profiled_s, cpu=cpu, load_processes=processes,
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


def render(results: GatewayResults, raw_throughput: float) -> list[str]:
    g = results
    lines = [
        f"Gateway (gRPC, {g.n_items:,} items, in-process ONNX Runtime backend, private redis-server, auth on; "
        f"Recommend with a {HISTORY_LENGTH}-item history and k = {K}; the load generator, a multi-process "
        f"asyncio gRPC driver ({g.load_processes} processes), runs on the same {os.cpu_count()} cores): **{fmt(g.max_throughput, 0)} req/s** at {g.clients} concurrent clients = "
        f"**{g.max_throughput / raw_throughput:.0%}** of the raw scorer's {fmt(raw_throughput, 0)} rows/s.",
        "",
        f"### Micro-batching on vs off ({g.clients} concurrent clients, cached profiles)",
        "",
        "| micro-batcher | req/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
        f"| on (max_batch_size {g.max_batch_size}) | {fmt(g.batched.throughput, 0)} | {fmt(g.batched.p50_ms)} | "
        f"{fmt(g.batched.p99_ms)} |",
        f"| off (max_batch_size 1) | {fmt(g.unbatched.throughput, 0)} | {fmt(g.unbatched.p50_ms)} | {fmt(g.unbatched.p99_ms)} |",
        f"| ratio on / off | {g.batched.throughput / g.unbatched.throughput:.2f}× | | |",
        "",
        "### Profile cache hit vs miss (one client, sequential calls)",
        "",
        "| profile | calls | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
        f"| cached (Redis hit) | {g.cache_hit.calls} | {fmt(g.cache_hit.p50_ms, 2)} | {fmt(g.cache_hit.p99_ms, 2)} |",
        f"| fresh history (miss: apron_profile runs) | {g.cache_miss.calls} | {fmt(g.cache_miss.p50_ms, 2)} | "
        f"{fmt(g.cache_miss.p99_ms, 2)} |",
        f"| miss / hit (p50) | | {g.cache_miss.p50_ms / g.cache_hit.p50_ms:.2f}× | |",
        "",
        f"### Latency at {g.load_fraction:.0%} of the maximum throughput (open loop)",
        "",
        f"{fmt(g.offered_rate, 0)} req/s offered for {g.at_load.calls} calls: p50 {fmt(g.at_load.p50_ms)} ms, "
        f"p99 {fmt(g.at_load.p99_ms)} ms (latency from each request's scheduled start).",
        "",
        f"### Where the CPU goes ({g.clients} clients, cached profiles, {fmt(g.cpu.wall_s)} s)",
        "",
        "CPU seconds of each process during the micro-batched closed-loop run above (psutil for the gateway "
        "and its Redis, `time.process_time` in each load process), per request and as a share of all the machine's cores.",
        "",
        "| process | CPU ms per request | share of the machine's cores |",
        "| --- | ---: | ---: |",
        *[
            f"| {name} | {fmt(g.cpu.ms_per_request(seconds), 2)} | {seconds / (g.cpu.wall_s * (os.cpu_count() or 1)):.0%} |"
            for name, seconds in (
                ("gateway (event loop + ONNX Runtime threads)", g.cpu.gateway_s),
                ("its redis-server", g.cpu.redis_s),
                (f"load generator ({g.load_processes} processes, {g.clients} gRPC clients)", g.cpu.load_s),
            )
        ],
        f"| all three | {fmt(g.cpu.ms_per_request(g.cpu.gateway_s + g.cpu.redis_s + g.cpu.load_s), 2)} | {g.cpu.busy:.0%} |",
        "",
        f"### Where the gateway's time goes (pyinstrument, {g.clients} clients, {fmt(g.profiled_s)} s of the main thread "
        "after start-up)",
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
