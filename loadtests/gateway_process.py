"""`apron serve` as a real subprocess, for the fault, shedding and soak runs (`loadtests/`) and the
tests that signal it or must survive what a client sends (installed with the package, so the
`loadtests` commands run outside a checkout too):
started with flags on port 0 (the ports it bound are read back from its log), ready when its gRPC
health check says SERVING, stopped with SIGTERM (then SIGKILL if it hangs)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# where this code was imported from (a checkout, or site-packages): the gateway runs the same code
CODE_ROOT = Path(__file__).resolve().parents[1]
APRON = [sys.executable, "-m", "cli"]
# the text log line `start()` writes once it serves: the ports it bound
SERVING_LINE = re.compile(r"apron\.gateway: serving port=(\d+) metrics_port=(\d+|None)")


class GatewayProcessError(RuntimeError):
    pass


@dataclass
class GatewayProcess:
    process: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`, from its /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def health(self, timeout: float = 2.0) -> int | None:
        """The health check's status, or None when the server does not answer."""
        return health_status(self.target, timeout)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit code (SIGKILL after `timeout`, which fails the caller's check)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def run_gateway(
    args: Sequence[str], log_dir: Path, startup_timeout: float = 120.0, *, user: tuple[int, int] | None = None
) -> Iterator[GatewayProcess]:
    """`apron serve --port 0 --metrics-port 0 ARGS` (later flags win) until the block exits."""
    gateway = start_gateway(args, log_dir, startup_timeout, user=user)
    try:
        yield gateway
    finally:
        gateway.terminate()


def start_gateway(
    args: Sequence[str], log_dir: Path, startup_timeout: float = 120.0, *, user: tuple[int, int] | None = None,
    new_session: bool = False,
) -> GatewayProcess:
    """A started `apron serve` (the caller stops it: `terminate()`), SERVING. `user` (uid, gid):
    run it as that user, without supplementary groups, as a container's USER does (needs root).
    `new_session`: in a session and process group of its own, as a shell runs a command (a signal
    to its group, as a terminal's Ctrl-C sends, reaches it and its children, not the caller)."""
    # --request-timeout-s: the server's own deadline far beyond any call on a loaded CI machine (ARGS may lower it)
    command = [*APRON, "serve", "--port", "0", "--metrics-port", "0", "--log-format", "text", "--request-timeout-s", "120", *args]
    log_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=log_dir, prefix="gateway-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CODE_ROOT), os.environ.get("PYTHONPATH")]))}
    as_user: dict[str, object] = {}
    if user is not None:
        setpriv = shutil.which("setpriv")
        if setpriv:  # util-linux drops to the user in the child, so Popen can vfork
            command = [setpriv, f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", "--", *command]
        else:
            # Popen then forks, not vforks, and grpc core's pthread_atfork handlers stop and restart
            # its threads around the fork in this process (grpcio is built with fork support)
            as_user = {"user": user[0], "group": user[1], "extra_groups": []}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir, env=env, start_new_session=new_session, **as_user  # type: ignore[arg-type]
        )
    try:
        port, metrics_port = wait_serving(process, log_path, startup_timeout)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    return GatewayProcess(process, port, metrics_port, log_path)


def health_status(target: str, timeout: float = 2.0) -> int | None:
    """The gRPC health check's status at `target`, or None when nothing answers."""
    with grpc.insecure_channel(target) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError:
            return None


def wait_serving(process: subprocess.Popen, log_path: Path, timeout: float) -> tuple[int, int]:
    """Poll until the gateway logged the ports it bound and reports SERVING there; its (port,
    metrics port). GatewayProcessError with the log tail if the process exits first or `timeout`
    passes."""
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace")
        found = SERVING_LINE.search(text)
        # ipv4: the address as it is, no DNS resolver set up for each poll
        if found and health_status(f"ipv4:127.0.0.1:{found[1]}") == health_pb2.HealthCheckResponse.SERVING:
            return int(found[1]), int(found[2]) if found[2] != "None" else -1
        tail = "\n".join(text.splitlines()[-40:])
        if process.poll() is not None:
            raise GatewayProcessError(f"apron serve exited with {process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise GatewayProcessError(f"apron serve not SERVING after {timeout:.0f} s:\n{tail}")
        time.sleep(0.1)
