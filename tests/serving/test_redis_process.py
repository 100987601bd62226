"""The private redis-server (serving/redis_process.py): a Unix socket of its own, AOF persists, one
server per data directory, and a killed server is reaped and restarted with its data."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from serving.redis_process import RedisProcess, RedisServerError, exit_with_parent_prefix
from tests.polling import wait_until


def test_private_redis_with_aof_keeps_data_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    with RedisProcess(data_dir=data_dir, aof=True) as server:
        client = redis.Redis.from_url(server.url)
        client.hset("apron:edits:alice", mapping={"jazz": '{"kind": "scale", "value": 0.0}'})
        client.close()
    assert data_dir.exists()  # a given directory is kept
    with RedisProcess(data_dir=data_dir, aof=True) as server:
        client = redis.Redis.from_url(server.url)
        assert client.hgetall("apron:edits:alice") == {b"jazz": b'{"kind": "scale", "value": 0.0}'}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        # each write on disk before Redis replies: everysec may postpone it past the reply (redis_process.py)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.close()


def test_temp_dir_is_removed_and_sockets_differ() -> None:
    with RedisProcess() as first, RedisProcess() as second:
        assert first.socket_path != second.socket_path
        temp_dir = first.data_dir
        assert redis.Redis.from_url(first.url).ping()
        assert redis.Redis(unix_socket_path=str(second.socket_path)).ping()
    assert temp_dir is not None and not temp_dir.exists()


def test_one_server_per_data_directory(tmp_path: Path) -> None:
    with RedisProcess(data_dir=tmp_path / "redis"), pytest.raises(RedisServerError, match="--redis-dir"):
        RedisProcess(data_dir=tmp_path / "redis").start()
    with RedisProcess(data_dir=tmp_path / "redis") as again:  # free again once the first stopped
        assert redis.Redis.from_url(again.url).ping()


def test_the_server_holds_its_directory_until_it_is_gone(tmp_path: Path) -> None:
    """The redis-server holds the data directory's lock with its owner: were the owner killed
    without its cleanup (here: its lock closed by hand), no second server starts on the directory
    while the first one lives."""
    server = RedisProcess(data_dir=tmp_path / "redis").start()
    try:
        assert server._lock is not None
        os.close(server._lock)  # what the owner's death does to its own descriptor
        server._lock = None
        with pytest.raises(RedisServerError, match="another process runs a redis-server"):
            RedisProcess(data_dir=tmp_path / "redis").prepare()
    finally:
        server.stop()
    RedisProcess(data_dir=tmp_path / "redis").prepare().stop()  # free once the server is gone


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_server_whose_owner_is_killed_shuts_down(tmp_path: Path) -> None:
    """A gateway killed by SIGKILL runs no cleanup: its redis-server gets SIGTERM from the kernel
    (PR_SET_PDEATHSIG through setpriv) and exits, freeing the directory, instead of living on."""
    if not exit_with_parent_prefix():
        pytest.skip("no setpriv here: the server would outlive a killed owner")
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from serving.redis_process import RedisProcess; "
         f"server = RedisProcess(data_dir={str(tmp_path / 'redis')!r}).start(); print(server.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        pid = int(owner.stdout.readline())  # type: ignore[union-attr]
        owner.kill()
        owner.wait()
        wait_until(lambda: not alive(pid), "the redis-server of a killed owner exits")
        RedisProcess(data_dir=tmp_path / "redis").prepare().stop()  # the directory is free
    finally:
        owner.kill()


def test_killed_server_is_reaped_and_restarted_with_its_data(tmp_path: Path) -> None:
    with RedisProcess(data_dir=tmp_path / "redis", aof=True) as server:
        client = redis.Redis.from_url(server.url)
        client.set("acknowledged", "yes")  # the reply came: Redis wrote it to its AOF first
        dead = server.pid
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        server.process.wait()  # type: ignore[union-attr]
        assert not server.running()
        server.restart()
        assert server.running() and server.pid != dead and server.restarts == 1
        assert client.get("acknowledged") == b"yes"  # same socket: the old client reconnects
        client.close()


def test_long_data_directory_gets_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with RedisProcess(data_dir=deep) as server:
        assert len(str(server.socket_path)) <= 100 and redis.Redis.from_url(server.url).ping()


def test_an_interrupted_start_leaves_no_server_and_the_data_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal while redis-server starts (SIGTERM unwinds `apron serve` like this) kills it: no orphan
    holding the AOF. The data directory is the user's alone (0700), its files 0600."""
    import serving.redis_process as module

    def interrupted(_address: object) -> bool:
        raise KeyboardInterrupt

    server = RedisProcess(data_dir=tmp_path / "redis", aof=True)
    monkeypatch.setattr(module, "_ping", interrupted)
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert server.process is not None and server.process.poll() is not None  # killed and reaped
    server.stop(remove_data=False)  # the exiting process's part: the lock goes with it
    monkeypatch.undo()
    with RedisProcess(data_dir=tmp_path / "redis", aof=True) as again:  # the directory's lock is free again
        assert redis.Redis.from_url(again.url).set("k", "v")
    assert (tmp_path / "redis").stat().st_mode & 0o777 == 0o700
    files = [p for p in (tmp_path / "redis").rglob("*") if p.is_file() and p.name != "gateway.lock"]
    assert files and all(p.stat().st_mode & 0o077 == 0 for p in files), [(p.name, oct(p.stat().st_mode)) for p in files]


