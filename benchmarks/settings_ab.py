"""Whole gateways with settings that take turns: the A/B behind a default (`benchmarks/threads_bench.py`,
`benchmarks/redis_pipe_cost.py`).

Each gateway runs as `apron serve` does (`gateway_bench.gateway_process`, auth on, a private Redis)
with every benchmark user's profile cached, and is measured three ways: `clients` callers in a
closed loop (req/s, p50, p99, the gateway's CPU per call, its garbage collectors' pauses per call),
an open loop at `load_fraction` of that rate (p99 from each request's scheduled start, as
BENCHMARKS.md's target row, and the share of its time the event loop was busy), and one client with one call in flight (p50). The settings take turns `rounds` times, their order swapped each round,
so that load from other processes on the machine falls on each alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchmarks import request_path
from benchmarks.gateway_bench import Client, ClientSource, export_repository, gateway_process
from benchmarks.load import closed_loop, run_load
from benchmarks.timing import StandaloneRun


def add_arguments(parser: argparse.ArgumentParser, rounds_help: str) -> None:
    """The gateway A/B's options (`check_arguments` refuses the ones that measure nothing)."""
    parser.add_argument("--rounds", type=int, default=3, help=rounds_help)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=6.0, help="each closed-loop run (one client: half of it)")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--load-fraction", type=float, default=0.7, help="the open loop's rate, of the closed loop's")


def where_and_when(run: StandaloneRun, callers: str = "the load generator") -> str:
    """The footer's account of a gateway A/B's run: the command, how long, on what, beside what load."""
    return (
        f"`{run.command}`, {run.wall_s / 60:.1f} min on {os.cpu_count()} cores, {callers} on the same cores; "
        f"load average {run.load()}."
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, min_rounds: int = 1) -> None:
    if args.rounds < min_rounds or args.clients < 1 or args.seconds <= 0 or args.load_processes < 1:
        parser.error(f"--rounds must be at least {min_rounds}, --clients and --load-processes at least 1, --seconds above 0")
    if not 0 < args.load_fraction <= 1:
        parser.error(f"--load-fraction is a share of the closed loop's rate: above 0, at most 1 (got {args.load_fraction})")


@dataclass(frozen=True)
class Sample:
    """One gateway's figures."""

    rate: float  # req/s at `clients`
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # the gateway process's CPU per call at `clients` (its threads, not its Redis)
    open_rate: float  # req/s offered in the open loop (load_fraction of `rate`)
    open_p99_ms: float
    one_p50_ms: float  # one client, one call in flight
    gc_us: float  # the gateway's garbage-collection pauses per call at `clients` (apron_gc_pause_seconds)
    open_loop_busy: float  # share of the open loop's time its event-loop thread spent on the CPU
    # the open loop's calls answered and refused for load (RESOURCE_EXHAUSTED): a refused call is in
    # no latency, so open_p99_ms alone would let a gateway that sheds most calls meet a p99 target
    # (not in `FIELDS`: counts, not medians)
    open_answered: int
    refused: int


FIELDS = ("rate", "p50_ms", "p99_ms", "cpu_ms", "open_rate", "open_p99_ms", "one_p50_ms", "gc_us", "open_loop_busy")


def median(samples: list[Sample], field: str) -> float:
    return float(np.median([getattr(sample, field) for sample in samples]))


def header_cells(clients: int, load_fraction: float) -> tuple[str, str]:
    """The Markdown header cells of `median_cells`' columns, and their alignment row's."""
    return (
        f"{clients} clients req/s | p50 ms | p99 ms | gateway CPU ms per call | "
        f"{load_fraction:.0%} of that rate, open loop: req/s | its p99 ms | 1 client p50 ms | "
        f"gateway GC pauses µs per call ({clients} clients) | the gateway's event loop busy (open loop)",
        " | ".join("---:" for _ in FIELDS),
    )


