"""`python -m benchmarks.gateway_process`: `apron serve` with its configuration from APRON_* variables
only (serving/config.py), so the benchmark can run it, plain or under pyinstrument, in its own process.
Once every worker serves it prints their pids (`worker pids: ...`), which the benchmark waits for."""

from serving.config import ServingConfig
from serving.resources import Serving
from serving.runtime import serve


def announce(serving: Serving) -> None:
    print(f"serving on port {serving.port}; worker pids: {' '.join(map(str, serving.worker_pids))}", flush=True)


if __name__ == "__main__":
    serve(ServingConfig.from_env(), announce)
