"""`python -m benchmarks.gc_threshold`: the gateway's youngest-generation garbage-collection threshold
(`--gc-gen0-threshold`), the default against Python's own 700 (and any `--compare` value), through
whole gateways; where the default GC_GEN0_THRESHOLD comes from.

Why it may matter: every call's objects (its task, its futures, its messages) are young while the
call is in flight; at Python's 700 allocations the collector runs every few calls, finds the objects
of every call in flight alive and moves them into the older generations, whose collections scan
them again (BENCHMARKS.md's tail evidence counts the gateway's pauses). The table's last column is
what that costs: the gateway's collections per call, from its own `apron_gc_pause_seconds`.

A synthetic 1,000-item model is exported as `apron serve` loads it; gateways with each threshold
take turns, `--rounds` times, the order swapped each round, each measured as in
`benchmarks/switch_interval.py` (`settings_ab.measure`).
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
from serving.config import GC_GEN0_THRESHOLD

PYTHONS_OWN = 700


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000, help="catalog size")
    parser.add_argument("--compare", type=int, nargs="*", default=[PYTHONS_OWN], help="thresholds beside the default")
    add_arguments(parser, "gateways per threshold (alternating)")
    parser.add_argument("--workdir", default="benchmarks/out/gc_threshold", help="the exported repository")
    parser.add_argument("--output", default="", help="write the Markdown table here (default: print it)")
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if any(threshold < 1 for threshold in args.compare):
        parser.error("--compare: each threshold must be at least 1")
    if not set(args.compare) - {GC_GEN0_THRESHOLD}:
        parser.error(f"--compare: name a threshold other than the default {GC_GEN0_THRESHOLD}: nothing to compare")
    run = StandaloneRun("gc_threshold", argv)
    thresholds = [GC_GEN0_THRESHOLD, *(t for t in dict.fromkeys(args.compare) if t != GC_GEN0_THRESHOLD)]
    named = {f"gen0 threshold {t}": {"gc_gen0_threshold": t} for t in thresholds}
    samples = alternate(Target.export(args.items, Path(args.workdir)), named, args.rounds, args.clients, args.seconds, args.load_processes, args.load_fraction)

    def what(threshold: int) -> str:
        return "the default" if threshold == GC_GEN0_THRESHOLD else "Python's own" if threshold == PYTHONS_OWN else "compared"

    rows = [Row([f"{threshold:,} ({what(threshold)})"], samples[name]) for threshold, name in zip(thresholds, named, strict=True)]
    lines = settings_table(["gen0 threshold"], rows, args.clients, args.load_fraction)
    lines += ["", f"{args.items:,} items; medians of {args.rounds} rounds per threshold, the thresholds alternating; {where_and_when(run)}"]
    run.publish(lines, args.output)


if __name__ == "__main__":
    main()
