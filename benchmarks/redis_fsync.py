"""`python -m benchmarks.redis_fsync`: what the private redis-server's fsync policy costs
(`serving/redis_process.py`, APPENDFSYNC): an edit's write and a version read, one client, against
private servers with AOF under `appendfsync always` (the gateway's) and `everysec` (Redis' default,
which can lose acknowledged writes to a kill -9).

Each server gets the store's own write of a user's edits (`RedisStore.store_edits`: HSET in
MULTI/EXEC) and the version read every cached Recommend makes (GET), one at a time, in blocks that
take turns between the servers, their order swapped every round, so other load on the machine falls
on both alike. Prints p50 and p99 per operation and policy, and the machine's fsync latency on the
data directory's disk measured in the same run (what `always` adds to a write, at least).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from redis.asyncio import Redis

from serving import redis_process
from serving.cache import RedisStore
from serving.edits import EditSpec
from serving.redis_process import RedisProcess

POLICIES = ("always", "everysec")


def fsync_ms(directory: Path, samples: int = 200) -> tuple[float, float]:
    """p50 and p99 of one small write + fsync of a file in `directory`, ms."""
    path = directory / "fsync-probe"
    seconds = []
    with path.open("wb") as handle:
        for _ in range(samples):
            handle.write(b"x" * 200)
            handle.flush()
            start = time.perf_counter()
            os.fsync(handle.fileno())
            seconds.append(time.perf_counter() - start)
    path.unlink()
    return float(np.percentile(seconds, 50) * 1e3), float(np.percentile(seconds, 99) * 1e3)


async def block(store: RedisStore, redis: Redis, calls: int, round_: int) -> tuple[list[float], list[float]]:
    """`calls` edit writes and version reads, one at a time: their latencies, s."""
    writes, reads = [], []
    for i in range(calls):
        start = time.perf_counter()
        await store.store_edits(f"bench-{i % 50}", {"jazz": EditSpec("jazz", "scale", 0.5 + round_ * 1e-3)})
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        await redis.get(f"apron:version:{{bench-{i % 50}}}")
        reads.append(time.perf_counter() - start)
    return writes, reads


async def measure(urls: dict[str, str], calls: int, rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    clients = {policy: Redis.from_url(url) for policy, url in urls.items()}
    stores = {policy: RedisStore(client, ttl_s=60) for policy, client in clients.items()}
    found: dict[str, tuple[list[float], list[float]]] = {policy: ([], []) for policy in urls}
    try:
        for policy, client in clients.items():  # the policy reached the server (a later option wins)
            running = (await client.config_get("appendfsync")).get("appendfsync")
            if running != policy:
                raise SystemExit(f"the {policy} server runs appendfsync {running}")
        for policy in urls:  # connect and warm each server before any measured block
            await block(stores[policy], clients[policy], 20, 0)
        for round_ in range(rounds):
            for policy in POLICIES if round_ % 2 == 0 else POLICIES[::-1]:
                writes, reads = await block(stores[policy], clients[policy], calls, round_)
                found[policy][0].extend(writes)
                found[policy][1].extend(reads)
    finally:
        for client in clients.values():
            await client.aclose()
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="writes (and reads) per block")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="apron-fsync-") as work:
        servers = {}
        for policy in POLICIES:
            server = RedisProcess(data_dir=Path(work) / policy, aof=True, extra_args=("--appendfsync", policy))
            servers[policy] = server.start()
        try:
            found = asyncio.run(measure({policy: s.url for policy, s in servers.items()}, args.calls, args.rounds))
            disk = fsync_ms(Path(work))
        finally:
            for server in servers.values():
                server.stop()
    print("| appendfsync | edit write p50 ms | p99 ms | version read p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: |")
    for policy in POLICIES:
        writes, reads = (np.asarray(values) * 1e3 for values in found[policy])
        mark = " (the gateway's)" if policy == redis_process.APPENDFSYNC else ""
        print(
            f"| {policy}{mark} | {statistics.median(writes):.3f} | {np.percentile(writes, 99):.3f} | "
            f"{statistics.median(reads):.3f} | {np.percentile(reads, 99):.3f} |"
        )
    print(
        f"\n{args.rounds} rounds of {args.calls:,} writes and reads per policy, one client, the policies alternating; "
        f"fsync of a small write on the same disk: p50 {disk[0]:.3f} ms, p99 {disk[1]:.3f} ms."
    )


if __name__ == "__main__":
    main()
