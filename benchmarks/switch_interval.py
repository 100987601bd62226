"""`python -m benchmarks.switch_interval`: the gateway's GIL switch interval (`--gil-switch-interval-ms`),
the default (Python's own 5 ms) against a tenth of it, through whole gateways; where the default
GIL_SWITCH_INTERVAL_MS comes from.

Why it may matter: the micro-batcher's worker thread hands each finished scorer run back to the
event loop, and to do so it takes the GIL; while the loop runs Python, the worker waits up to the
switch interval. That wait is part of the run as the batcher times it (`MicroBatcher._work`), so on
a small catalog a run in the worker thread can read longer than the `inline_below_s` that would run
it on the loop (serving/batching.py). Whether a shorter interval helps is what this measures (it
reports the gateways' figures, not the batcher's run times); serving/README.md has a run.

For each `--items` size a synthetic model is exported as `apron serve` loads it; gateways with each
interval take turns, `--rounds` times, the order swapped each round. Each gateway is measured as in
`benchmarks/threads_bench.py` (`settings_ab.measure`): a closed loop, an open loop at
`--load-fraction` of its rate, one client.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.settings_ab import (
    Row,
    Target,
    add_arguments,
    alternate,
    check_arguments,
    settings_table,
    where_and_when,
)
from benchmarks.timing import StandaloneRun
from serving.config import GIL_SWITCH_INTERVAL_MS

COMPARED_MS = 0.5  # a tenth of Python's own


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1000], help="catalog sizes")
    add_arguments(parser, "gateways per interval and size (alternating)")
    parser.add_argument("--workdir", default="benchmarks/out/switch_interval", help="the exported repositories")
    parser.add_argument("--output", default="", help="write the Markdown table here (default: print it)")
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    run = StandaloneRun("switch_interval", argv)
    rows = []
    for n_items in args.items:
        target = Target.export(n_items, Path(args.workdir))
        intervals = {GIL_SWITCH_INTERVAL_MS: "the default", COMPARED_MS: "compared"}
        named = {f"{n_items} items, {ms:g} ms": {"gil_switch_interval_ms": ms} for ms in intervals}
        samples = alternate(target, named, args.rounds, args.clients, args.seconds, args.load_processes, args.load_fraction)
        for (ms, what), name in zip(intervals.items(), named, strict=True):
            rows.append(Row([f"{n_items:,}", f"{ms:g} ({what})"], samples[name]))
    lines = settings_table(["items", "GIL switch interval ms"], rows, args.clients, args.load_fraction)
    lines += ["", f"Medians of {args.rounds} rounds per interval, the intervals alternating; {where_and_when(run)}"]
    run.publish(lines, args.output)


if __name__ == "__main__":
    main()
