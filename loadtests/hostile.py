"""A hostile or overloaded caller against a real `apron serve`, measured (RELIABILITY.md's attack rows):

    python -m loadtests.hostile flood   --repository REPO [--calls 200] [--history 10000]
    python -m loadtests.hostile garbage --repository REPO [--calls 3000]
    python -m loadtests.hostile burst   --repository REPO [--calls 2000] [--serve "--max-queue-delay-ms 250"]
    python -m loadtests.hostile watches --repository REPO [--calls 2000]
    python -m loadtests.hostile bare-burst [--refuse] [--grpc-defaults]

- `flood`: `--calls` concurrent Recommends without a token, each the largest body the gateway accepts
  (`--history` ids of the longest item id), while a legitimate caller keeps calling; reports the
  gateway's peak RSS over its RSS before the flood, the flood's statuses and the legitimate calls'.
- `garbage`: undecodable bodies (random bytes, a truncated varint, a string that is not UTF-8) with a
  valid token and without one; reports the statuses, the log lines they cost and whether any was a
  traceback.
- `burst`: `--calls` Recommends sent at once at default settings; reports the statuses and the
  client's latency beside the server's own (`apron_rpc_duration_seconds`).
- `watches`: `--calls` token-less Health.Watch streams opened at once and held: how many were
  admitted and refused, and the gateway's peak RSS growth.
- `bare-burst`: the same burst against a bare grpc.aio server (no gateway) that echoes, or refuses
  every call at once (`--refuse`), with grpc core's default pending-call limits (`--grpc-defaults`)
  or the gateway's: what grpc alone costs and drops.

Each prints a JSON report (and writes it to OUT/<scenario>.json). The tests in
tests/reliability/test_hostile.py run the same functions at a smaller size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import grpc

from serving import auth
from serving.front import FrontConfig, NginxFront
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.validation import MAX_ITEM_ID_BYTES

RECOMMEND = "/apron.v1.Recommender/Recommend"


# ----------------------------------------------------------------------------- memory (Linux /proc)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The process's highest RSS since it started or since `reset_peak_rss` (VmHWM)."""
    return _status_kb(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0; needs the right to ptrace the process)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# ----------------------------------------------------------------------------- bodies


def largest_history_body(history: int, user_id: str = "flood") -> bytes:
    """A RecommendRequest with `history` ids of the longest item id the gateway accepts."""
    ids = [f"{i:0{MAX_ITEM_ID_BYTES}d}" for i in range(history)]
    return pb.RecommendRequest(user_id=user_id, history=ids, k=5).SerializeToString()


# undecodable as an apron.v1.RecommendRequest, each for its own reason
GARBAGE = {
    "random bytes": bytes.fromhex("ffffffffffffffffff0a9c2e5d7b3f01a2"),
    "truncated varint": b"\x18\xff\xff",  # field 3 (k), a varint whose last byte never comes
    "bad UTF-8": b"\x0a\x02\xff\xfe",  # field 1 (user_id): two bytes that are not UTF-8
    "length past the end": b"\x0a\x7fshort",
}


