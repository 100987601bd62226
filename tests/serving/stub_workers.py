"""A `--workers` parent (`serving.workers.run_workers`) over stub workers whose drain ends only when
the test says so, for the parent's signal handling during the drain (test_workers.py).

Run as `python -m tests.serving.stub_workers DIR`: each worker writes `ready-<pid>` (holding the
metrics directory the parent made for it) once it "serves" and `draining-<pid>` once it got the stop
signal, then waits for SIGUSR1, which the test never sends: only the parent can end the drain."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from serving.config import ServingConfig
from serving.workers import MULTIPROC_ENV, run_workers

GRACE_S = 3600.0  # a drain the parent would wait out for an hour: the test must not depend on it


def draining_worker(config: ServingConfig, ready: Any) -> None:
    directory = Path(os.environ["STUB_WORKERS_DIR"])
    # signals blocked and taken with sigwait: no handler races the files below
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})
    (directory / f"ready-{os.getpid()}").write_text(os.environ[MULTIPROC_ENV])
    ready.set()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    (directory / f"draining-{os.getpid()}").write_text("")
    signal.sigwait({signal.SIGUSR1})


def main(directory: str) -> None:
    os.environ["STUB_WORKERS_DIR"] = directory
    config = ServingConfig(workers=2, host="127.0.0.1", port=0, http_port=-1, metrics_port=-1, shutdown_grace_s=GRACE_S)
    # by its module's name, not __main__'s: the spawned workers import it
    from tests.serving.stub_workers import draining_worker as worker

    run_workers(SimpleNamespace(config=config), None, worker)  # type: ignore[arg-type]
    print("stopped", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
