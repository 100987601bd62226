"""The fault scenarios of loadtests/faults.py on real processes, under a smaller load (the edit
audit and Recommend clients; RELIABILITY.md has the runs under Locust):

- kill -9 of the gateway's private redis-server: the gateway reaps it and starts a new one; no
  Recommend fails, no acknowledged edit is lost, edits are acknowledged again;
- SIGTERM of the gateway, then a new one on the same data directory: every acknowledged edit is there;
- a rolling restart of two gateways sharing one Redis, clients using the service config (round
  robin, NOT_SERVING skipped, UNAVAILABLE retried): no request fails, no acknowledged edit is lost.

Every wait is on a condition (counts of acknowledged edits, a new process), never on the clock."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import psutil
import pytest

from loadtests.faults import EditAudit, RecommendLoad, redis_child, reserve_port
from loadtests.gateway_process import start_gateway
from serving import auth
from serving.catalog import ServedModel
from serving.redis_process import RedisProcess
from tests.polling import eventually
from tests.reliability.conftest import Tokens
from tests.serving.conftest import liked_history

pytestmark = pytest.mark.timeout(420)


def gateway_args(repository: Path, tokens: Tokens, *extra: str) -> list[str]:
    return ["--repository", str(repository), "--no-build-demo", "--jwt-secret-file", str(tokens.path), "--edit-rate", "0", *extra]


async def load(target: str, tokens: Tokens, repository: Path, main_tags) -> tuple[EditAudit, RecommendLoad]:
    token = auth.mint_token(tokens.secret, "faults", auth.Role.SERVICE)
    history = liked_history(main_tags, 0, 1)
    # client deadlines far beyond any call on a loaded machine: a failure here is a real one
    audit = EditAudit(target, token, ServedModel.load(repository).metadata.tag_names, history, timeout_s=120)
    readers = RecommendLoad(target, token, history, timeout_s=120)
    await audit.start()
    await readers.start()
    return audit, readers


async def more_edits(audit: EditAudit, count: int, what: str) -> None:
    target = audit.acknowledged() + count
    await eventually(lambda: audit.acknowledged() >= target, what, timeout=120)


async def test_private_redis_killed_under_load(python_repository: Path, tokens: Tokens, main_tags, tmp_path: Path) -> None:
    gateway = start_gateway(gateway_args(python_repository, tokens, "--redis-dir", str(tmp_path / "redis")), tmp_path)
    try:
        audit, readers = await load(gateway.target, tokens, python_repository, main_tags)
        try:
            await more_edits(audit, 30, "edits acknowledged before the fault")
            old = redis_child(gateway.process.pid)
            assert old is not None
            old.send_signal(signal.SIGKILL)
            await eventually(
                lambda: (new := redis_child(gateway.process.pid)) is not None and new.pid != old.pid,
                "the gateway started a new redis-server",
            )
            assert not psutil.pid_exists(old.pid) or old.status() != psutil.STATUS_ZOMBIE  # reaped
            await more_edits(audit, 30, "edits acknowledged after the restart")
            await eventually(lambda: readers.codes.count("OK") > 10, "Recommends answered")
        finally:
            await audit.stop()
            await readers.stop()
        assert set(readers.codes) == {"OK"}, f"failed Recommends: {[c for c in readers.codes if c != 'OK']}"
        assert await audit.lost() == []
        assert "the private redis-server died" in gateway.log()
    finally:
        gateway.terminate()


async def test_gateway_sigterm_and_restart_keeps_every_acknowledged_edit(
    python_repository: Path, tokens: Tokens, main_tags, tmp_path: Path
) -> None:
    args = gateway_args(python_repository, tokens, "--redis-dir", str(tmp_path / "redis"))
    gateway = start_gateway(args, tmp_path)
    try:
        audit, readers = await load(gateway.target, tokens, python_repository, main_tags)
        await more_edits(audit, 30, "edits acknowledged before SIGTERM")
        exit_code = await asyncio.to_thread(gateway.terminate)  # under load: drains, stops Redis (AOF flushed)
        await audit.stop()
        await readers.stop()
    finally:
        gateway.terminate()
    assert exit_code == 0, gateway.log_tail()
    restarted = start_gateway(args, tmp_path)  # the same data directory
    try:
        assert await audit.lost(restarted.target) == []
    finally:
        restarted.terminate()


async def test_rolling_restart_of_two_gateways_fails_no_request(
    python_repository: Path, tokens: Tokens, main_tags, tmp_path: Path
) -> None:
    ports = [reserve_port() for _ in range(2)]  # held for the whole test: the gateways rebind them
    gateways = []
    try:
        with RedisProcess(data_dir=tmp_path / "redis", aof=True) as redis:
            numbers = [sock.getsockname()[1] for sock in ports]
            common = gateway_args(python_repository, tokens, "--redis-url", redis.url, "--drain-delay-s", "1", "--reuse-port")
            gateways = [start_gateway([*common, "--port", str(port)], tmp_path / f"g{i}") for i, port in enumerate(numbers)]
            target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in numbers)
            audit, readers = await load(target, tokens, python_repository, main_tags)
            try:
                await more_edits(audit, 30, "edits acknowledged before the roll")
                for i, port in enumerate(numbers):  # the new process binds the port, then the old one drains
                    # in threads: the load keeps running on this event loop meanwhile
                    replacement = await asyncio.to_thread(start_gateway, [*common, "--port", str(port)], tmp_path / f"g{i}-new")
                    assert await asyncio.to_thread(gateways[i].terminate) == 0, gateways[i].log_tail()
                    gateways[i] = replacement
                    await more_edits(audit, 30, f"edits acknowledged after rolling gateway {i}")
            finally:
                await audit.stop()
                await readers.stop()
            assert audit.failed() == 0, [f for w in audit.writers for f in w.failures]
            assert set(readers.codes) == {"OK"}, f"failed Recommends: {[c for c in readers.codes if c != 'OK']}"
            assert await audit.lost() == []
    finally:
        for gateway in gateways:
            gateway.terminate()
        for sock in ports:
            sock.close()
