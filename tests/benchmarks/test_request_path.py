"""benchmarks/request_path.py's pooled echo floor: two measurements as one, calls and CPU pooled."""

from __future__ import annotations

import numpy as np

from benchmarks.request_path import EchoResults, pooled
from benchmarks.timing import Timing


def test_two_echo_measurements_pool_their_calls_and_their_cpu() -> None:
    before = EchoResults(Timing(np.array([1e-3, 2e-3, 3e-3]), 1, 0.006), Timing(np.full(100, 0.01), 1, 1.0), 0.05, 100)
    after = EchoResults(Timing(np.array([4e-3, 5e-3]), 1, 0.009), Timing(np.full(50, 0.02), 1, 1.0), 0.05, 50)
    both = pooled(before, after)
    assert both.one_client.p50_ms == 3.0  # the median of all five calls, not a mean of two medians
    assert both.saturated.calls == 150 and both.saturated.throughput == 75.0  # over both windows
    assert both.cpu_ms_per_call == 0.1 / 150 * 1e3  # per call over both, not a mean of the two ratios
    assert before.cpu_ms_per_call == 0.5 and after.cpu_ms_per_call == 1.0
