"""Scale-out on one machine: `apron serve --workers N` under the closed-loop load of `make benchmarks`
(cached Recommend, 64 clients), with 1 worker and with one worker per core, and where the cores go.

The cores are accounted for over each measured window (`benchmarks.load.ProcessLoad.window`):
- idle: /proc/stat's idle + iowait of all cores (every process on the machine counts, other
  sessions' too: the dev machine is shared);
- the gateway: CPU time of its process tree (the parent, the workers, their redis-server);
- the load generator: its processes' own CPU time (they run on the same cores);
- other: the rest (other processes on the machine, this benchmark's own process and sampler).

Each load process opens one gRPC connection per client it drives: with SO_REUSEPORT the kernel
hands connections, not calls, to the workers, so a few connections would leave some workers idle.

`benchmarks.run` writes these rows into BENCHMARKS.md; `benchmarks.gpu_check` measures the same way
on the GPU machine (torch backend, workers = cores).

    python -m benchmarks.workers_bench --seconds 8     # the section alone, printed as Markdown
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.gateway_bench import Client, ClientSource, GatewayHandle, export_repository, gateway_process
from benchmarks.load import closed_loop, run_load
from benchmarks.timing import CORE_SHARES_HEADER, Timing, core_shares, other_share

PROC_STAT = Path("/proc/stat")
SAMPLE_INTERVAL_S = 0.1
TARGET_IDLE = 0.10  # issue 19: at saturation with 64 clients, less than 10 % of the cores idle
N_ITEMS = 1_000


def machine_cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_ticks(proc_stat: str) -> tuple[int, int]:
    """(idle, total) clock ticks of all cores from /proc/stat's `cpu` line. Idle counts idle and
    iowait; total adds user, nice, system, irq, softirq and steal (guest time is inside user)."""
    name, *values = proc_stat.split("\n", 1)[0].split()
    if name != "cpu":
        raise ValueError(f"/proc/stat starts with {name!r}, not the all-cores 'cpu' line")
    user, nice, system, idle, iowait, irq, softirq, steal = ([int(v) for v in values] + [0] * 8)[:8]
    return idle + iowait, user + nice + system + idle + iowait + irq + softirq + steal


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    idle_ticks: int
    total_ticks: int
    gateway_s: float  # CPU seconds of the gateway's process tree so far


def window_shares(samples: Sequence[Sample], start: float, end: float, cores: int) -> tuple[float, float]:
    """(idle share, gateway share of all cores) between the last sample at or before `start` and the
    first at or after `end` (the window widened by at most one sampling interval at each end)."""
    times = [s.at for s in samples]
    first = samples[max(0, bisect.bisect_right(times, start) - 1)]
    last = samples[min(len(samples) - 1, bisect.bisect_left(times, end))]
    if last.at <= first.at or last.total_ticks <= first.total_ticks:
        raise ValueError("the CPU samples do not span the measured window")
    idle = (last.idle_ticks - first.idle_ticks) / (last.total_ticks - first.total_ticks)
    gateway = (last.gateway_s - first.gateway_s) / ((last.at - first.at) * cores)
    return idle, gateway


class CpuSampler:
    """/proc/stat and the gateway's CPU time every SAMPLE_INTERVAL_S in a thread, while the block runs."""

    def __init__(self, gateway: GatewayHandle):
        self.gateway = gateway
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def sample(self) -> None:
        gateway, children = self.gateway.cpu_s()
        idle, total = cpu_ticks(PROC_STAT.read_text())
        self.samples.append(Sample(time.monotonic(), idle, total, gateway + children))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def __enter__(self) -> CpuSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


@dataclass(frozen=True)
class Saturation:
    """One closed-loop run at full load: throughput, latency and every share of the machine's cores."""

    workers: int
    clients: int
    connections: int
    load_processes: int
    throughput: float  # req/s
    p50_ms: float
    p99_ms: float
    calls: int
    wall_s: float
    cores: int
    idle: float  # share of all cores idle (/proc/stat)
    gateway: float  # share of all cores used by the gateway's processes
    load: float  # share of all cores used by the load generator (the rest: `timing.other_share`)


@dataclass
class Gateway:
    """A started gateway and what a load process needs to call it."""

    handle: GatewayHandle
    token: str
    item_ids: list[str]

    def source(self, channels: int) -> ClientSource:
        return ClientSource(self.handle.address, self.token, self.item_ids, channels=channels)

    async def _warm(self) -> None:
        client = Client(self.handle.address, self.token, self.item_ids)
        await client.warm()
        await client.close()

    async def _one_client(self, seconds: float) -> Timing:
        client = Client(self.handle.address, self.token, self.item_ids)
        timing = await closed_loop(client.cached, 1, seconds, warmup_s=0.2)
        await client.close()
        return timing

    def warm(self) -> None:
        """Every benchmark user's profile into the gateway's Redis (shared by its workers)."""
        asyncio.run(self._warm())

    def one_client(self, seconds: float) -> Timing:
        """One client, cached profiles, sequential calls."""
        return asyncio.run(self._one_client(seconds))

    def saturate(self, clients: int, seconds: float, processes: int, workers: int) -> Saturation:
        """`clients` closed-loop callers from `processes` load processes, one connection per client."""
        channels = math.ceil(clients / processes)
        with CpuSampler(self.handle) as sampler:
            load = run_load(self.source(channels), "cached", processes, seconds, clients=clients)
        cores = machine_cores()
        idle, gateway = window_shares(sampler.samples, *load.window, cores)
        timing = load.timing
        return Saturation(
            workers=workers, clients=clients, connections=channels * load.processes, load_processes=load.processes,
            throughput=timing.throughput, p50_ms=timing.p50_ms, p99_ms=timing.p99_ms, calls=timing.calls,
            wall_s=timing.wall_s, cores=cores, idle=idle, gateway=gateway, load=load.cpu_s / (timing.wall_s * cores),
        )  # fmt: skip


