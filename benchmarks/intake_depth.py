"""`python -m benchmarks.intake_depth`: how many requests for each method's next call wait in grpc
core (`--grpc-intake`, serving/intake.py), through the whole gateway; where its default comes from.

A synthetic model of `--items` items is exported as `apron serve` loads it; then gateways with each
`--depths` value take turns, `--rounds` times, the order reversed every other round so that load
from other processes falls on each alike. Each gateway: every benchmark user's profile cached,
`--clients` callers in a closed loop (req/s, p50, p99, the gateway's CPU per call), an open loop at
`--load-fraction` of that closed loop's rate (p99 from each request's scheduled start), one client
with one call in flight (p50). Depth 1 is grpc.aio's own intake alone. The open loop runs at a share
of each setting's own rate, as BENCHMARKS.md's p99 target is, so a setting that serves more is
offered more there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.settings_ab import (
    Row,
    Sample,
    Target,
    add_arguments,
    alternate,
    check_arguments,
    settings_table,
    where_and_when,
)
from benchmarks.timing import StandaloneRun
from serving.config import ServingConfig
from serving.intake import unsupported


def render(samples: dict[int, list[Sample]], args: argparse.Namespace, run: StandaloneRun) -> list[str]:
    default = ServingConfig().grpc_intake

    def name(depth: int) -> str:
        return f"{depth} (default)" if depth == default else f"{depth} (grpc.aio's own)" if depth == 1 else str(depth)

    rows = [Row([name(depth)], by_round) for depth, by_round in samples.items()]
    lines = settings_table(["`--grpc-intake`"], rows, args.clients, args.load_fraction)
    lines += [
        "",
        f"Medians of {args.rounds} rounds per setting, the settings alternating; {args.items:,} items; "
        + where_and_when(run),
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000, help="the gateways' catalog size")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="--grpc-intake values")
    add_arguments(parser, "gateways per setting (alternating)")
    parser.add_argument("--workdir", default="benchmarks/out/intake", help="the exported repository")
    parser.add_argument("--output", default="", help="write the Markdown table here (default: print it)")
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if min(args.depths) < 1 or len(set(args.depths)) != len(args.depths):
        parser.error("--depths are distinct --grpc-intake values, each at least 1")
    reason = unsupported()
    if reason and max(args.depths) > 1:  # every setting would measure grpc.aio's own intake
        parser.error(f"the deeper intake does not run here ({reason}): nothing to compare")
    run = StandaloneRun("intake_depth", argv)
    target = Target.export(args.items, Path(args.workdir))
    named = {f"--grpc-intake {depth}": {"grpc_intake": depth} for depth in args.depths}
    by_name = alternate(target, named, args.rounds, args.clients, args.seconds, args.load_processes, args.load_fraction)
    samples = {depth: by_name[name] for depth, name in zip(args.depths, named, strict=True)}
    run.publish(render(samples, args, run), args.output)


if __name__ == "__main__":
    main()
