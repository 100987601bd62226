"""`python -m benchmarks.threads_bench`: the scorer's ONNX Runtime threads through the whole
gateway, the cores less one against every core, at each catalog size; where
`serving/backends/base.py`'s WIDE_SCORER_BYTES (what `--ort-threads 0` picks) comes from.

For each `--items` size a synthetic model is exported as `apron serve` loads it; then gateways with
`--ort-threads` the cores less one and every core take turns, `--rounds` times, the order swapped
each round so that load from other processes falls on both alike. Each gateway: every benchmark
user's profile cached, `--clients` callers in a closed loop (req/s, p50, p99, the gateway's CPU per
call), then an open loop at `--load-fraction` of that closed loop's rate (p99 from each request's
scheduled start, as BENCHMARKS.md's target row), then one client, one call in flight (p50). The
table gives each setting's median over its rounds, and what `--ort-threads 0` picks at that size. On a machine of many cores the two settings
differ by one thread of many; on 2 cores by half the machine. `--int8` exports the models with
`apron export --int8`: a graph a quarter the size for the same catalog (export/quantize.py).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
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
from export import contract
from serving.backends.base import WIDE_SCORER_BYTES, default_threads, scorer_threads
from serving.backends.onnxruntime import onnx_path
from serving.catalog import ServedModel


@dataclass(frozen=True)
class SizeResult:
    n_items: int
    scorer_mib: float
    auto: int  # what --ort-threads 0 gives this scorer
    samples: dict[int, list[Sample]]  # threads -> one per round
    int8: bool = False


def measure_size(
    n_items: int, rounds: int, clients: int, seconds: float, processes: int, workdir: Path, load_fraction: float, int8: bool = False
) -> SizeResult:
    target = Target.export(n_items, workdir, int8)
    scorer_path = onnx_path(target.repository, contract.SCORER_MODEL, ServedModel.load(target.repository).version)
    size = scorer_path.stat().st_size
    settings = sorted({default_threads(), len(os.sched_getaffinity(0))})  # one setting on a 1-core machine
    named = {f"{n_items} items, {threads} thread(s)": {"ort_threads": threads} for threads in settings}
    by_name = alternate(target, named, rounds, clients, seconds, processes, load_fraction)
    samples = {threads: by_name[name] for threads, name in zip(settings, named, strict=True)}
    return SizeResult(n_items, size / 2**20, scorer_threads(size), samples, int8)


def render(results: list[SizeResult], clients: int, rounds: int, load_fraction: float, run: StandaloneRun) -> list[str]:
    rows = [
        Row(
            [f"{result.n_items:,}" + (" (int8)" if result.int8 else ""), f"{result.scorer_mib:.1f}", str(threads)],
            samples,
            ["this" if threads == result.auto else ""],
        )
        for result in results
        for threads, samples in result.samples.items()
    ]
    lines = settings_table(
        ["items", "scorer graph MiB", "ONNX Runtime threads"], rows, clients, load_fraction, trailing=["`--ort-threads 0` picks"]
    )
    lines += [
        "",
        f"Medians of {rounds} rounds per setting, the settings alternating; {where_and_when(run)} `--ort-threads 0` gives a "
        f"scorer graph of {WIDE_SCORER_BYTES / 2**20:g} MiB or more every core (serving/backends/base.py WIDE_SCORER_BYTES).",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1000, 10000, 41000], help="catalog sizes")
    add_arguments(parser, "gateways per setting and size (alternating)")
    parser.add_argument("--int8", action="store_true", help="export the models with `apron export --int8`")
    parser.add_argument("--workdir", default="benchmarks/out/threads", help="the exported repositories")
    parser.add_argument("--output", default="", help="write the Markdown table here (default: print it)")
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    run = StandaloneRun("threads_bench", argv)
    results = [
        measure_size(n, args.rounds, args.clients, args.seconds, args.load_processes, Path(args.workdir), args.load_fraction, args.int8)
        for n in args.items
    ]
    run.publish(render(results, args.clients, args.rounds, args.load_fraction, run), args.output)


if __name__ == "__main__":
    main()
