"""A gateway in this process with one user's profile cached, called one call at a time by a client
on the same event loop, in states that take turns block by block, so that the load of other
processes falls on every state alike (`benchmarks/tracing_cost.py`, `benchmarks/overlap_cost.py`):
ONNX Runtime, a synthetic 1,000-item model, a private redis-server, auth off."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# a state switched on in the running gateway; what it returns switches it off again
State = Callable[[Any], Callable[[], None]]


async def time_calls(stub: Any, request: Any, calls: int, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[np.ndarray, float]:
    """(latency per call in s, this process's CPU ms per call) of `calls` Recommend calls one at a time."""
    latencies = np.empty(calls)
    cpu = time.process_time()
    for i in range(calls):
        t0 = time.perf_counter()
        await stub.Recommend(request, metadata=metadata)
        latencies[i] = time.perf_counter() - t0
    return latencies, (time.process_time() - cpu) / calls * 1e3


async def alternate(
    calls: int, blocks: int, workdir: Path, states: Mapping[str, State], metadata: tuple[tuple[str, str], ...] = ()
) -> dict[str, tuple[np.ndarray, float, list[float]]]:
    """Each state's (latencies, CPU ms per call, p50 s of each block): `blocks` blocks per state of
    `calls / blocks` cached Recommend calls, the states in turn, their order swapped every block."""
    import grpc

    from benchmarks.gateway_bench import export_repository
    from serving.config import ServingConfig
    from serving.proto_gen.apron.v1 import recommender_pb2 as pb
    from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
    from serving.redis_process import RedisProcess
    from serving.server import create_server

    if blocks < 1 or calls < 1:
        raise ValueError(f"alternate needs at least one block and one call, got {blocks} block(s) and {calls} call(s)")
    repository = export_repository(1000, workdir)
    per_block = max(1, calls // blocks)
    with RedisProcess() as redis_server:
        config = ServingConfig(
            repository=str(repository), build_demo=False, port=0, metrics_port=0, redis_url=redis_server.url,
            backend="onnxruntime", log_format="text", auth=False,
        )  # fmt: skip
        server, port = await create_server(config)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.RecommenderStub(channel)
        history = list(server.model.metadata.item_ids[:20])
        await stub.Recommend(pb.RecommendRequest(user_id="inprocess-bench", history=history, k=10))  # cached from here on
        request = pb.RecommendRequest(user_id="inprocess-bench", k=10)
        runs: dict[str, list[tuple[np.ndarray, float]]] = {state: [] for state in states}
        try:
            await time_calls(stub, request, per_block, metadata)  # warm-up
            for block in range(blocks):
                for state in list(states) if block % 2 == 0 else list(states)[::-1]:
                    switch_off = states[state](server)
                    try:
                        runs[state].append(await time_calls(stub, request, per_block, metadata))
                    finally:
                        switch_off()
        finally:
            await channel.close()
            await server.stop(1.0)
    return {
        state: (
            np.concatenate([lat for lat, _ in blocks_]),
            float(np.mean([cpu for _, cpu in blocks_])),
            [float(np.median(lat)) for lat, _ in blocks_],
        )
        for state, blocks_ in runs.items()
    }


def comparison(result: Mapping[str, tuple[np.ndarray, float, list[float]]], first: str, second: str, what: str) -> list[str]:
    """`alternate`'s two states side by side: p50 and p99 of `what`, and the CPU per call."""
    (lat_a, cpu_a, _), (lat_b, cpu_b, _) = result[first], result[second]
    lines = []
    for name, q in (("p50", 50), ("p99", 99)):
        a, b = np.percentile(lat_a, q) * 1e3, np.percentile(lat_b, q) * 1e3
        lines.append(f"{what} {name}: {first} {a:.3f} ms, {second} {b:.3f} ms ({(b - a) * 1e3:+.0f} µs, x{b / a:.3f})")
    lines.append(f"gateway + client CPU per call: {first} {cpu_a:.3f} ms, {second} {cpu_b:.3f} ms ({(cpu_b - cpu_a) * 1e3:+.0f} µs)")
    return lines
