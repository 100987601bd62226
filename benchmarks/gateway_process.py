"""`python -m benchmarks.gateway_process`: `apron serve` with its configuration from APRON_* variables
only (serving/config.py), so the benchmark can run it, plain or under pyinstrument, in its own process.
Once every worker serves it prints their pids (`worker pids: ...`), which the benchmark waits for.

With `BENCH_CALL_LOG` set to a path, each finished call appends `method start end` there
(`serving.stages.log_calls`; one line-buffered write per call): the request-path benchmark splits
the time outside the stages with it (`request_path.call_split`).

With `BENCH_ALWAYS_DEFER=1` the micro-batchers and the Redis pipe defer to the end of the loop turn
even when nothing else is ready in it (`serving/loop_turn.py`), as they did before 2026-12-04:
`benchmarks/loop_turn_cost.py`'s reference."""

import os

from benchmarks.request_path import ALWAYS_DEFER_ENV, CALL_LOG_ENV
from serving import batching, redis_pipe, stages
from serving.config import ServingConfig
from serving.resources import Serving
from serving.runtime import serve


def never_alone(loop: object) -> bool:
    return False


def announce(serving: Serving) -> None:
    print(f"serving on port {serving.port}; worker pids: {' '.join(map(str, serving.worker_pids))}", flush=True)


if __name__ == "__main__":
    if call_log := os.environ.get(CALL_LOG_ENV):
        stages.log_calls(open(call_log, "a", buffering=1))  # noqa: SIM115 (the process's whole life)
    if os.environ.get(ALWAYS_DEFER_ENV) == "1":
        batching.nothing_else_ready = redis_pipe.nothing_else_ready = never_alone
    serve(ServingConfig.from_env(), announce)
