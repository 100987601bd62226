"""The model benchmarks run (tiny sizes, CPU): speed is measured by running them, not asserted here."""

from __future__ import annotations

import json
from unittest import mock

import pytest

from benchmarks import gpu_scorer, model_bench
from benchmarks.model_bench import (
    PENALTY_CASES,
    PenaltyResult,
    bench_catalog,
    bench_edit_penalty,
    bench_profile_batches,
    bench_profile_scaling,
    bench_torch_vs_ort,
)
from serving.backends.base import default_threads


def test_gpu_scorer_smoke_test_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """`--device cpu` runs the GPU benchmark's code path (minus CUDA graphs) end to end."""
    assert gpu_scorer.main(["--device", "cpu", "--items", "300", "--batches", "1", "3", "--calls", "2", "--k", "10"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["device"] == "cpu"
    rows = lines[1:]
    assert [(r["items"], r["batch"]) for r in rows] == [(300, 1), (300, 3)]
    assert all(r["scorer_ms"] > 0 and r["ceiling_ms"] > 0 and r["ratio"] > 0 and r["dtype"] == "float32" for r in rows)


def test_profile_scaling_and_backends_report_every_shape() -> None:
    scaling = bench_profile_scaling((200, 3000), min_seconds=0.01, history_length=20)
    assert set(scaling.timings) == {200, 3000} and scaling.ratio(3000, 200) > 0
    batches = bench_profile_batches(500, (1, 4), min_seconds=0.01, history_length=10)
    assert set(batches) == {1, 4} and all(t.throughput > 0 for t in batches.values())
    timings = bench_torch_vs_ort(300, (1, 2), min_seconds=0.01, history_length=10)
    assert set(timings) == {"onnxruntime/b1", "torch/b1", "onnxruntime/b2", "torch/b2"}


def test_catalog_times_the_history_lengths_on_its_own_export() -> None:
    """The history sweep runs on the catalog's export (one export per size), only when asked."""
    with mock.patch("benchmarks.model_bench.export_onnx", wraps=model_bench.export_onnx) as export:
        result = bench_catalog(300, (1,), min_seconds=0.01, eager=False, history_lengths=(5, 20))
    assert export.call_count == 1
    assert [(h.n_items, h.history_length) for h in result.histories] == [(300, 5), (300, 20)]
    assert all(h.profile.calls > 0 and h.scorer.calls > 0 and h.scorer.p50_ms > 0 for h in result.histories)
    assert bench_catalog(300, (1,), min_seconds=0.01, eager=False).histories == []


def test_edit_penalty_benchmark_times_both_variants_of_every_case() -> None:
    result = bench_edit_penalty(300, (1, 3), min_seconds=0.01, k_max=20)
    assert result.gamma > 0 and result.k_max == 20 and result.runtimes == ["onnxruntime", "torch"]
    keys = {(r, v, c, b) for r in result.runtimes for v in ("penalty", "plain") for c in PENALTY_CASES for b in (1, 3)}
    assert set(result.timings) == keys
    assert all(t.calls >= 5 and t.batch == key[3] for key, t in result.timings.items())
    assert all(result.ratio(r, c, b) > 0 for r in result.runtimes for c in PENALTY_CASES for b in (1, 3))
    # 300 items make small scorer graphs: the cores less one for each, as `apron serve` gives them
    assert result.threads == dict.fromkeys(((r, v) for r in result.runtimes for v in ("penalty", "plain")), default_threads())


def test_the_edit_penalty_section_prints_the_threads_each_runner_got() -> None:
    """41,000 items on 2 cores: ONNX Runtime gave the (≥ 64 MiB) scorer graphs both cores, torch one;
    the section says so, not "the cores less one" for both."""
    import numpy as np

    from benchmarks.run import penalty_lines
    from benchmarks.timing import Timing

    timings = {
        (runtime, variant, case, 1): Timing(np.full(5, 1e-3), 1, 1.0)
        for runtime in ("onnxruntime", "torch") for variant in ("penalty", "plain") for case in PENALTY_CASES
    }  # fmt: skip
    threads = {("onnxruntime", "penalty"): 2, ("onnxruntime", "plain"): 2, ("torch", "penalty"): 1, ("torch", "plain"): 1}
    lines = penalty_lines([PenaltyResult(41_000, 50.0, 1000, timings, threads)])
    assert "| items | runtime | intra-op threads (γ > 0; γ = 0) | batch |" in lines[4]
    assert sum(line.startswith("| 41,000 | onnxruntime | 2; 2 | 1 |") for line in lines) == len(PENALTY_CASES)
    assert sum(line.startswith("| 41,000 | torch | 1; 1 | 1 |") for line in lines) == len(PENALTY_CASES)
    assert "(the cores less one)" not in lines[2]
