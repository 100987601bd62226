"""The HTTP/JSON path beside gRPC on one gateway (1,000 items, in-process ONNX Runtime, private
redis-server, auth on): the same cached Recommend (50-item history, k = 10, the whole profile) from
one client and from 64, over each transport, in one run. The ratios are what to read: both
transports run the same handler, so the difference is the transport (HTTP/1.1 + JSON through
Starlette and uvicorn, against HTTP/2 + protobuf through grpc.aio).

    .venv/bin/python -m benchmarks.http_bench [--seconds 8] [--output FILE]

The HTTP client is a small keep-alive HTTP/1.1 client (h11 over asyncio streams, one connection
per call in flight, reused), so the load generator does not weigh more on one side than the other
for lack of a pooled client; the gRPC side is `gateway_bench.Client`, as in BENCHMARKS.md's gateway
sections. Both drive load from the same `benchmarks.load` (closed loop, spawned load processes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h11
import numpy as np

from benchmarks.gateway_bench import (
    HISTORY_LENGTH,
    N_USERS,
    Client,
    ClientSource,
    K,
    export_repository,
    gateway_process,
)
from benchmarks.load import closed_loop, run_load
from benchmarks.timing import StandaloneRun, Timing
from common.net import free_ports

N_ITEMS = 1_000
CLIENTS = 64
PATH = "/apron.v1.Recommender/Recommend"


class HttpClient:
    """`gateway_bench.Client.cached` over HTTP/JSON: the same users, histories and checks."""

    def __init__(self, port: int, token: str, item_ids: list[str]):
        self.port = port
        self.headers = [("host", f"127.0.0.1:{port}"), ("content-type", "application/json"), ("authorization", f"Bearer {token}")]
        rng = np.random.default_rng(0)  # the gRPC Client's seed: the same histories, so the same cached profiles
        histories = [[item_ids[i] for i in rng.choice(len(item_ids), HISTORY_LENGTH, replace=False)] for _ in range(N_USERS)]
        requests = [{"user_id": f"bench-{u}", "history": h, "k": K} for u, h in enumerate(histories)]
        self.bodies = [json.dumps(request).encode() for request in requests]
        self.bare_bodies = [json.dumps({**request, "profile_view": "PROFILE_VIEW_NONE"}).encode() for request in requests]
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]] = []

    async def cached(self, i: int) -> None:
        await self._recommend(self.bodies[i % N_USERS])

    async def cached_no_profile(self, i: int) -> None:
        """A cached Recommend that asks for no profile (profile_view NONE), as `Client.cached_no_profile`."""
        await self._recommend(self.bare_bodies[i % N_USERS])

    async def _recommend(self, body: bytes) -> None:
        connection = self.idle.pop() if self.idle else await self._connect()
        reader, writer, protocol = connection
        writer.write(protocol.send(h11.Request(method="POST", target=PATH, headers=[*self.headers, ("content-length", str(len(body)))])))
        writer.write(protocol.send(h11.Data(data=body)) + protocol.send(h11.EndOfMessage()))
        status, chunks = 0, []
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                protocol.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        protocol.start_next_cycle()
        self.idle.append(connection)
        reply = json.loads(b"".join(chunks))
        if status != 200 or len(reply["items"]) != K or not reply["profile_from_cache"]:
            raise RuntimeError(f"unexpected reply: HTTP {status}, {str(reply)[:200]}")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return reader, writer, h11.Connection(h11.CLIENT)

    async def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


@dataclass(frozen=True)
class HttpClientSource:
    port: int
    token: str
    item_ids: list[str]

    def open(self) -> HttpClient:
        return HttpClient(self.port, self.token, self.item_ids)


@dataclass(frozen=True)
class Row:
    transport: str
    reply: str  # what the reply carries
    one: Timing
    many: Timing


REPLIES = {"cached": "whole profile", "cached_no_profile": "no profile (PROFILE_VIEW_NONE)"}


@dataclass(frozen=True)
class JsonCost:
    """The HTTP side's own work per call, timed in this process on a real reply: serving/http.py's
    rendering of a RecommendResponse (json_format, pure Python) and parsing of its request."""

    render_whole_ms: float
    render_bare_ms: float
    parse_ms: float


async def json_cost(address: str, token: str, item_ids: list[str], calls: int = 200) -> JsonCost:
    from google.protobuf import json_format

    from serving.http import to_json
    from serving.proto_gen.apron.v1 import recommender_pb2 as pb

    client = Client(address, token, item_ids)
    request = pb.RecommendRequest(user_id="bench-0", history=client.histories[0], k=K)
    whole = await client.stubs[0].Recommend(request, metadata=client.metadata, timeout=30)
    await client.close()
    bare = pb.RecommendResponse(items=whole.items, model_version=whole.model_version, profile_from_cache=True)
    body = to_json(request).encode()

    def per_call_ms(work: Callable[[], object]) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            work()
        return (time.perf_counter() - started) / calls * 1e3

    return JsonCost(
        per_call_ms(lambda: to_json(whole)), per_call_ms(lambda: to_json(bare)),
        per_call_ms(lambda: json_format.Parse(body, pb.RecommendRequest())),
    )  # fmt: skip


def measure(seconds: float, workdir: Path, processes: int = 2) -> tuple[list[Row], JsonCost]:
    from export.metadata import metadata_path
    from serving import auth
    from serving.config import ServingConfig

    repository = export_repository(N_ITEMS, workdir)
    item_ids = json.loads(metadata_path(repository).read_text())["item_ids"]
    secret = repository.parent / "jwt_secret"
    secret.write_text(secrets.token_hex(32))
    token = auth.mint_token(auth.read_secret_file(secret).key, "benchmark", auth.Role.SERVICE, ttl_s=3600)
    (http_port,) = free_ports(1)
    rows = []
    with gateway_process(repository, secret, ServingConfig().max_batch_size, more_settings={"http_port": http_port}) as gateway:

        async def warm() -> None:
            client = Client(gateway.address, token, item_ids)
            await client.warm()
            await client.close()

        async def one(source: ClientSource | HttpClientSource, call: str) -> Timing:
            client = source.open()  # inside the loop: grpc.aio channels belong to one
            timing = await closed_loop(getattr(client, call), 1, seconds / 2, warmup_s=0.2)
            await client.close()
            return timing

        asyncio.run(warm())
        cost = asyncio.run(json_cost(gateway.address, token, item_ids))
        sources = {"gRPC": ClientSource(gateway.address, token, item_ids), "HTTP/JSON": HttpClientSource(http_port, token, item_ids)}
        for call, reply in REPLIES.items():
            for transport, source in sources.items():
                single = asyncio.run(one(source, call))
                many = run_load(source, call, processes, seconds, clients=CLIENTS).timing
                rows.append(Row(transport, reply, single, many))
    return rows, cost


def render(rows: list[Row], cost: JsonCost, command: str, wall_s: float, load: str) -> list[str]:
    lines = [
        f"## HTTP/JSON beside gRPC ({N_ITEMS:,} items)",
        "",
        f"One gateway (in-process ONNX Runtime, private redis-server, auth on), cached Recommend with a {HISTORY_LENGTH}-item "
        f"history and k = {K}, with and without the profile in the reply, over each transport in one run; `{command}`, "
        f"{wall_s / 60:.1f} min on {platform.machine()} with {os.cpu_count()} cores, the load generator (2 processes) on the "
        f"same cores; load average {load}.",
        "",
        f"| reply | transport | 1 client p50 ms | 1 client p99 ms | {CLIENTS} clients req/s | {CLIENTS} clients p50 ms | {CLIENTS} clients p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for grpc_row, http_row in zip(rows[::2], rows[1::2], strict=True):
        for row in (grpc_row, http_row):
            lines.append(
                f"| {row.reply} | {row.transport} | {row.one.p50_ms:.2f} | {row.one.p99_ms:.2f} | {row.many.throughput:.0f} | "
                f"{row.many.p50_ms:.1f} | {row.many.p99_ms:.1f} |"
            )
        lines.append(
            f"| {http_row.reply} | HTTP / gRPC | {http_row.one.p50_ms / grpc_row.one.p50_ms:.2f}× | "
            f"{http_row.one.p99_ms / grpc_row.one.p99_ms:.2f}× | {http_row.many.throughput / grpc_row.many.throughput:.2f}× | "
            f"{http_row.many.p50_ms / grpc_row.many.p50_ms:.2f}× | {http_row.many.p99_ms / grpc_row.many.p99_ms:.2f}× |"
        )
    lines += [
        "",
        f"The HTTP side's own JSON work per call, timed in the same run: rendering the reply {cost.render_whole_ms:.2f} ms "
        f"with the whole profile, {cost.render_bare_ms:.2f} ms without; parsing the request {cost.parse_ms:.2f} ms "
        "(google.protobuf.json_format, pure Python; the gRPC reply's profile is spliced from pre-serialized bytes).",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="each 64-client run (one client: half of it)")
    parser.add_argument("--workdir", default="benchmarks/out/http", help="the exported 1,000-item repository")
    parser.add_argument("--output", default="", help="write the Markdown section here (default: print it)")
    args = parser.parse_args(argv)
    run = StandaloneRun("http_bench", argv)
    rows, cost = measure(args.seconds, Path(args.workdir))
    run.publish(render(rows, cost, run.command, run.wall_s, run.load()), args.output)


if __name__ == "__main__":
    main()