class Row(NamedTuple):
    """One row of `settings_table`: its own leading cells, the samples whose medians follow them,
    and its trailing cells (for a table with `trailing` columns)."""

    cells: Sequence[str]
    samples: list[Sample]
    after: Sequence[str] = ()


def settings_table(leading: Sequence[str], rows: Iterable[Row], clients: int, load_fraction: float, trailing: Sequence[str] = ()) -> list[str]:
    """The A/B's Markdown table: the `leading` columns (a setting, its catalog...), the medians of
    each row's samples (`median_cells`), then the `trailing` columns."""
    header, align = header_cells(clients, load_fraction)
    rows = list(rows)
    lines = [
        "| " + " | ".join([*leading, header, *trailing]) + " |",
        "| " + " | ".join(["---:"] * len(leading) + [align] + ["---:"] * len(trailing)) + " |",
    ]
    lines += ["| " + " | ".join([*row.cells, median_cells(row.samples), *row.after]) + " |" for row in rows]
    return [*lines, "", refused_line(rows)]


def refused_line(rows: Sequence[Row]) -> str:
    """What the open loops' p99 leaves out: the calls each row's gateways refused for load, over
    all its rounds (a refused call is in no latency)."""
    counts = [(row, sum(s.refused for s in row.samples), sum(s.refused + s.open_answered for s in row.samples)) for row in rows]
    if not any(refused for _, refused, _ in counts):
        return "Calls refused for load in the open loops (in no p99 above): none."
    return "Calls refused for load in the open loops (in no p99 above): " + "; ".join(
        f"{' / '.join(row.cells)}: {refused:,} of {offered:,}" for row, refused, offered in counts
    ) + "."


def median_cells(samples: list[Sample]) -> str:
    """One setting's medians over its rounds, as Markdown cells in FIELDS' order."""
    rate, p50, p99, cpu, open_rate, open_p99, one, gc, busy = (median(samples, field) for field in FIELDS)
    return f"{rate:.0f} | {p50:.1f} | {p99:.1f} | {cpu:.2f} | {open_rate:.0f} | {open_p99:.1f} | {one:.2f} | {gc:.1f} | {busy:.0%}"


@dataclass(frozen=True)
class Target:
    """An exported synthetic model and what a client needs to call a gateway serving it."""

    repository: Path
    secret: Path
    token: str
    item_ids: list[str]

    @classmethod
    def export(cls, n_items: int, workdir: Path, int8: bool = False) -> Target:
        from export.metadata import metadata_path
        from serving import auth

        repository = export_repository(n_items, workdir, int8)
        item_ids = json.loads(metadata_path(repository).read_text())["item_ids"]
        secret = repository.parent / "jwt_secret"
        secret.write_text(secrets.token_hex(32))
        token = auth.mint_token(auth.read_secret_file(secret).key, "benchmark", auth.Role.SERVICE, ttl_s=3600)
        return cls(repository, secret, token, item_ids)


def measure(target: Target, settings: Mapping[str, Any], clients: int, seconds: float, processes: int, load_fraction: float) -> Sample:
    """One gateway with `settings` (further ServingConfig fields), measured the three ways."""
    with gateway_process(target.repository, target.secret, 32, more_settings=settings) as gateway:

        async def warm() -> None:
            client = Client(gateway.address, target.token, target.item_ids)
            await client.warm()
            await client.close()

        async def one_client() -> float:
            client = Client(gateway.address, target.token, target.item_ids)
            timing = await closed_loop(client.cached, 1, seconds / 2, warmup_s=0.3)
            await client.close()
            return timing.p50_ms

        asyncio.run(warm())
        source = ClientSource(gateway.address, target.token, target.item_ids)
        before = request_path.scrape(gateway.metrics_url)  # outside the CPU window: rendering costs the gateway
        cpu0, _ = gateway.cpu_s()
        load = run_load(source, "cached", processes, seconds, clients=clients)
        cpu1, _ = gateway.cpu_s()
        gc_s = request_path.total(request_path.delta(before, request_path.scrape(gateway.metrics_url)), "apron_gc_pause_seconds_sum")
        rate = load_fraction * load.timing.throughput
        loop0 = gateway.loop_cpu_s()
        offered = run_load(source, "cached", processes, seconds, rate=rate)
        open_loop = offered.timing
        # the loop's CPU per call (its warm-up's calls included, as in the CPU window) at the rate it
        # served: how much of the loop, which every call needs, that rate left
        busy = (gateway.loop_cpu_s() - loop0) / max(offered.calls_all, 1) * open_loop.throughput
        return Sample(
            load.timing.throughput, load.timing.p50_ms, load.timing.p99_ms, (cpu1 - cpu0) / load.calls_all * 1e3,
            rate, open_loop.p99_ms, asyncio.run(one_client()), gc_s / load.calls_all * 1e6, busy,
            open_loop.calls, offered.refused,
        )  # fmt: skip


