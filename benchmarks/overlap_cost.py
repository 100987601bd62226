"""What overlapping the Redis version read with the scorer saves a cached Recommend, measured in one
run: the servicer's `_score_while_confirming` (the kept copy scored while Redis confirms its version)
against the read first, then the scorer (`ProfileCache.held` answering None, as for a copy it does
not keep), block by block in one gateway (`benchmarks/inprocess_gateway.py`: one call at a time,
client and gateway on one event loop, a synthetic 1,000-item model, a private redis-server).

    python -m benchmarks.overlap_cost [--calls 2000] [--blocks 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.inprocess_gateway import alternate, comparison

SEQUENTIAL, OVERLAPPED = "read, then score", "overlapped"


def sequential(server: object) -> Callable[[], None]:
    """The served model's profile cache offers no kept copy to score ahead (the read comes first)."""
    cache = server.models.primary.profiles  # type: ignore[attr-defined]
    cache.held = lambda user_id, digest: None

    def restore() -> None:
        del cache.held  # the class's method again

    return restore


def overlapped(server: object) -> Callable[[], None]:
    return lambda: None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="gateway calls per state (default 2000)")
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks per state (default 10)")
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.calls < 1:
        parser.error("--calls and --blocks must be at least 1")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as workdir:
        states = {SEQUENTIAL: sequential, OVERLAPPED: overlapped}
        result = asyncio.run(alternate(args.calls, args.blocks, Path(workdir), states))
    print("\n".join(comparison(result, SEQUENTIAL, OVERLAPPED, "cached Recommend")))
    differences = np.array(result[OVERLAPPED][2]) - np.array(result[SEQUENTIAL][2])
    print(
        f"block p50, {OVERLAPPED} minus {SEQUENTIAL}: median {np.median(differences) * 1e6:+.0f} µs; "
        f"{OVERLAPPED} lower in {int((differences < 0).sum())} of {len(differences)} block pairs"
    )


if __name__ == "__main__":
    main()