async def send_raw(
    channel: grpc.aio.Channel, body: bytes, metadata: Sequence[tuple[str, str]] | None, timeout: float = 60.0
) -> tuple[grpc.StatusCode, str]:
    """`body` as a Recommend request as it is (no serialization): its status and details."""
    call = channel.unary_unary(RECOMMEND, request_serializer=None, response_deserializer=None)
    try:
        await call(body, metadata=metadata, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


# ----------------------------------------------------------------------------- scenarios


async def flood(
    target: str, pid: int, token: str, history_ids: Sequence[str], *, calls: int, history: int, channels: int = 4
) -> dict:
    """`calls` concurrent token-less Recommends with the largest body, while one legitimate caller
    calls back to back until the flood is answered: the peak RSS over the RSS before, and the statuses."""
    body = largest_history_body(history)
    legit_request = pb.RecommendRequest(user_id="legit", history=list(history_ids), k=5).SerializeToString()
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    try:
        await send_raw(opened[0], legit_request, auth.bearer_metadata(token))  # warm: a cached profile
        before = rss_bytes(pid)
        reset_peak_rss(pid)
        started = time.monotonic()
        flood_calls = [asyncio.ensure_future(send_raw(opened[i % channels], body, None)) for i in range(calls)]
        legit: list[str] = []
        while not all(call.done() for call in flood_calls) or not legit:
            code, _ = await send_raw(opened[-1], legit_request, auth.bearer_metadata(token))
            legit.append(code.name)
        codes = Counter(code.name for code, _ in await asyncio.gather(*flood_calls))
        return {
            "calls": calls,
            "body_bytes": len(body),
            "seconds": round(time.monotonic() - started, 2),
            "rss_before_mb": round(before / 1e6, 1),
            "peak_rss_mb": round(peak_rss_bytes(pid) / 1e6, 1),
            "peak_rss_growth_mb": round((peak_rss_bytes(pid) - before) / 1e6, 1),
            "flood_statuses": dict(codes),
            "legitimate_statuses": dict(Counter(legit)),
        }
    finally:
        for channel in opened:
            await channel.close()


async def garbage(target: str, token: str, *, calls: int) -> dict:
    """`calls` undecodable bodies, half with a valid token and half without: their statuses and details."""
    statuses: dict[str, Counter] = {}
    details: dict[str, str] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        kinds = list(GARBAGE.items())
        for i in range(calls):
            name, body = kinds[i % len(kinds)]
            signed = (i // len(kinds)) % 2 == 0
            code, detail = await send_raw(channel, body, auth.bearer_metadata(token) if signed else None)
            key = f"{name}, {'valid token' if signed else 'no token'}"
            statuses.setdefault(key, Counter())[code.name] += 1
            details.setdefault(key, detail)
    return {"calls": calls, "statuses": {k: dict(v) for k, v in statuses.items()}, "details": details}


def summarize_ms(seconds: Sequence[float]) -> dict:
    ordered = sorted(seconds)
    if not ordered:
        return {}
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


async def burst(target: str, token: str, history_ids: Sequence[str], *, calls: int, channels: int = 8, timeout: float = 30.0) -> dict:
    """`calls` Recommends (distinct users, one history, cached after the first) sent at once over
    `channels` connections: the statuses (with the `retry-after-ms` of the shed ones) and the
    client's latency per status."""
    request = pb.RecommendRequest(user_id="burst", history=list(history_ids), k=5).SerializeToString()
    metadata = auth.bearer_metadata(token)
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    try:
        for channel in opened:  # connected (and the profile cached: every burst call is the same work)
            await send_raw(channel, request, metadata)

        details: dict[str, str] = {}
        reasons: Counter = Counter()  # the setting each shed call names

        async def one(i: int) -> tuple[str, float, str | None]:
            call = opened[i % channels].unary_unary(RECOMMEND, request_serializer=None, response_deserializer=None)(
                request, metadata=metadata, timeout=timeout
            )
            start = time.monotonic()
            try:
                await call
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
                details.setdefault(code.name, error.details() or "")
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    reasons.update(re.findall(r"\((--[a-z-]+)\)", error.details() or "") or ["(none named)"])
            trailing = dict(await call.trailing_metadata() or ())
            return code.name, time.monotonic() - start, trailing.get("retry-after-ms")

        started = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(calls)))
        wall = time.monotonic() - started
    finally:
        for channel in opened:
            await channel.close()
    by_code: dict[str, list[float]] = {}
    for code, seconds, _ in results:
        by_code.setdefault(code, []).append(seconds)
    shed = [r for r in results if r[0] == "RESOURCE_EXHAUSTED"]
    return {
        "calls": calls,
        "wall_s": round(wall, 2),
        "statuses": {code: len(times) for code, times in by_code.items()},
        "client_latency": {code: summarize_ms(times) for code, times in by_code.items()},
        "shed_with_retry_after": sum(1 for r in shed if r[2] is not None),
        "shed_by": dict(reasons),
        "details": details,
    }