def alternate(
    target: Target | Mapping[str, Target],
    settings: Mapping[str, Mapping[str, Any]],
    rounds: int,
    clients: int,
    seconds: float,
    processes: int,
    load_fraction: float,
) -> dict[str, list[Sample]]:
    """Each named setting's samples, one per round, the settings taking turns; `target` is served
    by every setting, or by name (two exports of one model, say)."""
    names = list(settings)
    targets = target if isinstance(target, Mapping) else dict.fromkeys(names, target)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            sample = measure(targets[name], settings[name], clients, seconds, processes, load_fraction)
            samples[name].append(sample)
            print(f"{name}, round {round_ + 1}: {sample}", file=sys.stderr, flush=True)
    return samples


@dataclass(frozen=True)
class IntSetting:
    """One integer ServingConfig field that `compare_main` measures: its default against `--compare`
    values."""

    config_field: str  # the ServingConfig field
    column: str  # the table's first column
    noun: str  # one value, in messages and the footer ("threshold")
    default: int
    compared: tuple[int, ...]  # what --compare names when not given
    labels: Mapping[int, str] = field(default_factory=dict)  # notable values besides the default ("Python's own")

    def label(self, value: int) -> str:
        return "the default" if value == self.default else self.labels.get(value, "compared")


def compare_main(setting: IntSetting, description: str, name: str, argv: list[str] | None) -> None:
    """A gateway A/B's command line for one integer setting: a synthetic model of `--items` served by
    gateways with the default and each `--compare` value, taking turns; the table is printed or
    written to `--output`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--items", type=int, default=1000, help="catalog size")
    parser.add_argument("--compare", type=int, nargs="*", default=list(setting.compared), help=f"{setting.noun}s beside the default")
    add_arguments(parser, f"gateways per {setting.noun} (alternating)")
    parser.add_argument("--workdir", default=f"benchmarks/out/{name}", help="the exported repository")
    parser.add_argument("--output", default="", help="write the Markdown table here (default: print it)")
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if any(value < 1 for value in args.compare):
        parser.error(f"--compare: each {setting.noun} must be at least 1")
    if not set(args.compare) - {setting.default}:
        parser.error(f"--compare: name a {setting.noun} other than the default {setting.default}: nothing to compare")
    run = StandaloneRun(name, argv)
    values = [setting.default, *(v for v in dict.fromkeys(args.compare) if v != setting.default)]
    named = {f"{setting.config_field} {v}": {setting.config_field: v} for v in values}
    samples = alternate(Target.export(args.items, Path(args.workdir)), named, args.rounds, args.clients, args.seconds, args.load_processes, args.load_fraction)
    rows = [Row([f"{value:,} ({setting.label(value)})"], samples[key]) for value, key in zip(values, named, strict=True)]
    lines = settings_table([setting.column], rows, args.clients, args.load_fraction)
    lines += [
        "",
        f"{args.items:,} items; medians of {args.rounds} rounds per {setting.noun}, the {setting.noun}s alternating; {where_and_when(run)}",
    ]
    run.publish(lines, args.output)
