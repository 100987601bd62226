"""Faults under load, measured: real `apron serve` processes, the Locust mix as background load, and
an edit audit that knows every acknowledged edit (RELIABILITY.md reports these runs).

    python -m loadtests.faults redis-kill --dataset DIR --repository REPO [--users 8] [--seconds 20]
    python -m loadtests.faults gateway-restart --dataset DIR --repository REPO
    python -m loadtests.faults rolling-restart --dataset DIR --repository REPO
    python -m loadtests.faults redis-reload --dataset DIR --repository REPO [--aof-mb 200]

- `redis-kill`: kill -9 of the gateway's private redis-server mid-load. The gateway restarts it (same
  socket, same AOF). Pass: zero failed Recommends, no acknowledged edit lost, and the span during
  which edits failed (if any did) at most 2 s.
- `gateway-restart`: SIGTERM to the gateway mid-load, then a new one on the same data directory.
  Pass: every acknowledged edit is still there (the load's own calls fail while no gateway runs).
- `rolling-restart`: two gateways sharing one Redis; each in turn is replaced (the new process binds
  the same port, SO_REUSEPORT, then the old one gets SIGTERM and drains with `--drain-delay-s`).
  Clients use serving/client.py's service config: round robin, NOT_SERVING replicas skipped,
  UNAVAILABLE retried. Pass: zero failed requests, no acknowledged edit lost.
- `redis-reload`: the private redis-server's AOF grown to `--aof-mb` (edit-like keys), then kill -9:
  ListPrototypes and Recommend (with a history) called back to back throughout the restart and the
  AOF replay. Pass: every call OK (the restart and replay block nothing; Recommend answers uncached
  while Redis is down). Reports the replay's duration and the calls' latencies during it.

The edit audit: writers each own one (user, prototype) and store ever-larger scales; after the run
each stored value must be the last acknowledged one or a later one whose reply was lost, never an
older one. Writes OUT/<scenario>.json and Locust's files; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

from loadtests.gateway_process import start_gateway
from serving import auth
from serving.client import channel_options
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
EDIT_FAILURE_BUDGET_S = 2.0


# ----------------------------------------------------------------------------- the edit audit


@dataclass
class Writer:
    user: str
    tag: str
    sent: list[float] = field(default_factory=list)
    acknowledged: list[float] = field(default_factory=list)
    failures: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, code)


class _ClientLoop:
    """Tasks calling the gateway back to back over one channel until `stop()` (the subclass's
    `_tasks_for(stub)` says which)."""

    def __init__(self, target: str, token: str, timeout_s: float):
        self.target, self.timeout_s = target, timeout_s
        self.metadata = auth.bearer_metadata(token)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.channel: grpc.aio.Channel | None = None

    def _tasks_for(self, stub: pb_grpc.RecommenderStub) -> list[Coroutine[Any, Any, None]]:
        raise NotImplementedError

    # the clients' service config (health checked: NOT_SERVING replicas skipped, UNAVAILABLE retried)
    service_config = True

    async def start(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.target, options=channel_options() if self.service_config else None)
        self._tasks = [asyncio.create_task(call) for call in self._tasks_for(pb_grpc.RecommenderStub(self.channel))]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self.channel is not None:
            await self.channel.close()


class EditAudit(_ClientLoop):
    """`n` writers storing distinct, growing scales, back to back, until `stop()`."""

    def __init__(
        self, target: str, token: str, tags: Sequence[str], history: Sequence[str], n: int = 6, timeout_s: float = 10.0
    ):
        super().__init__(target, token, timeout_s)
        self.history = list(history)
        self.writers = [Writer(f"audit-{i % 3}", tags[i % len(tags)]) for i in range(n)]

    def _tasks_for(self, stub: pb_grpc.RecommenderStub) -> list[Coroutine[Any, Any, None]]:
        return [self._write(stub, writer) for writer in self.writers]

    async def _write(self, stub: pb_grpc.RecommenderStub, writer: Writer) -> None:
        step = 0
        while not self._stop.is_set():
            step += 1
            scale = round(1.0 + step / 1000, 6)
            writer.sent.append(scale)
            request = pb.EditProfileRequest(user_id=writer.user, edits=[pb.Edit(prototype=writer.tag, scale=scale)])
            start = time.monotonic()
            try:
                await stub.EditProfile(request, metadata=self.metadata, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as error:
                writer.failures.append((start, time.monotonic(), error.code().name))
                await asyncio.sleep(0.05)
            else:
                writer.acknowledged.append(scale)

    def acknowledged(self) -> int:
        return sum(len(w.acknowledged) for w in self.writers)

    async def lost(self, target: str | None = None) -> list[str]:
        """Writers whose stored value is older than their last acknowledged edit (a lost edit)."""
        lost = []
        async with grpc.aio.insecure_channel(target or self.target, options=channel_options()) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            for writer in self.writers:
                if not writer.acknowledged:
                    continue
                # read through Recommend (a history gives a profile to apply the stored edits to)
                request = pb.RecommendRequest(user_id=writer.user, history=self.history, k=1)
                reply = await stub.Recommend(request, metadata=self.metadata, timeout=30)
                stored = {w.prototype: round(w.edit.scale, 6) for w in reply.profile.weights if w.HasField("edit")}.get(writer.tag)
                last = writer.sent.index(writer.acknowledged[-1])
                if stored not in writer.sent[last:]:
                    lost.append(f"{writer.user}/{writer.tag}: stored {stored}, last acknowledged {writer.acknowledged[-1]}")
        return lost

    def failure_span_s(self) -> float:
        """From the first failed edit's start to the last one's end (0: none failed)."""
        failures = [f for w in self.writers for f in w.failures]
        return max(end for _, end, _ in failures) - min(start for start, _, _ in failures) if failures else 0.0

    def failed(self) -> int:
        return sum(len(w.failures) for w in self.writers)


@dataclass
class Call:
    method: str
    start: float  # monotonic
    seconds: float
    code: str


class Probe(_ClientLoop):
    """ListPrototypes and Recommend (with a history), each called back to back until `stop()`; every call
    kept. A plain channel: what the gateway answers, not what a health-checking client makes of it."""

    service_config = False

    def __init__(self, target: str, token: str, history: Sequence[str], timeout_s: float = 30.0):
        super().__init__(target, token, timeout_s)
        self.history = list(history)
        self.calls: list[Call] = []

    def _tasks_for(self, stub: pb_grpc.RecommenderStub) -> list[Coroutine[Any, Any, None]]:
        recommend = pb.RecommendRequest(user_id="probe", history=self.history, k=5)
        return [
            self._loop("ListPrototypes", stub.ListPrototypes, pb.ListPrototypesRequest()),
            self._loop("Recommend", stub.Recommend, recommend),
        ]

    async def _loop(self, method: str, rpc: Any, request: Any) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                await rpc(request, metadata=self.metadata, timeout=self.timeout_s)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            self.calls.append(Call(method, start, time.monotonic() - start, code))


class RecommendLoad(_ClientLoop):
    """`n` clients calling Recommend (with a history) back to back until `stop()`; every status kept."""

    def __init__(self, target: str, token: str, history: Sequence[str], n: int = 4, timeout_s: float = 10.0):
        super().__init__(target, token, timeout_s)
        self.history, self.n = list(history), n
        self.codes: list[str] = []
        self.answers: list[tuple[float, int]] = []  # each OK response's call start (monotonic) and model_version

    @property
    def versions(self) -> list[int]:
        """Each OK response's model_version, in the order they came."""
        return [version for _, version in self.answers]

    def _tasks_for(self, stub: pb_grpc.RecommenderStub) -> list[Coroutine[Any, Any, None]]:
        return [self._call(stub, i) for i in range(self.n)]

    async def _call(self, stub: pb_grpc.RecommenderStub, i: int) -> None:
        request = pb.RecommendRequest(user_id=f"reader-{i}", history=self.history, k=5)
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                response = await stub.Recommend(request, metadata=self.metadata, timeout=self.timeout_s)
                self.codes.append("OK")
                self.answers.append((start, response.model_version))
            except grpc.aio.AioRpcError as error:
                self.codes.append(error.code().name)


