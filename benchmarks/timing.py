"""Timers and summaries shared by every benchmark: one way to time a call and to report it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.files import atomic_write_text


@dataclass
class StandaloneRun:
    """One run of a standalone benchmark command (`python -m benchmarks.<module>`), started at
    construction: its command line, its wall time and the machine's load around it, for the footer
    under its table; `publish` writes the table where `--output` says and prints it."""

    module: str
    argv: list[str] | None = None  # main()'s argv (None: the process's own)
    started: float = field(default_factory=time.monotonic)
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])

    @property
    def command(self) -> str:
        return f"python -m benchmarks.{self.module} " + " ".join(sys.argv[1:] if self.argv is None else self.argv)

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.started

    def load(self) -> str:
        """Every process's load on the machine (1 min), when the run started and now."""
        return f"{self.load_before:.1f} -> {os.getloadavg()[0]:.1f} (1 min)"

    def publish(self, lines: list[str], output: str) -> None:
        text = "\n".join(lines) + "\n"
        if output:
            atomic_write_text(Path(output), text)
        print(text)


@dataclass(frozen=True)
class Timing:
    """Latencies of repeated calls that each handled `batch` requests."""

    latencies_s: np.ndarray  # (calls,)
    batch: int
    wall_s: float  # wall time of the whole run (calls may overlap when concurrent)
    cpu_s: float | None = None  # this process's CPU over the run, all its threads (`time_calls`: the model's threads)

    @property
    def calls(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        """Requests (rows) per second over the run's wall time."""
        return self.calls * self.batch / self.wall_s

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1e3)

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)


def time_calls(
    fn: Callable[[], object],
    batch: int,
    min_seconds: float,
    min_calls: int = 5,
    warmup: int = 2,
    between: Callable[[], object] | None = None,
) -> Timing:
    """Call `fn` back to back until both `min_seconds` and `min_calls` are reached (after warm-up);
    with `between`, that is called (untimed) before each timed call."""
    for _ in range(warmup):
        fn()
    latencies: list[float] = []
    start, cpu = time.perf_counter(), time.process_time()
    while True:
        if between is not None:
            between()
        t0 = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - t0)
        if len(latencies) >= min_calls and time.perf_counter() - start >= min_seconds:
            break
    # with `between`, its CPU is counted too: only the runs without it are CPU per call
    return Timing(np.asarray(latencies), batch, time.perf_counter() - start, None if between else time.process_time() - cpu)


def time_alternating(
    fns: Mapping[Hashable, Callable[[], object]],
    batch: int,
    min_seconds: float,
    min_calls: int = 5,
    warmup: int = 2,
    between: Callable[[], object] | None = None,
) -> dict[Hashable, Timing]:
    """Call each of `fns` once per round, round after round, until `min_seconds` (all of them
    together) and `min_calls` rounds are reached: a ratio of two of them is then measured under
    the same load from other processes, call by call. Each Timing's wall time is its own calls'.
    `between` (e.g. a CacheEvictor) runs untimed before each measured call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    latencies: dict[Hashable, list[float]] = {key: [] for key in fns}
    start = time.perf_counter()
    while True:
        for key, fn in fns.items():
            if between is not None:
                between()
            t0 = time.perf_counter()
            fn()
            latencies[key].append(time.perf_counter() - t0)
        if len(latencies[next(iter(fns))]) >= min_calls and time.perf_counter() - start >= min_seconds:
            break
    return {key: Timing(np.asarray(values), batch, float(np.sum(values))) for key, values in latencies.items()}


# ----------------------------------------------------------------------------- report cells


def status(ok: bool | None) -> str:
    """A target's status in the reports' Targets tables (None: not measured)."""
    return "not measured" if ok is None else ("met" if ok else "**missed**")


def target_row(name: str, measured: str, ok: bool | None) -> str:
    """One row of a Targets table (| target | measured | status |)."""
    return f"| {name} | {measured} | {status(ok)} |"


CORE_SHARES_HEADER = "cores idle | gateway processes | load generator | other processes"


def other_share(idle: float, gateway: float, load: float) -> float:
    """The cores' share that went to other processes: what idle, the gateway and the load generator leave."""
    return 1.0 - idle - gateway - load


def core_shares(idle: float, gateway: float, load: float) -> str:
    """Where all the machine's cores went during a run, as CORE_SHARES_HEADER's cells."""
    return f"{idle:.0%} | {gateway:.0%} | {load:.0%} | {other_share(idle, gateway, load):.0%}"


EVICT_BYTES = 64 * 2**20  # more than this class of machine's last-level cache


class CacheEvictor:
    """Reads `nbytes` of its own memory when called: what the caches held before is gone, as it is
    for a model run that follows a server's other work (gRPC, Redis, Python) rather than another run."""

    def __init__(self, nbytes: int = EVICT_BYTES):
        self.buffer = np.ones(nbytes // 8)

    def __call__(self) -> float:
        return float(self.buffer.sum())
