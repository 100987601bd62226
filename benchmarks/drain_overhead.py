"""What the drain's interceptor (serving/drain.py) costs a call: grpc.aio echo servers in their own
processes, without and with `Drain().interceptor()`, each alone and behind a pass-through
interceptor (as the gateway's auth interceptor is whenever auth is on: grpc.aio's first interceptor
costs more than the next), the method named like apron's (`/apron.bench.Echo/Call`, so the drain
tracks it), called one at a time in alternating blocks within one run. Prints each server's CPU time
and the client's latency per call, and the differences: ratios within one run, which hold on a
loaded machine better than absolute figures.

    python -m benchmarks.drain_overhead [--calls 2000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from typing import Any

import grpc
import psutil

from benchmarks.request_path import _identity, echo_server

SERVICE = "apron.bench.Echo"  # under the drain's TRACKED_PREFIX "/apron."
PAYLOAD = b"x" * 200


class PassThrough(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return await continuation(handler_call_details)


def bare() -> list[grpc.aio.ServerInterceptor]:
    return []


def drain() -> list[grpc.aio.ServerInterceptor]:
    from serving.drain import Drain

    return [Drain().interceptor()]


def auth_like() -> list[grpc.aio.ServerInterceptor]:
    return [PassThrough()]


def auth_like_and_drain() -> list[grpc.aio.ServerInterceptor]:
    return [*auth_like(), *drain()]


SERVERS = {"bare": bare, "drain": drain, "auth-like": auth_like, "auth-like + drain": auth_like_and_drain}


async def _block(call: Any, calls: int) -> float:
    """Seconds for `calls` sequential calls."""
    start = time.perf_counter()
    for _ in range(calls):
        await call(PAYLOAD)
    return time.perf_counter() - start


async def measure(calls: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, list[float]]] = {name: {"cpu_us": [], "latency_us": []} for name in SERVERS}
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(echo_server(SERVICE, interceptors)) for name, interceptors in SERVERS.items()}
        channels = {name: grpc.aio.insecure_channel(address) for name, (address, _) in servers.items()}
        try:
            stubs = {
                name: channel.unary_unary(f"/{SERVICE}/Call", request_serializer=_identity, response_deserializer=_identity)
                for name, channel in channels.items()
            }
            for name in servers:  # warm the connections and the interceptor's handler cache
                await _block(stubs[name], 200)
            for _ in range(rounds):
                for name, (_, pid) in servers.items():
                    cpu = psutil.Process(pid)
                    before = sum(cpu.cpu_times()[:2])
                    seconds = await _block(stubs[name], calls)
                    results[name]["cpu_us"].append((sum(cpu.cpu_times()[:2]) - before) / calls * 1e6)
                    results[name]["latency_us"].append(seconds / calls * 1e6)
        finally:
            for channel in channels.values():
                await channel.close()
    return {name: {key: statistics.median(values) for key, values in found.items()} for name, found in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per block")
    parser.add_argument("--rounds", type=int, default=6, help="alternating blocks per server")
    args = parser.parse_args(argv)
    found = asyncio.run(measure(args.calls, args.rounds))
    for name, values in found.items():
        print(f"{name:>17}: server CPU {values['cpu_us']:.1f} µs/call, client latency {values['latency_us']:.1f} µs/call "
              f"(medians of {args.rounds} blocks of {args.calls})")  # fmt: skip
    for plain, drained in (("bare", "drain"), ("auth-like", "auth-like + drain")):
        a, b = found[plain], found[drained]
        print(f"the drain's interceptor after {plain}: {b['cpu_us'] - a['cpu_us']:+.1f} µs server CPU per call "
              f"({b['cpu_us'] / a['cpu_us'] - 1:+.1%}), {b['latency_us'] - a['latency_us']:+.1f} µs latency "
              f"({b['latency_us'] / a['latency_us'] - 1:+.1%})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