# ----------------------------------------------------------------------------- processes


def reserve_port() -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: the port stays ours for the whole run while
    gateways (grpc sets SO_REUSEPORT too) bind and rebind it; the kernel hands connections only to
    listening sockets."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def redis_child(gateway_pid: int) -> psutil.Process | None:
    """The gateway's private redis-server (a live child), if any."""
    for child in psutil.Process(gateway_pid).children():
        with contextlib.suppress(psutil.Error):
            if "redis-server" in child.name() and child.status() != psutil.STATUS_ZOMBIE:
                return child
    return None


@dataclass
class Deployment:
    workdir: Path
    secret: Path
    token: str
    repository: Path

    def gateway_args(self, *extra: str) -> list[str]:
        return [
            "--repository", str(self.repository), "--no-build-demo", "--jwt-secret-file", str(self.secret),
            "--edit-rate", "0", *extra,
        ]  # fmt: skip


@contextlib.contextmanager
def deployment(repository: Path) -> Iterator[Deployment]:
    workdir = Path(tempfile.mkdtemp(prefix="apron-faults-"))
    secret = workdir / "jwt_secret"
    secret.write_text(secrets.token_hex(32))
    token = auth.mint_token(auth.read_secret_file(secret).key, "faults", auth.Role.SERVICE, ttl_s=6 * 3600)
    yield Deployment(workdir, secret, token, repository.absolute())