async def watches(target: str, pid: int, *, calls: int, channels: int = 20) -> dict:
    """`calls` token-less Health.Watch streams opened at once and held: how many the gateway
    admitted, how many it refused, and its peak RSS over its RSS before."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    streams = []
    try:
        before = rss_bytes(pid)
        reset_peak_rss(pid)

        async def watch(i: int) -> str:
            stream = health_pb2_grpc.HealthStub(opened[i % channels]).Watch(health_pb2.HealthCheckRequest())
            streams.append(stream)
            try:
                await stream.read()
            except grpc.aio.AioRpcError as error:
                return error.code().name
            return "OPEN"

        statuses = Counter(await asyncio.gather(*(watch(i) for i in range(calls))))
        return {
            "calls": calls,
            "statuses": dict(statuses),
            "rss_before_mb": round(before / 1e6, 1),
            "peak_rss_growth_mb": round((peak_rss_bytes(pid) - before) / 1e6, 1),
            "rss_growth_held_mb": round((rss_bytes(pid) - before) / 1e6, 1),  # the admitted streams still open
        }
    finally:
        for stream in streams:
            stream.cancel()
        for channel in opened:
            await channel.close()


# ----------------------------------------------------------------------------- a bare grpc.aio server


async def _bare_serve(refuse: bool, grpc_defaults: bool) -> None:
    """A grpc.aio server with nothing of the gateway: Recommend echoes its body (or is refused at
    once with RESOURCE_EXHAUSTED); with `grpc_defaults` grpc core's own pending-call limits, else the
    gateway's (`limits.admission_options`). Prints its port, serves until killed."""
    from serving.limits import admission_options

    async def recommend(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if refuse:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "refused")
        return request

    server = grpc.aio.server(options=[] if grpc_defaults else admission_options())
    handlers = {"Recommend": grpc.unary_unary_rpc_method_handler(recommend)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("apron.v1.Recommender", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def bare_burst(refuse: bool, grpc_defaults: bool, calls: int) -> dict:
    """`burst` against a bare grpc.aio server in its own process: what grpc alone does with it."""
    import subprocess

    flags = [*(["--refuse"] if refuse else []), *(["--grpc-defaults"] if grpc_defaults else [])]
    command = [sys.executable, "-m", "loadtests.hostile", "bare-server", *flags]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        report = asyncio.run(burst(f"127.0.0.1:{port}", "unused", ["x"], calls=calls))
    finally:
        server.kill()
        server.wait()
    return {"server": "bare grpc.aio, " + ("refuses every call" if refuse else "echoes"),
            "pending_limits": "grpc's defaults" if grpc_defaults else "the gateway's", **report}  # fmt: skip


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    from loadtests.faults import deployment
    from loadtests.gateway_process import start_gateway
    from serving.catalog import ServedModel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["flood", "garbage", "burst", "watches", "bare-burst", "bare-server"])
    parser.add_argument("--refuse", action="store_true", help="bare-burst: the bare server refuses every call at once")
    parser.add_argument("--grpc-defaults", action="store_true", help="bare-burst: grpc core's default pending-call limits")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--calls", type=int, default=0, help="flood 200, garbage 3000, burst 2000")
    parser.add_argument("--history", type=int, default=10_000, help="flood: ids per body (the default --max-history)")
    parser.add_argument("--channels", type=int, default=8, help="burst: connections the calls are spread over")
    parser.add_argument("--out", type=Path, default=Path("loadtests/out/hostile"))
    parser.add_argument("--serve", default="", help='more `apron serve` flags, e.g. --serve "--max-concurrent-rpcs 32"')
    parser.add_argument(
        "--front", type=int, default=0, metavar="MAX_CALLS",
        help="burst: through an nginx front (serving/front.py) that passes at most this many calls at once (0: none)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.front and args.scenario != "burst":
        parser.error("--front applies to the burst scenario only")
    calls = args.calls or {"flood": 200, "garbage": 3000}.get(args.scenario, 2000)
    if args.scenario == "bare-server":
        asyncio.run(_bare_serve(args.refuse, args.grpc_defaults))
        return 0
    if args.scenario == "bare-burst":
        return _report(args, bare_burst(args.refuse, args.grpc_defaults, calls))
    model = ServedModel.load(args.repository)
    history = model.metadata.item_ids[:20]
    with deployment(args.repository) as deploy:
        serve = deploy.gateway_args("--redis-dir", str(deploy.workdir / "redis"), *shlex.split(args.serve))
        gateway = start_gateway(serve, deploy.workdir)
        try:
            if args.scenario == "flood":
                report = asyncio.run(flood(gateway.target, gateway.process.pid, deploy.token, history, calls=calls, history=args.history))
            elif args.scenario == "garbage":
                lines_before = len(gateway.log().splitlines())
                started = time.monotonic()
                report = asyncio.run(garbage(gateway.target, deploy.token, calls=calls))
                report["seconds"] = round(time.monotonic() - started, 2)
                log = gateway.log().splitlines()[lines_before:]
                report["log_lines"] = len(log)
                report["log_bytes"] = sum(len(line) + 1 for line in log)
                report["tracebacks"] = sum("Traceback" in line for line in log)
            elif args.scenario == "watches":
                report = asyncio.run(watches(gateway.target, gateway.process.pid, calls=calls))
            elif args.front:
                config = FrontConfig(listen="127.0.0.1:0", upstream=gateway.target, max_calls=args.front)
                with NginxFront(config) as front:
                    report = asyncio.run(burst(front.target, deploy.token, history, calls=calls, channels=args.channels))
                report["front_max_calls"] = args.front
            else:
                report = asyncio.run(burst(gateway.target, deploy.token, history, calls=calls, channels=args.channels))
            if args.scenario == "burst":
                report["server_mean_ms"] = {}  # the gateway's own duration (calls the front shed never reached it)
                for code in report["statuses"]:
                    count = gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code=code)
                    total = gateway.metric("apron_rpc_duration_seconds_sum", method="Recommend", code=code)
                    report["server_mean_ms"][code] = round(1000 * total / count, 1) if count else None
            report["rejections_counted"] = gateway.metric("apron_rpc_rejections_total")
        finally:
            gateway.terminate()
    return _report(args, report)


def _report(args: argparse.Namespace, report: dict) -> int:
    report.update(scenario=args.scenario, cpus=os.cpu_count(), load_average=[round(x, 2) for x in os.getloadavg()])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.scenario}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
