"""Start a real tritonserver on free ports and wait until it is ready (tests, demos, the gateway's
integration tests).

By default it runs the `tritonserver` of the nvidia-pytriton wheel that `scripts/install.sh`
puts in `third_party/pytriton` (Triton 2.51, python backend only). What that binary needs, found by
trying it:

- `LD_LIBRARY_PATH` with the wheel's `nvidia_pytriton.libs` (libcudart etc. are bundled there; no
  GPU is needed to start).
- a backend directory whose `python/` holds the wheel's `libtriton_python.so` and
  `triton_python_backend_utils.py` *and* the python stub of our Python version
  (`python_backend_stubs/3.11/triton_python_backend_stub`); the wheel keeps the stubs apart, so
  a temporary backend directory of symlinks is assembled here.
- the stub links against the system `libpython3.11` and so sees Debian's python3.11 `sys.path`,
  not the venv's: `PYTHONPATH` is set to this interpreter's site-packages so that the served
  `model.py` can import numpy and onnxruntime. (Under a tritonserver container, whose python
  already has them, pass `python_path=()`.)

Model control: `--model-control-mode=poll` (`model_control_args`), the mode deploy/ runs too.
Triton rescans the repository every `--repository-poll-secs` and loads the version folders that
`apron export` adds (and unloads those its `version_policy` drops), so a new version is served
beside the old one without a restart and without anyone calling Triton. Why poll rather than
explicit mode + the repository API's load: with poll the export alone is the whole rollout on
Triton's side, for any number of Triton replicas reading one volume, and the export job needs no
Triton address. Triton's docs advise against poll in production because a poll may observe a
half-made change; `apron export` never makes one: each model's new version folder appears whole
in one rename, a config.pbtxt is never rewritten (a differing one is refused), and the root
metadata (which the gateway follows) is renamed in last. A poll can still fall between two
models' renames and load the new profile one interval before the new scorer, which is why the
gateway waits for Triton's readiness of every model of its version. (Copying a repository onto
a volume by hand must keep that rule: copy a version folder beside the model under a
non-numeric name, which Triton ignores, then rename it.) Cost: up to one interval before a new
version starts loading.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.net import free_ports

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTRITON_ROOT = PROJECT_ROOT / "third_party" / "pytriton"
TRITONSERVER = PYTRITON_ROOT / "pytriton" / "tritonserver" / "bin" / "tritonserver"
MODEL_CONTROL_MODE = "poll"  # deploy/ (compose, k8s) runs the same mode: tests/deploy checks it
DEPLOY_POLL_SECS = 5  # deploy/'s --repository-poll-secs: a new version loads within 5 s of its export
TEST_POLL_SECS = 1  # this helper's default: tests wait on readiness, a short interval keeps them quick


def model_control_args(poll_secs: int) -> list[str]:
    return [f"--model-control-mode={MODEL_CONTROL_MODE}", f"--repository-poll-secs={poll_secs}"]


class TritonServerError(RuntimeError):
    """tritonserver is missing, exited, or did not become ready in time (the log tail says why)."""


@dataclass(frozen=True)
class TritonServer:
    grpc_url: str  # "127.0.0.1:PORT" (tritonclient.grpc's form)
    http_url: str  # "127.0.0.1:PORT" (tritonclient.http's form)
    metrics_url: str  # "http://127.0.0.1:PORT/metrics"
    repository: Path
    log_path: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


def python_backend_directory(target: Path, python_version: str = "3.11") -> Path:
    """Assemble `<target>/python/` = the wheel's python backend + the stub for `python_version`."""
    server_root = PYTRITON_ROOT / "pytriton" / "tritonserver"
    backend = target / "python"
    backend.mkdir(parents=True, exist_ok=True)
    stub = server_root / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    sources = [*(server_root / "backends" / "python").glob("*.*"), stub]
    for source in sources:
        if not source.exists():
            raise TritonServerError(f"{source} is missing: run scripts/install.sh (installs nvidia-pytriton)")
        link = backend / source.name
        if not link.exists():
            link.symlink_to(source)
    return target