@contextmanager
def serve(repository: Path, settings: Mapping[str, object]) -> Iterator[Gateway]:
    """`repository` served by a gateway process (`settings`: more ServingConfig fields, e.g.
    workers, backend, device) with auth on and its profiles cached."""
    from export.metadata import metadata_path
    from serving import auth
    from serving.config import ServingConfig

    secret = repository.parent / "jwt_secret"
    secret.write_text(secrets.token_hex(32))
    key = auth.read_secret_file(secret).key
    token = auth.mint_token(key, "benchmark", auth.Role.SERVICE, ttl_s=3600)
    item_ids = json.loads(metadata_path(repository).read_text())["item_ids"]
    max_batch = ServingConfig().max_batch_size
    with gateway_process(repository, secret, max_batch, more_settings=settings) as handle:
        gateway = Gateway(handle, token, item_ids)
        gateway.warm()
        yield gateway


# ----------------------------------------------------------------------------- `make benchmarks`'s rows


@dataclass(frozen=True)
class Settings:
    workdir: Path
    seconds: float
    clients: int = 64
    load_processes: int = 2
    n_items: int = N_ITEMS
    workers: tuple[int, ...] = field(default_factory=lambda: tuple(sorted({1, machine_cores()})))


@dataclass(frozen=True)
class WorkersResults:
    n_items: int
    rows: list[Saturation]


def run(settings: Settings) -> WorkersResults:
    """The ONNX Runtime backend (the default) at `n_items`, once per worker count."""
    repository = export_repository(settings.n_items, settings.workdir)
    rows = []
    for workers in settings.workers:
        with serve(repository, {"workers": workers}) as gateway:
            rows.append(gateway.saturate(settings.clients, settings.seconds, settings.load_processes, workers))
    return WorkersResults(settings.n_items, rows)


def render(results: WorkersResults) -> list[str]:
    base = results.rows[0]
    lines = [
        f"## Scale-out: `apron serve --workers N` ({results.n_items:,} items)",
        "",
        f"Closed loop, cached Recommend (k = 10, 50-item histories), {base.clients} clients from {base.load_processes} "
        "load processes, one gRPC connection per client, in-process ONNX Runtime backend (its threads split "
        f"between the workers), one private redis-server. Gateway and load generator share the machine's "
        f"{base.cores} cores, so the load generator's share is part of what saturation costs. Shares of all the "
        "cores over each measured window: idle from /proc/stat (every process on the machine counts: it was "
        "shared with other sessions), the gateway's process tree (parent, workers, Redis) and the load "
        "processes from their own CPU time; other = what remains (other processes, this benchmark's own). Where "
        "other processes take a share, they run on cores the gateway left idle or took from it: the idle share "
        "is then lower, and the throughput lower, than on a machine of its own.",
        "",
        f"| workers | req/s | p50 ms | p99 ms | {CORE_SHARES_HEADER} |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {r.workers} | {r.throughput:,.0f} | {r.p50_ms:,.1f} | {r.p99_ms:,.1f} | {core_shares(r.idle, r.gateway, r.load)} |"
            for r in results.rows
        ],
    ]
    if len(results.rows) > 1:
        top = results.rows[-1]
        lines.append(f"| ratio {top.workers} / {base.workers} | {top.throughput / base.throughput:.2f}× | | | | | | |")
    return [*lines, ""]


def targets(results: WorkersResults | None, reason: str) -> list[tuple[str, str, bool | None]]:
    """Issue 19's scale-out row: at saturation, one worker per core, < 10 % of the cores idle."""
    cores = machine_cores()
    name = (f"at saturation with 64 clients, `--workers {cores}` (one per core): < {TARGET_IDLE:.0%} of the cores idle "
            "(idle or taken by other processes: what the gateway and its load generator left unused)")  # fmt: skip
    row = next((r for r in results.rows if r.workers == cores), None) if results else None
    if row is None:
        return [(name, f"not measured: {reason or f'no run with {cores} workers'}", None)]
    other = other_share(row.idle, row.gateway, row.load)
    # /proc/stat's idle is lowered by whatever else runs on the shared machine: cores another session
    # took are cores the gateway did not use, so they count as idle for the target
    unused = row.idle + other
    measured = (f"{unused:.0%} unused at {row.throughput:,.0f} req/s, {row.clients} clients: idle {row.idle:.0%} + other "
                f"processes on the shared machine {other:.0%} (gateway {row.gateway:.0%}, load generator {row.load:.0%})")  # fmt: skip
    return [(name, measured, unused < TARGET_IDLE)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="time per load phase")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--items", type=int, default=N_ITEMS)
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, machine_cores()}))
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args(argv)
    settings = Settings(args.workdir, args.seconds, args.clients, args.load_processes, args.items, tuple(args.workers))
    print("\n".join(render(run(settings))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
