"""benchmarks/request_path.py's pooled echo floor (two measurements as one, calls and CPU pooled), and
the request-path targets read in each pairing of a floor with the gateway measured next to it."""

from __future__ import annotations

import numpy as np

from benchmarks.request_path import EchoResults, pooled
from benchmarks.run import in_every_pairing
from benchmarks.timing import Timing


def test_two_echo_measurements_pool_their_calls_and_their_cpu() -> None:
    before = EchoResults(Timing(np.array([1e-3, 2e-3, 3e-3]), 1, 0.006), Timing(np.full(100, 0.01), 1, 1.0), 0.05, 100)
    after = EchoResults(Timing(np.array([4e-3, 5e-3]), 1, 0.009), Timing(np.full(50, 0.02), 1, 1.0), 0.05, 50)
    both = pooled(before, after)
    assert both.one_client.p50_ms == 3.0  # the median of all five calls, not a mean of two medians
    assert both.saturated.calls == 150 and both.saturated.throughput == 75.0  # over both windows
    assert both.cpu_ms_per_call == 0.1 / 150 * 1e3  # per call over both, not a mean of the two ratios
    assert before.cpu_ms_per_call == 0.5 and after.cpu_ms_per_call == 1.0


def test_a_request_path_target_is_met_only_if_met_in_every_pairing() -> None:
    assert in_every_pairing([("1.9×", True)]) == ("1.9×", True)
    assert in_every_pairing([("1.9×", True), ("2.1×", False)]) == ("first pairing 1.9×; second pairing 2.1×", False)
    assert in_every_pairing([("2.1×", False), ("1.9×", True)])[1] is False
    assert in_every_pairing([("1.9×", True), ("1.8×", True)])[1] is True