def locust(target: str, dataset: Path, token: str, users: int, seconds: float, out: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "locust", "--config", str(ROOT / "loadtests" / "locust.conf"),
        "--host", target, "--dataset", str(dataset), "--token", token, "--users", str(users),
        "--spawn-rate", str(users), "--run-time", f"{int(seconds)}s", "--stop-timeout", "5",
        "--max-failure-ratio", "1", "--max-throttled-ratio", "1", "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
        "--json-file", str(out / "locust"),
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)


def locust_result(process: subprocess.Popen, out: Path) -> dict[str, dict[str, int]]:
    _, stderr = process.communicate(timeout=600)
    stats = out / "locust.json"
    if not stats.is_file():
        raise RuntimeError(f"locust wrote no stats (exit {process.returncode}):\n{stderr[-3000:]}")
    return {e["name"]: {"requests": e["num_requests"], "failures": e["num_failures"]} for e in json.loads(stats.read_text())}


# ----------------------------------------------------------------------------- scenarios


async def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"not within {timeout_s:.0f} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def redis_kill(args: argparse.Namespace, tags: list[str], history: list[str]) -> dict:

    with deployment(args.repository) as deploy:
        gateway = start_gateway(deploy.gateway_args("--redis-dir", str(deploy.workdir / "redis")), deploy.workdir)
        try:
            load = locust(gateway.target, args.dataset, deploy.token, args.users, 2 * args.seconds, args.out)
            audit = EditAudit(gateway.target, deploy.token, tags, history)
            await audit.start()
            await asyncio.sleep(args.seconds / 2)  # load running
            old = redis_child(gateway.process.pid)
            assert old is not None, "no private redis-server"
            acknowledged_before = audit.acknowledged()
            killed_at = time.monotonic()
            old.send_signal(signal.SIGKILL)
            restart_s = await _wait(
                lambda: (new := redis_child(gateway.process.pid)) is not None and new.pid != old.pid, 30, "a new redis-server"
            )
            reaped = not psutil.pid_exists(old.pid) or old.status() != psutil.STATUS_ZOMBIE
            await asyncio.sleep(args.seconds)  # load goes on
            await audit.stop()
            stats = locust_result(load, args.out)
            lost = await audit.lost()
        finally:
            gateway.terminate()
    recommend_failures = sum(v["failures"] for k, v in stats.items() if k.startswith("Recommend"))
    report = {
        "redis_restarted_after_s": round(restart_s, 3),
        "dead_redis_reaped": reaped,
        "edits_acknowledged": audit.acknowledged(),
        "edits_acknowledged_before_kill": acknowledged_before,
        "edits_failed": audit.failed(),
        "edit_failure_span_s": round(audit.failure_span_s(), 3),
        "acknowledged_edits_lost": lost,
        "recommend_failures": recommend_failures,
        "locust": stats,
        "seconds_after_kill": round(time.monotonic() - killed_at, 1),
    }
    report["passed"] = (
        not lost and recommend_failures == 0 and reaped and audit.failure_span_s() <= EDIT_FAILURE_BUDGET_S
    )
    return report