def server_environment(python_path: Sequence[str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    libs = str(PYTRITON_ROOT / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
    if python_path is None:
        python_path = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    paths = list(dict.fromkeys([*python_path, *env.get("PYTHONPATH", "").split(os.pathsep)]))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


START_ATTEMPTS = 3
# Starts that failed for a reason of the moment, not of the repository, and are tried again: a port
# taken between picking it and tritonserver binding it, and the python backend's intermittent abort
# while it starts the models' stubs (`boost::interprocess::lock_exception`, SIGABRT: seen once in a
# clean-clone CI run on the loaded 2-core machine; triton-inference-server/server#8882 is open on it).
RETRIED_AT_START = ("already in use", "boost::interprocess::lock_exception")


@contextlib.contextmanager
def run_triton_server(
    repository: str | Path,
    *,
    tritonserver: str | Path | None = None,
    backend_directory: str | Path | None = None,
    python_path: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 120.0,
    log_verbose: int = 0,
    poll_secs: int = TEST_POLL_SECS,
) -> Iterator[TritonServer]:
    """Run tritonserver on `repository` until the block exits; yields its URLs once every model is
    ready (strict readiness: /v2/health/ready is 200 only when all models loaded). It polls the
    repository every `poll_secs` (model-control mode poll): versions exported later get loaded.

    Raises TritonServerError with the server's log tail if it exits or is not ready in time."""
    binary = Path(tritonserver or os.environ.get("APRON_TRITONSERVER") or TRITONSERVER)
    if not binary.is_file():
        raise TritonServerError(f"tritonserver not found at {binary}: run scripts/install.sh")
    repository = Path(repository).absolute()
    workdir = Path(tempfile.mkdtemp(prefix="apron-triton-"))
    log_path = workdir / "tritonserver.log"
    backends = (
        Path(backend_directory) if backend_directory else python_backend_directory(workdir / "backends")
    )
    server: TritonServer | None = None
    try:
        # The ports are picked free, then bound by tritonserver (it cannot bind port 0 and say which
        # it got): another program may take one in between. Then the start is retried on new ports,
        # as it is after the python backend's abort at start (RETRIED_AT_START).
        for attempt in range(START_ATTEMPTS):
            grpc_port, http_port, metrics_port = free_ports(3)
            command = [
                str(binary),
                f"--model-repository={repository}",
                f"--backend-directory={backends}",
                f"--grpc-port={grpc_port}",
                f"--http-port={http_port}",
                f"--metrics-port={metrics_port}",
                "--http-address=127.0.0.1",
                "--grpc-address=127.0.0.1",
                "--metrics-address=127.0.0.1",
                "--allow-gpu-metrics=false",
                f"--log-verbose={log_verbose}",
                *model_control_args(poll_secs),
                *extra_args,
            ]
            with open(log_path, "wb") as log:
                # a session (process group) of its own, with its python stubs: `_stop` ends the group
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=server_environment(python_path), cwd=workdir,
                    start_new_session=True,
                )  # fmt: skip
            server = TritonServer(
                grpc_url=f"127.0.0.1:{grpc_port}",
                http_url=f"127.0.0.1:{http_port}",
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                repository=repository,
                log_path=log_path,
                process=process,
            )
            try:
                _wait_ready(server, http_port, startup_timeout)
                break
            except TritonServerError:
                _stop(process)
                tail = server.log_tail()
                if attempt + 1 < START_ATTEMPTS and any(reason in tail for reason in RETRIED_AT_START):
                    continue
                raise
        assert server is not None
        yield server
    finally:
        if server is not None:
            _stop(server.process)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(server: TritonServer, http_port: int, startup_timeout: float) -> None:
    deadline = time.monotonic() + startup_timeout
    while not _ready(http_port):
        if server.process.poll() is not None:
            raise TritonServerError(f"tritonserver exited with code {server.process.returncode}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise TritonServerError(f"tritonserver not ready after {startup_timeout:.0f} s:\n{server.log_tail()}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: Triton unloads models and stops its python stubs
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # A stub outlives a server that aborted or was killed: orphaned, it waits on a lock of their
    # shared memory for good (one was found 18 minutes after a CI run). What is left of the group goes.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":  # `python -m export.triton_server REPOSITORY`: serve until Ctrl-C
    with run_triton_server(sys.argv[1]) as running:
        print(f"grpc {running.grpc_url}  http {running.http_url}  metrics {running.metrics_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            running.process.wait()
