"""`python -m benchmarks.loop_turn_cost`: what acting at once when nothing else is ready in the loop
turn saves a lone call (`serving/loop_turn.py`: the micro-batchers dispatch, the Redis pipe writes),
against deferring to the turn's end always, as before 2026-12-04 (`benchmarks/gateway_process.py`,
BENCH_ALWAYS_DEFER=1).

Whole gateways (`apron serve` in their own process, a synthetic `--items` model, auth on, a private
Redis) in the two states take turns `--rounds` times, the order reversed every other round; each
answers one client with one cached Recommend in flight for `--seconds`, and reports the client's p50,
the gateway's CPU per call, and its stages (`apron_stage_seconds`, mean µs per call).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import request_path
from benchmarks.gateway_bench import HISTORY_LENGTH, Client, gateway_process
from benchmarks.load import closed_loop
from benchmarks.request_path import ALWAYS_DEFER_ENV
from benchmarks.settings_ab import Target, where_and_when
from benchmarks.timing import StandaloneRun

AT_ONCE, DEFERRED = "at once when alone (default)", "always deferred"
STAGES = ("scorer_queue", "scorer_resume", "edits")  # what the two states change (edits: the read's write)


@dataclass(frozen=True)
class OneClient:
    p50_ms: float
    cpu_us: float  # the gateway process's CPU per call
    stages_us: dict[str, float]  # mean µs per call, by stage, and "sum"


@contextlib.contextmanager
def always_deferred(on: bool) -> Iterator[None]:
    """The gateway started in this block defers always (`on`) or acts at once when alone."""
    before = os.environ.get(ALWAYS_DEFER_ENV)
    os.environ[ALWAYS_DEFER_ENV] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[ALWAYS_DEFER_ENV]
        else:
            os.environ[ALWAYS_DEFER_ENV] = before


def one_client(target: Target, deferred: bool, seconds: float) -> OneClient:
    with always_deferred(deferred), gateway_process(target.repository, target.secret, 32) as gateway:

        async def measure() -> OneClient:
            client = Client(gateway.address, target.token, target.item_ids)
            await client.warm()
            before, (cpu0, _) = request_path.scrape(gateway.metrics_url), gateway.cpu_s()
            timing = await closed_loop(client.cached, 1, seconds, warmup_s=0.3)
            after, (cpu1, _) = request_path.scrape(gateway.metrics_url), gateway.cpu_s()
            await client.close()
            split = request_path.stage_split(request_path.delta(before, after), "Recommend")
            stages = {stage: split.per_call_us(stage) for stage in STAGES} | {"sum": split.total_us}
            return OneClient(timing.p50_ms, (cpu1 - cpu0) / split.calls * 1e6, stages)

        return asyncio.run(measure())


def render(results: dict[str, list[OneClient]], args: argparse.Namespace, run: StandaloneRun) -> list[str]:
    def median(state: str, value: str) -> float:
        rows = results[state]
        return float(np.median([getattr(r, value) if value in ("p50_ms", "cpu_us") else r.stages_us[value] for r in rows]))

    columns = ("p50_ms", "cpu_us", *STAGES, "sum")
    lines = [
        "| lone call | 1 client p50 ms | gateway CPU µs per call | " + " | ".join(f"`{s}` µs" for s in STAGES) + " | sum of the stages µs |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for state in (AT_ONCE, DEFERRED):
        cells = [f"{median(state, c):.2f}" if c == "p50_ms" else f"{median(state, c):,.0f}" for c in columns]
        lines.append(f"| {state} | " + " | ".join(cells) + " |")
    lower = sum(a.p50_ms < d.p50_ms for a, d in zip(results[AT_ONCE], results[DEFERRED], strict=True))
    lines += [
        "",
        f"Medians of {args.rounds} rounds; p50 lower at once in {lower} of {args.rounds} rounds; {args.items:,} items, "
        f"{args.seconds:g} s per gateway; " + where_and_when(run, "the one client"),
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000, help="the gateways' catalog size")
    parser.add_argument("--rounds", type=int, default=6, help="gateways per state (alternating)")
    parser.add_argument("--seconds", type=float, default=4.0, help="one client's calls per gateway")
    parser.add_argument("--workdir", default="benchmarks/out/loop_turn", help="the exported repository")
    parser.add_argument("--output", default="", help="write the Markdown table here (default: print it)")
    args = parser.parse_args(argv)
    if args.items <= HISTORY_LENGTH or args.rounds < 1 or args.seconds <= 0:
        parser.error(f"--items must be above the clients' history length ({HISTORY_LENGTH}), --rounds at least 1, --seconds above 0")
    run = StandaloneRun("loop_turn_cost", argv)
    target = Target.export(args.items, Path(args.workdir))
    results: dict[str, list[OneClient]] = {AT_ONCE: [], DEFERRED: []}
    for round_ in range(args.rounds):
        for state in (AT_ONCE, DEFERRED) if round_ % 2 == 0 else (DEFERRED, AT_ONCE):
            results[state].append(one_client(target, state == DEFERRED, args.seconds))
    run.publish(render(results, args, run), args.output)


if __name__ == "__main__":
    main()
