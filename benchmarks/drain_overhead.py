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
import multiprocessing
import statistics
import time
from typing import Any

import grpc
import psutil

from common.net import free_port

METHOD = "/apron.bench.Echo/Call"
PAYLOAD = b"x" * 200


def _identity(data: bytes) -> bytes:
    return data


class PassThrough(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return await continuation(handler_call_details)


SERVERS = {  # name -> (pass-through interceptor first, drain)
    "bare": (False, False),
    "drain": (False, True),
    "auth-like": (True, False),
    "auth-like + drain": (True, True),
}


async def _serve(port: int, name: str, ready: Any) -> None:
    from serving.drain import Drain

    pass_through, drain = SERVERS[name]
    interceptors = [PassThrough()] if pass_through else []
    interceptors += [Drain().interceptor()] if drain else []
    server = grpc.aio.server(interceptors=interceptors or None)

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo, request_deserializer=_identity, response_serializer=_identity)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("apron.bench.Echo", {"Call": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _server_main(port: int, name: str, ready: Any) -> None:
    asyncio.run(_serve(port, name, ready))


async def _block(call: Any, calls: int) -> float:
    """Seconds for `calls` sequential calls."""
    start = time.perf_counter()
    for _ in range(calls):
        await call(PAYLOAD)
    return time.perf_counter() - start


async def measure(calls: int, rounds: int) -> dict[str, dict[str, float]]:
    context = multiprocessing.get_context("spawn")
    servers = {}
    for name in SERVERS:
        port, ready = free_port(), context.Event()
        process = context.Process(target=_server_main, args=(port, name, ready), daemon=True)
        process.start()
        if not ready.wait(60):
            raise RuntimeError(f"the {name} echo server did not start")
        servers[name] = (port, process)
    results: dict[str, dict[str, list[float]]] = {name: {"cpu_us": [], "latency_us": []} for name in servers}
    channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{port}") for name, (port, _) in servers.items()}
    try:
        stubs = {
            name: channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
            for name, channel in channels.items()
        }
        for name in servers:  # warm the connections and the interceptor's handler cache
            await _block(stubs[name], 200)
        for _ in range(rounds):
            for name, (_, process) in servers.items():
                cpu = psutil.Process(process.pid)
                before = sum(cpu.cpu_times()[:2])
                seconds = await _block(stubs[name], calls)
                results[name]["cpu_us"].append((sum(cpu.cpu_times()[:2]) - before) / calls * 1e6)
                results[name]["latency_us"].append(seconds / calls * 1e6)
    finally:
        for channel in channels.values():
            await channel.close()
        for _, process in servers.values():
            process.terminate()
            process.join(10)
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