async def gateway_restart(args: argparse.Namespace, tags: list[str], history: list[str]) -> dict:

    with deployment(args.repository) as deploy:
        gateway_args = deploy.gateway_args("--redis-dir", str(deploy.workdir / "redis"))
        gateway = start_gateway(gateway_args, deploy.workdir)
        load = locust(gateway.target, args.dataset, deploy.token, args.users, args.seconds, args.out)
        audit = EditAudit(gateway.target, deploy.token, tags, history)
        await audit.start()
        await asyncio.sleep(args.seconds / 2)
        signalled = time.monotonic()
        exit_code = await asyncio.to_thread(gateway.terminate)  # SIGTERM: drain, stop Redis (AOF flushed)
        stopped_s = time.monotonic() - signalled
        await audit.stop()  # every edit sent to the old gateway has its answer (or failure) now
        stats = locust_result(load, args.out)
        restarted = start_gateway(gateway_args, deploy.workdir)
        try:
            lost = await audit.lost(restarted.target)
        finally:
            restarted.terminate()
    report = {
        "exit_code": exit_code,
        "stopped_after_s": round(stopped_s, 3),
        "edits_acknowledged": audit.acknowledged(),
        "acknowledged_edits_lost": lost,
        "locust": stats,
    }
    report["passed"] = exit_code == 0 and not lost and audit.acknowledged() > 0
    return report


async def rolling_restart(args: argparse.Namespace, tags: list[str], history: list[str]) -> dict:
    from serving.redis_process import RedisProcess

    with deployment(args.repository) as deploy, RedisProcess(data_dir=deploy.workdir / "redis", aof=True) as redis:
        ports = [reserve_port() for _ in range(2)]
        try:
            numbers = [sock.getsockname()[1] for sock in ports]
            common = deploy.gateway_args("--redis-url", redis.url, "--drain-delay-s", str(args.drain_delay_s), "--reuse-port")
            gateways = [start_gateway([*common, "--port", str(port)], deploy.workdir) for port in numbers]
            target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in numbers)
            load = locust(target, args.dataset, deploy.token, args.users, 2 * args.seconds, args.out)
            audit = EditAudit(target, deploy.token, tags, history)
            await audit.start()
            await asyncio.sleep(args.seconds / 2)
            rolled = []
            for i, port in enumerate(numbers):  # one at a time: the new process first, then the old drains
                started = time.monotonic()
                replacement = await asyncio.to_thread(start_gateway, [*common, "--port", str(port)], deploy.workdir)
                exit_code = await asyncio.to_thread(gateways[i].terminate)
                gateways[i] = replacement
                rolled.append({"port": port, "old_exit_code": exit_code, "seconds": round(time.monotonic() - started, 2)})
                await asyncio.sleep(args.seconds / 4)
            await asyncio.sleep(args.seconds / 2)
            await audit.stop()
            stats = locust_result(load, args.out)
            lost = await audit.lost()
            for gateway in gateways:
                gateway.terminate()
        finally:
            for sock in ports:
                sock.close()
    failures = sum(v["failures"] for v in stats.values())
    report = {
        "rolled": rolled,
        "edits_acknowledged": audit.acknowledged(),
        "edits_failed": audit.failed(),
        "acknowledged_edits_lost": lost,
        "locust_failures": failures,
        "locust": stats,
    }
    report["passed"] = failures == 0 and audit.failed() == 0 and not lost and all(r["old_exit_code"] == 0 for r in rolled)
    return report


