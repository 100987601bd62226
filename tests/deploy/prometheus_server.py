"""A real Prometheus (Debian's `prometheus` package) on a free port, for tests: a context manager that
writes the configuration, starts the server, waits for /-/ready and stops it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.net import free_port


def require_tool(name: str) -> str:
    """The tool's path; without it, fail in CI (scripts/install_system.sh installs it) and skip locally."""
    path = shutil.which(name)
    if path:
        return path
    message = f"`{name}` is not installed: run scripts/install_system.sh (Debian's prometheus package)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Prometheus:
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data` (raises on a non-success status)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        return body["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        return self.api("query", query=expression)["result"]


PORT_ATTEMPTS = 3


@contextlib.contextmanager
def run_prometheus(config: dict[str, Any], workdir: Path, timeout_s: float = 120.0) -> Iterator[Prometheus]:
    """Start `prometheus` with `config` (rule_files are resolved relative to `workdir`)."""
    binary = require_tool("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = workdir / "prometheus.log"
    # Prometheus cannot report a port 0 it bound: a free port is picked, and if another program
    # takes it before Prometheus binds it, the start is retried on another.
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                if attempt + 1 < PORT_ATTEMPTS and "address already in use" in log.read_text():
                    break
                raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise TimeoutError(f"prometheus not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        if process.poll() is None:
            break
    try:
        yield Prometheus(url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
