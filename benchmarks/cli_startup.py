"""How long `apron --help` takes, as a person at a terminal waits for it: a fresh interpreter each
time, median of N runs (the first run warms the file cache and is not counted).

    python -m benchmarks.cli_startup [--runs 5] [--root DIR]    # DIR: another checkout, to compare
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_help(root: Path, runs: int, args: tuple[str, ...] = ("--help",)) -> list[float]:
    """Wall seconds of `python cli.py ARGS` in `root`, `runs` times after one warm-up."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    seconds = []
    for i in range(runs + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(root / "cli.py"), *args], cwd=root, env=env, capture_output=True, check=True)
        if i:
            seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose cli.py runs (default: this one)")
    args = parser.parse_args(argv)
    seconds = time_help(args.root.resolve(), args.runs)
    load = os.getloadavg()[0]
    print(f"apron --help ({args.root}): median {statistics.median(seconds):.2f} s, min {min(seconds):.2f} s over {args.runs} runs (load average {load:.1f})")


if __name__ == "__main__":
    main()
