"""loadtests/locustfile.py's `ApronUser.call` against a stub that sheds (RESOURCE_EXHAUSTED +
retry-after-ms): Locust is told of ONE request per call, timed across every attempt and retry
wait (what the caller waited), shed attempts are counted apart, and `--max-throttled-ratio` fails
a run whose attempts were shed beyond it. In a subprocess (tests/loadtests/throttle_probe.py):
the locustfile patches the interpreter for gevent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# the probe's fake stub: each attempt takes ATTEMPT_MS on its clock, a shed asks for RETRY_AFTER_MS
# (not imported from it: importing the locustfile would patch this process for gevent)
ATTEMPT_MS, RETRY_AFTER_MS = 5.0, 200

ROOT = Path(__file__).resolve().parents[2]


def probe(sheds: int, retries: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.loadtests.throttle_probe", str(sheds), str(retries)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    assert (seen["attempt_ms"], seen["retry_after_ms"]) == (ATTEMPT_MS, RETRY_AFTER_MS)
    return seen


def test_a_call_shed_then_answered_is_one_request_timed_with_its_retries() -> None:
    seen = probe(sheds=3, retries=100)
    assert seen["answered"] and seen["attempts"] == 4
    (event,) = seen["fired"]  # one request for the call, not one for its last attempt
    assert event["exception"] is None and event["length"] == 10 and event["name"] == "Recommend cached"
    assert seen["slept_s"] >= 3 * RETRY_AFTER_MS / 1000.0  # it waited what it was asked to, three times
    assert event["response_time"] == pytest.approx(seen["slept_s"] * 1000.0 + 4 * ATTEMPT_MS)
    assert seen["throttled"] == {"Recommend cached": 3} and seen["counted_attempts"] == {"Recommend cached": 4}
    assert seen["threshold_failures_at_half"] == ["throttled ratio 0.7500 (3 of 4 attempts shed) > --max-throttled-ratio 0.5"]


def test_a_call_shed_past_its_retries_fails_with_the_time_it_took() -> None:
    seen = probe(sheds=10, retries=2)
    assert not seen["answered"] and seen["attempts"] == 3
    (event,) = seen["fired"]
    assert event["exception"] == "still RESOURCE_EXHAUSTED after 2 retries"
    assert event["response_time"] == pytest.approx(seen["slept_s"] * 1000.0 + 3 * ATTEMPT_MS) and seen["slept_s"] > 0
    assert seen["throttled"] == {"Recommend cached": 3}


def test_a_call_answered_at_once_is_not_throttled() -> None:
    seen = probe(sheds=0, retries=100)
    (event,) = seen["fired"]
    assert event["response_time"] == pytest.approx(ATTEMPT_MS) and seen["slept_s"] == 0
    assert seen["throttled"] == {} and seen["counted_attempts"] == {"Recommend cached": 1}
    assert seen["threshold_failures_at_half"] == []