async def rollout(args: argparse.Namespace, tags: list[str], history: list[str]) -> dict:
    """Version 1 -> 2 by SIGHUP, back to 1 by the admin RPC (pinned), to 2 again by the RPC, under
    Locust, edit-auditing and Recommend load; the repository must hold versions 1 and 2."""
    from serving.proto_gen.apron.v1 import admin_pb2 as admin
    from serving.proto_gen.apron.v1 import admin_pb2_grpc as admin_grpc

    with deployment(args.repository) as deploy:
        gateway = start_gateway(deploy.gateway_args("--redis-dir", str(deploy.workdir / "redis"), "--model-version", "1"), deploy.workdir)
        metadata = auth.bearer_metadata(deploy.token)
        steps: list[dict] = []
        try:
            load = locust(gateway.target, args.dataset, deploy.token, args.users, 5 * args.seconds, args.out)
            audit = EditAudit(gateway.target, deploy.token, tags, history)
            readers = RecommendLoad(gateway.target, deploy.token, history)
            await audit.start()
            await readers.start()
            async with grpc.aio.insecure_channel(gateway.target) as channel:
                stub = admin_grpc.ModelAdminStub(channel)

                async def serving() -> list[int]:
                    status = await stub.GetModelStatus(admin.GetModelStatusRequest(), metadata=metadata, timeout=60)
                    return [v.version for v in status.serving]

                async def load_model(what: str, **request: object) -> None:
                    start = time.monotonic()
                    status = await stub.LoadModel(admin.LoadModelRequest(**request), metadata=metadata, timeout=120)  # type: ignore[arg-type]
                    steps.append({"step": what, "serving": [v.version for v in status.serving], "seconds": round(time.monotonic() - start, 3)})

                await load_model("unpin version 1", version=1)
                await asyncio.sleep(args.seconds)
                start = time.monotonic()
                gateway.process.send_signal(signal.SIGHUP)
                while await serving() != [2]:
                    if time.monotonic() - start > 120:
                        raise RuntimeError("SIGHUP did not roll out version 2 within 120 s")
                    await asyncio.sleep(0.05)
                steps.append({"step": "SIGHUP: newest (2)", "serving": [2], "seconds": round(time.monotonic() - start, 3)})
                await asyncio.sleep(args.seconds)
                await load_model("rollback: version 1 pinned", version=1, pin=True)
                await asyncio.sleep(args.seconds)
                await load_model("rollout by RPC: newest", version=0)
                await asyncio.sleep(args.seconds)
            await audit.stop()
            await readers.stop()
            stats = locust_result(load, args.out)
            lost = await audit.lost()
        finally:
            gateway.terminate()
    failures = sum(v["failures"] for v in stats.values())
    report = {
        "steps": steps,
        "recommends": len(readers.codes),
        "recommend_failures": len([c for c in readers.codes if c != "OK"]),
        "versions_answered": sorted(set(readers.versions)),
        "edits_acknowledged": audit.acknowledged(),
        "edits_failed": audit.failed(),
        "acknowledged_edits_lost": lost,
        "locust_failures": failures,
        "locust": stats,
    }
    report["passed"] = not lost and failures == 0 and report["recommend_failures"] == 0 and audit.failed() == 0
    return report


def fill_aof(socket_path: Path, aof_mb: float) -> int:
    """Grow the AOF in the socket's directory to `aof_mb` MiB with edit-like keys (no TTL); how many keys."""
    import redis

    client = redis.Redis(unix_socket_path=str(socket_path))
    client.config_set("auto-aof-rewrite-percentage", 0)  # a command log to replay, as one grown between rewrites
    value = json.dumps({"kind": "scale", "value": 0.5}) + " " * 150  # about a stored edit's size
    written = 0
    try:
        while sum(p.stat().st_size for p in socket_path.parent.glob("appendonly*")) < aof_mb * 2**20:
            with client.pipeline(transaction=False) as pipe:
                for i in range(written, written + 20_000):
                    pipe.hset(f"apron:edits:{{reload-{i}}}", "tag", value)
                pipe.execute()
            written += 20_000
    finally:
        client.close()
    return written


