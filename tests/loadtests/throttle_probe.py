"""Run in a subprocess by test_throttled.py (importing loadtests.locustfile monkey-patches the
interpreter for gevent, which pytest's own process must not get): drives `ApronUser.call` with a
fake stub that sheds the first calls and a fake clock, and prints as JSON what Locust was told.

    python -m tests.loadtests.throttle_probe SHEDS RETRIES"""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import grpc

from loadtests import locustfile

ATTEMPT_MS = 5.0  # what each attempt takes on the fake clock
RETRY_AFTER_MS = 200


class Clock:
    """time.perf_counter and gevent.sleep on one fake timeline: no real sleep, exact sums."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Shed(grpc.RpcError, grpc.Call):
    """What the gateway (or its front) answers a call it sheds."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((locustfile.RETRY_AFTER_KEY, str(RETRY_AFTER_MS)),)

    def details(self) -> str:
        return "overloaded"

    def initial_metadata(self) -> tuple:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


def main(sheds: int, retries: int) -> dict[str, Any]:
    clock = Clock()
    # the module's own names only: gevent's shutdown still needs the real sleep
    locustfile.time = types.SimpleNamespace(perf_counter=clock.perf_counter)  # type: ignore[assignment]
    locustfile.gevent = types.SimpleNamespace(sleep=clock.sleep)  # type: ignore[assignment]
    fired: list[dict[str, Any]] = []
    events = types.SimpleNamespace(request=types.SimpleNamespace(fire=lambda **event: fired.append(event)))
    sent = {"n": 0}

    def method(request: Any, metadata: Any, timeout: float) -> Any:
        sent["n"] += 1
        clock.now += ATTEMPT_MS / 1000.0
        if sent["n"] <= sheds:
            raise Shed()
        return types.SimpleNamespace(ByteSize=lambda: 10)

    user = types.SimpleNamespace(
        options=types.SimpleNamespace(max_throttled_retries=retries, rpc_timeout=10.0),
        metadata=(),
        environment=types.SimpleNamespace(events=events),
    )
    response = locustfile.ApronUser.call(user, "Recommend cached", method, None)  # type: ignore[arg-type]
    options = types.SimpleNamespace(max_failure_ratio=1.0, max_p99_ms=0.0, max_throttled_ratio=0.5)
    total = types.SimpleNamespace(num_requests=len(fired), fail_ratio=0.0, get_response_time_percentile=lambda q: 0.0)
    environment = types.SimpleNamespace(parsed_options=options, stats=types.SimpleNamespace(total=total))
    return {
        "attempt_ms": ATTEMPT_MS,
        "retry_after_ms": RETRY_AFTER_MS,
        "answered": response is not None,
        "attempts": sent["n"],
        "slept_s": sum(clock.slept),
        "fired": [
            {"name": e["name"], "response_time": e["response_time"], "length": e["response_length"],
             "exception": None if e["exception"] is None else str(e["exception"])}
            for e in fired
        ],  # fmt: skip
        "throttled": dict(locustfile.throttled),
        "counted_attempts": dict(locustfile.attempts),
        "threshold_failures_at_half": locustfile.threshold_failures(environment),  # type: ignore[arg-type]
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
