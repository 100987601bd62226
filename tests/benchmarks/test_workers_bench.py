"""The scale-out rows' accounting of the cores: /proc/stat parsed, shares taken over the measured
window. The rows themselves are measured end to end by test_benchmarks_run.py."""

from __future__ import annotations

import pytest

from benchmarks.workers_bench import PROC_STAT, Sample, cpu_ticks, window_shares


def test_cpu_ticks_count_idle_and_iowait_as_idle() -> None:
    text = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 3 0\n"
    assert cpu_ticks(text) == (840, 1000)  # guest (7) is inside user already
    idle, total = cpu_ticks(PROC_STAT.read_text())
    assert 0 <= idle <= total
    with pytest.raises(ValueError, match="all-cores"):
        cpu_ticks("intr 1 2 3\n")


def test_window_shares_use_the_samples_around_the_window() -> None:
    # 2 cores, 100 ticks per second each; the gateway busy 1 core from t=1 to t=3, idle outside
    samples = [Sample(t, idle, total, gateway) for t, idle, total, gateway in (
        (0.0, 0, 0, 0.0), (1.0, 200, 200, 0.0), (2.0, 300, 400, 1.0), (3.0, 400, 600, 2.0), (4.0, 600, 800, 2.0),
    )]  # fmt: skip
    assert window_shares(samples, 1.0, 3.0, cores=2) == (0.5, 0.5)
    idle, gateway = window_shares(samples, 1.5, 2.5, cores=2)  # widened to the samples at 1 and 3
    assert (idle, gateway) == (0.5, 0.5)
    assert window_shares(samples, 0.0, 4.0, cores=2) == (0.75, 0.25)
    with pytest.raises(ValueError, match="do not span"):
        window_shares(samples[:1], 0.0, 1.0, cores=2)