def _latency(calls: list[Call], method: str) -> dict:
    mine = sorted(c.seconds for c in calls if c.method == method)
    if not mine:
        return {"calls": 0}
    codes: dict[str, int] = {}
    for c in calls:
        if c.method == method:
            codes[c.code] = codes.get(c.code, 0) + 1
    return {"calls": len(mine), "p50_ms": round(mine[len(mine) // 2] * 1000, 1), "max_ms": round(mine[-1] * 1000, 1), "codes": codes}


async def redis_reload(args: argparse.Namespace, tags: list[str], history: list[str]) -> dict:
    import redis

    with deployment(args.repository) as deploy:
        redis_dir = deploy.workdir / "redis"
        gateway = start_gateway(deploy.gateway_args("--redis-dir", str(redis_dir)), deploy.workdir)
        try:
            start = time.monotonic()
            keys = await asyncio.to_thread(fill_aof, redis_dir / "redis.sock", args.aof_mb)
            fill_s = time.monotonic() - start
            aof_bytes = sum(p.stat().st_size for p in redis_dir.glob("appendonly*"))
            probe = Probe(gateway.target, deploy.token, history)
            await probe.start()
            await asyncio.sleep(1.0)  # calls before the fault, for comparison
            old = redis_child(gateway.process.pid)
            assert old is not None, "no private redis-server"
            killed_at = time.monotonic()
            old.send_signal(signal.SIGKILL)
            client = redis.Redis(unix_socket_path=str(redis_dir / "redis.sock"), socket_timeout=1.0)

            def answers() -> bool:
                try:
                    return bool(client.ping())
                except redis.RedisError:
                    return False

            await _wait(lambda: (new := redis_child(gateway.process.pid)) is not None and new.pid != old.pid, 60, "a new redis-server")
            while not await asyncio.to_thread(answers):  # PONG once the AOF is replayed
                if time.monotonic() - killed_at > 600:
                    raise RuntimeError("the private redis-server did not answer within 600 s of the kill")
                await asyncio.sleep(0.05)
            back_at = time.monotonic()
            client.close()
            await asyncio.sleep(1.0)
            await probe.stop()
        finally:
            gateway.terminate()
    before = [c for c in probe.calls if c.start < killed_at]
    during = [c for c in probe.calls if killed_at <= c.start <= back_at]
    report = {
        "aof_mb": round(aof_bytes / 2**20, 1),
        "keys": keys,
        "fill_s": round(fill_s, 1),
        "redis_answering_after_kill_s": round(back_at - killed_at, 3),
        "before": {m: _latency(before, m) for m in ("ListPrototypes", "Recommend")},
        "during_restart_and_replay": {m: _latency(during, m) for m in ("ListPrototypes", "Recommend")},
    }
    report["passed"] = bool(during) and all(c.code == "OK" for c in probe.calls)
    return report


SCENARIOS = {
    "redis-kill": redis_kill, "redis-reload": redis_reload, "gateway-restart": gateway_restart, "rolling-restart": rolling_restart, "rollout": rollout,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--dataset", type=Path, required=True, help="processed dataset whose test users Locust simulates")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="the served model")
    parser.add_argument("--users", type=int, default=8, help="Locust users")
    parser.add_argument("--seconds", type=float, default=20.0, help="load before and after the fault (each about this)")
    parser.add_argument("--drain-delay-s", type=float, default=2.0, help="rolling-restart: the gateways' --drain-delay-s")
    parser.add_argument("--aof-mb", type=float, default=200.0, help="redis-reload: the AOF's size before the kill (MiB)")
    parser.add_argument("--out", type=Path, default=Path("loadtests/out/faults"))
    args = parser.parse_args(argv)
    args.out = args.out / args.scenario
    args.out.mkdir(parents=True, exist_ok=True)
    from serving.catalog import ServedModel

    meta = ServedModel.load(args.repository).metadata
    history = list(meta.prototype_item_ids[:5])  # the audit users' history: a few catalog items
    report = asyncio.run(SCENARIOS[args.scenario](args, meta.tag_names, history))
    report["scenario"] = args.scenario
    (args.out / f"{args.scenario}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "locust"}, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
