"""`python -m benchmarks.redis_pipe_cost`: what a user's version read (every cached Recommend's one
Redis command) costs on redis-py and on the gateway's own pipelined connection
(serving/redis_pipe.py), and what that does for whole gateways.

1. Reads alone, in this process against one private redis-server, through the store
   (`RedisStore.get_version`) with and without its pipe: `--reads` reads one at a time, then the
   same number `--concurrency` at a time (without the pipe, concurrent reads share MGETs:
   `VersionReads`). The two stores take turns `--blocks` times, the order swapped each block. CPU
   is this process's (the event loop's) per read; Redis's own CPU is not in it.
2. Gateways at `--items` items with `--redis-pipe` on and off taking turns
   (benchmarks/settings_ab.py): req/s, p99 and CPU per call at `--clients`, p99 at 70 % of that
   rate in an open loop, one client's p50.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np

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


async def _reads(store: object, users: list[str], reads: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per read of `reads` version reads, `concurrency` at a time."""
    cpu, wall = time.process_time(), time.perf_counter()
    if concurrency == 1:  # awaited in place: gather would wrap each read in a task of its own
        for i in range(reads):
            await store.get_version(users[i % len(users)])  # type: ignore[attr-defined]
        return (time.process_time() - cpu) / reads * 1e6, (time.perf_counter() - wall) / reads * 1e6
    for start in range(0, reads, concurrency):
        batch = users[start % len(users) : start % len(users) + concurrency]
        await asyncio.gather(*(store.get_version(user) for user in batch))  # type: ignore[attr-defined]
    return (time.process_time() - cpu) / reads * 1e6, (time.perf_counter() - wall) / reads * 1e6


async def reads_alone(reads: int, concurrency: int, blocks: int) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """Per store ("redis-py", "pipe") and concurrency: one (CPU µs, wall µs) per block."""
    from redis.asyncio import Redis

    from serving.cache import RedisStore
    from serving.redis_process import RedisProcess

    with RedisProcess() as server:
        client = Redis.from_url(server.url, socket_timeout=None)
        stores = {"redis-py": RedisStore(client, 600, timeout_s=5.0, pipelined=False), "pipe": RedisStore(client, 600, timeout_s=5.0)}
        await stores["pipe"].pipe.connect()  # type: ignore[union-attr]
        users = [f"bench-{i}" for i in range(max(concurrency, 64))]
        for user in users:
            await stores["pipe"].store_edits(user, {}, reset=True)  # each has a version
        results: dict[str, dict[int, list[tuple[float, float]]]] = {name: {1: [], concurrency: []} for name in stores}
        for name in stores:  # warm both (connections, caches)
            await _reads(stores[name], users, min(reads, 500), concurrency)
        names = list(stores)
        for block in range(blocks):
            for name in names if block % 2 == 0 else names[::-1]:
                for width in (1, concurrency):
                    results[name][width].append(await _reads(stores[name], users, reads, width))
        await stores["pipe"].aclose()
    return results


def render(alone: dict[str, dict[int, list[tuple[float, float]]]], gateways: dict[str, list], args: argparse.Namespace, run: StandaloneRun) -> list[str]:
    widths = sorted(next(iter(alone.values())))
    lines = [
        "| version read | " + " | ".join(f"{w} at a time: CPU µs per read | wall µs per read" for w in widths) + " |",
        "| --- | " + " | ".join("---: | ---:" for _ in widths) + " |",
    ]
    for name, by_width in alone.items():
        cells = []
        for width in widths:
            cpu, wall = np.median(np.array(by_width[width]), axis=0)
            cells.append(f"{cpu:.1f} | {wall:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *settings_table(["`--redis-pipe`"], [Row([name], samples) for name, samples in gateways.items()], args.clients, args.load_fraction)]
    lines += [
        "",
        f"Medians of {args.blocks} blocks (reads) and {args.rounds} rounds (gateways, {args.items:,} items), the settings "
        "alternating; " + where_and_when(run),
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=4000, help="version reads per block and store")
    parser.add_argument("--concurrency", type=int, default=32, help="reads at a time in the second measure")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--items", type=int, default=1000, help="the gateways' catalog size")
    add_arguments(parser, "gateways per setting (0: reads alone only)")
    parser.add_argument("--workdir", default="benchmarks/out/redis_pipe", help="the exported repository")
    parser.add_argument("--output", default="", help="write the Markdown tables here (default: print them)")
    args = parser.parse_args(argv)
    if min(args.reads, args.concurrency, args.blocks) < 1:
        parser.error("--reads, --concurrency and --blocks must be at least 1")
    check_arguments(parser, args, min_rounds=0)
    run = StandaloneRun("redis_pipe_cost", argv)
    alone = asyncio.run(reads_alone(args.reads, args.concurrency, args.blocks))
    gateways = {}
    if args.rounds:
        target = Target.export(args.items, Path(args.workdir))
        settings = {"on (default)": {"redis_pipe": "true"}, "off (redis-py)": {"redis_pipe": "false"}}
        gateways = alternate(target, settings, args.rounds, args.clients, args.seconds, args.load_processes, args.load_fraction)
    run.publish(render(alone, gateways, args, run), args.output)


if __name__ == "__main__":
    main()