def test_a_sigterm_just_after_the_fork_still_leaves_no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM delivered the moment `Popen` returns, before `start` holds the process (a race
    `apron serve` met when stopped while starting): the handler's exception still comes out of
    `start`, and the child is killed, not orphaned."""
    import subprocess

    import serving.redis_process as module

    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen_then_sigterm(*args: object, **kwargs: object) -> subprocess.Popen:
        process = real_popen(*args, **kwargs)  # type: ignore[call-overload]
        started.append(process)
        signal.raise_signal(signal.SIGTERM)  # a handler raising here would skip the caller's record
        return process

    def unwind(signum: int, _frame: object) -> None:  # as runtime.unwinding_on_sigterm's
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        monkeypatch.setattr(module.subprocess, "Popen", popen_then_sigterm)
        server = RedisProcess(data_dir=tmp_path / "redis")
        with pytest.raises(SystemExit):
            server.start()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(started) == 1 and started[0].poll() is not None  # killed and reaped
    assert signal.getsignal(signal.SIGTERM) is previous  # the handlers are back as they were
    server.stop()


def test_a_start_waits_as_long_as_the_server_makes_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large AOF's replay may leave PING unanswered for long (redis-server answers between
    chunks): while the process uses CPU, no timeout gives up on it; one that neither answers nor
    works for `timeout` is stopped. (`_ping` and the CPU clock stand in for a replay that long.)"""
    import itertools

    import serving.redis_process as module

    polls, ticks = itertools.count(), itertools.count()
    monkeypatch.setattr(module, "_ping", lambda _address: next(polls) >= 50)  # silent for 50 polls
    monkeypatch.setattr(module, "_cpu_ticks", lambda _pid: next(ticks))  # working all along
    server = RedisProcess(data_dir=tmp_path / "busy")
    try:
        server.start(timeout=0.0)
        assert server.running()
    finally:
        server.stop()

    monkeypatch.setattr(module, "_ping", lambda _address: False)
    monkeypatch.setattr(module, "_cpu_ticks", lambda _pid: 7)  # alive, doing nothing
    stuck = RedisProcess(data_dir=tmp_path / "stuck")
    with pytest.raises(RedisServerError, match="nor made progress"):
        stuck.start(timeout=0.0)
    assert stuck.process is None  # stopped, not left running


def test_the_directory_lock_is_had_once_its_holder_lets_go(tmp_path: Path) -> None:
    """`prepare` waits up to LOCK_WAIT_S for the lock (a just-exited server's last threads may still
    hold it), and no longer: one held throughout is another server's."""
    from serving.redis_process import _flock_within

    held = os.open(tmp_path / "gateway.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    fd = os.open(tmp_path / "gateway.lock", os.O_RDWR)
    try:
        assert not _flock_within(fd, 0.0)  # held: refused once the wait is over
        os.close(held)  # the holder lets go
        assert _flock_within(fd, 0.0)
    finally:
        os.close(fd)
