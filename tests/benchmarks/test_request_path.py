"""benchmarks/request_path.py's pooled echo floor (two measurements as one, calls and CPU pooled), and
the request-path targets read in each pairing of a floor with the gateway measured next to it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from benchmarks.request_path import (
    EVENT_LOOP,
    GRPC_CORE,
    OTHER_THREADS,
    EchoResults,
    PathPhase,
    ThreadCpu,
    pooled,
    thread_cpu,
    thread_group,
)
from benchmarks.run import in_every_pairing
from benchmarks.timing import Timing


def test_two_echo_measurements_pool_their_calls_and_their_cpu() -> None:
    before = EchoResults(
        Timing(np.array([1e-3, 2e-3, 3e-3]), 1, 0.006), Timing(np.full(100, 0.01), 1, 1.0), 0.05, 100,
        ThreadCpu({(EVENT_LOOP, "user"): 0.03, (EVENT_LOOP, "system"): 0.01, (GRPC_CORE, "user"): 0.01}),
        ThreadCpu({(EVENT_LOOP, "user"): 0.002}), 3,
    )  # fmt: skip
    after = EchoResults(
        Timing(np.array([4e-3, 5e-3]), 1, 0.009), Timing(np.full(50, 0.02), 1, 1.0), 0.05, 50,
        ThreadCpu({(EVENT_LOOP, "user"): 0.04, (EVENT_LOOP, "system"): 0.0, (GRPC_CORE, "user"): 0.01}),
        ThreadCpu({(EVENT_LOOP, "user"): 0.001}), 2,
    )  # fmt: skip
    both = pooled(before, after)
    assert both.server_threads.seconds[EVENT_LOOP, "user"] == 0.07 and both.server_threads.total_s == 0.1
    assert both.one_client_threads.total_s == 0.003 and both.one_client_calls == 5
    assert both.one_client.p50_ms == 3.0  # the median of all five calls, not a mean of two medians
    assert both.saturated.calls == 150 and both.saturated.throughput == 75.0  # over both windows
    assert both.cpu_ms_per_call == 0.1 / 150 * 1e3  # per call over both, not a mean of the two ratios
    assert before.cpu_ms_per_call == 0.5 and after.cpu_ms_per_call == 1.0


def test_a_request_path_target_is_met_only_if_met_in_every_pairing() -> None:
    assert in_every_pairing([("1.9×", True)]) == ("1.9×", True)
    assert in_every_pairing([("1.9×", True), ("2.1×", False)]) == ("first pairing 1.9×; second pairing 2.1×", False)
    assert in_every_pairing([("2.1×", False), ("1.9×", True)])[1] is False
    assert in_every_pairing([("1.9×", True), ("1.8×", True)])[1] is True
    four = in_every_pairing([("1.9×", True), ("1.8×", True), ("1.7×", True), ("2.1×", False)])
    assert four == ("first pairing 1.9×; second pairing 1.8×; third pairing 1.7×; pairing 4 2.1×", False)


def test_threads_are_grouped_as_the_event_loop_grpc_core_and_the_rest() -> None:
    assert thread_group(10, 10, "python") == EVENT_LOOP  # the main thread, whatever its name
    for name in ("event_engine", "grpc_global_tim", "lifeguard"):
        assert thread_group(10, 11, name) == GRPC_CORE
    assert thread_group(10, 12, "python") == OTHER_THREADS


def test_thread_cpu_charges_a_busy_thread_to_its_group_and_a_window_subtracts() -> None:
    """This process: a Python thread that burns CPU shows up among the other threads, not the main one's."""
    import os
    import threading

    pid, stop = os.getpid(), threading.Event()
    before = thread_cpu(pid)

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin)
    worker.start()
    try:  # until the kernel has charged the worker at least 0.2 s (its accounting is in clock ticks)
        while (thread_cpu(pid) - before).group_s(OTHER_THREADS) < 0.2:
            stop.wait(0.01)
        window = thread_cpu(pid) - before
    finally:
        stop.set()
        worker.join()
    assert window.group_s(OTHER_THREADS) >= 0.2
    assert window.total_s >= window.group_s(OTHER_THREADS) + window.group_s(EVENT_LOOP)
    assert set(window.seconds) == {(group, mode) for group in (EVENT_LOOP, GRPC_CORE, OTHER_THREADS) for mode in ("user", "system")}
    assert all(seconds >= 0 for seconds in window.seconds.values())


def test_the_ceiling_adds_the_scorers_cpu_at_full_batches_to_what_the_gateway_spends_outside_it() -> None:
    """2 cores (patched), a raw scorer at 1 CPU ms per row, 0.5 ms on the gateway's loop and gRPC
    core, 0.5 ms for Redis and the load generator: at most 2 / 2 ms = 1,000 req/s, half the raw
    scorer's 2,000 rows/s; the scorer's own threads in the gateway are not counted twice."""
    import re
    from unittest import mock

    from benchmarks.gateway_bench import CpuUse
    from benchmarks.run import ceiling_lines

    cpu = CpuUse(
        gateway_ms=3.0, redis_ms=0.1, load_ms=0.4, rate=500.0, wall_s=1.0,
        gateway_threads_ms={EVENT_LOOP: 0.4, GRPC_CORE: 0.1, OTHER_THREADS: 2.5},
    )  # fmt: skip
    scorer = Timing(np.full(10, 0.016), 32, 0.16, cpu_s=0.32)  # 320 rows in 0.16 s on 0.32 s of CPU
    with mock.patch("benchmarks.run.os.cpu_count", return_value=2):
        (text, _) = ceiling_lines(cpu, scorer)
    assert re.search(r"the raw scorer at batch 32 took 1\.000 CPU ms per row", text)
    assert "spent 0.500 CPU ms per request on its event loop and gRPC core's threads and 2.500 on its other threads" in text
    assert "could serve at most 1,000 req/s: 50% of the raw scorer" in text
    assert ceiling_lines(cpu, Timing(np.full(10, 0.016), 32, 0.16)) == []  # no CPU measured: no estimate


def test_the_p99_target_is_missed_when_the_gateway_refused_calls_of_the_open_loop() -> None:
    """Refused calls are in no latency: a p99 under the target over the calls answered still misses
    it when some were shed, and the row says how many."""
    from types import SimpleNamespace

    from benchmarks.run import p99_row

    def gateway(refused: int) -> SimpleNamespace:
        tail = SimpleNamespace(refused=refused, client=SimpleNamespace(calls=1000 - refused))  # 1,000 offered
        return SimpleNamespace(
            n_items=1000, at_load=SimpleNamespace(p99_ms=20.0, p50_ms=5.0), offered_rate=3500.0, offered_share_after=0.72, tail=tail
        )

    target, cell, met = p99_row(gateway(0))  # type: ignore[arg-type]
    assert met and cell.endswith("72% of the maximum measured right after it")
    _, cell, met = p99_row(gateway(12))  # type: ignore[arg-type]
    assert not met and "12 calls (1.2%) refused for load, in no latency" in cell



def test_the_int8_p99_target_is_missed_when_the_gateway_refused_calls_of_the_open_loop() -> None:
    """The int8 gateway's row reads its open loop as `p99_row` does: a p99 under the target over the
    calls answered misses it when some were shed (60% here), and the row says how many."""
    from benchmarks.run import Int8Gateway, Report, int8_rows
    from benchmarks.settings_ab import Sample

    def row(refused: int) -> tuple[str, str, bool | None]:
        sample = Sample(
            rate=2316.0, p50_ms=20.0, p99_ms=30.0, cpu_ms=0.5, open_rate=1621.0, open_p99_ms=3.4, one_p50_ms=1.96,
            gc_us=1.0, open_loop_busy=0.5, open_answered=200, refused=refused,
        )  # fmt: skip
        report = Report()
        report.int8 = Int8Gateway(41000, 64, sample)
        (only,) = int8_rows(report)
        return only

    _, cell, met = row(0)
    assert met and "refused" not in cell
    _, cell, met = row(300)
    assert met is False and cell.endswith("; 300 calls (60.0%) refused for load, in no latency")

def test_a_lone_call_without_the_request_path_section_gets_its_own_stage_table_and_split() -> None:
    """At a size without the request-path section (41k items in `make benchmarks`), the one-client
    target's row says where the mean went and the gateway section holds the stage table it reads."""
    from types import SimpleNamespace

    from benchmarks.gateway_bench import one_client_lines
    from benchmarks.request_path import CallSplit, PathPhase, StageSplit
    from benchmarks.run import lone_call_split

    calls = 100  # 2 ms in the scorer's runs, 0.5 ms in the other stages, 3.0 ms mean at the client
    split = StageSplit("Recommend", calls, {"dispatch": 100, "scorer_run": 100}, {"dispatch": 0.05, "scorer_run": 0.2})
    phase = PathPhase(
        "1 client, Recommend", 1, Timing(np.full(calls, 3e-3), 1, 0.3), split, 0.35, 0.0, 1.0, 0.1,
        CallSplit(300.0, 2500.0, 200.0), ThreadCpu({}), 0.19, 0.18,
    )  # fmt: skip
    gateway = SimpleNamespace(one_client=phase, path=None, n_items=41000)
    assert lone_call_split(gateway) == (  # type: ignore[arg-type]
        "; per call, mean: the scorer's runs 2.00 ms, the gateway's other stages 0.50 ms, outside the stages "
        '0.50 ms (stage table: "Gateway at 41,000 items")'
    )
    lines = one_client_lines(gateway)  # type: ignore[arg-type]
    assert lines[0] == "### One client, cached Recommend: where the time goes (41,000 items)"
    assert "| `scorer_run` | 2,000 |" in lines and "| **sum of the stages** | **2,500** |" in lines
    assert "| outside the stages, mean µs (before + after, below) | 500 |" in lines
    assert any(line.startswith("| of which before the handler: ") and line.endswith(" | 300 |") for line in lines)
    assert "| gateway CPU per call, µs (all threads) | 3,500 |" in lines
    assert "| the scorer's runs, wall µs per call (`apron_inference_duration_seconds`) | 1,900 |" in lines
    # where the request-path section is rendered at that size, it holds the phase: no second table
    assert one_client_lines(SimpleNamespace(one_client=phase, path=object(), n_items=41000)) == []  # type: ignore[arg-type]


def test_a_lone_calls_own_table_reads_as_the_request_path_sections_column_for_it() -> None:
    """The lone call's table (a size without the request-path section) and the request-path section
    build their rows in one place: the same phase gives the same labelled rows, the stage table's
    and the ones below it, in both (only the section's other columns differ)."""
    import dataclasses
    from types import SimpleNamespace

    from benchmarks.gateway_bench import RequestPath, one_client_lines, render_path
    from benchmarks.request_path import CallSplit

    one = dataclasses.replace(_path_phase("1 client, Recommend", "Recommend", 1, 660, 0.81), calls=CallSplit(300.0, 4.0, 200.0))
    lone = one_client_lines(SimpleNamespace(one_client=one, path=None, n_items=1000))  # type: ignore[arg-type]
    echo = EchoResults(
        Timing(np.full(100, 3.5e-4), 1, 1.0), Timing(np.full(100, 0.015), 1, 1.0), 0.1, 1000, _threads(100, 1000), _threads(200, 100), 100
    )  # fmt: skip
    # the same figures in every column (under their own names): each row of the section repeats the lone table's cell
    names = {"saturated": "64 clients, Recommend", "one": one.name, "get": "1 client, GetProfile"}
    phases = {key: dataclasses.replace(one, name=name) for key, name in names.items()}
    section = render_path(SimpleNamespace(path=RequestPath(echo, echo, phases, dict(phases)), n_items=1000, clients=64), None)  # type: ignore[arg-type]
    repeated = {line.split(" | ", 2)[0] + " | " + line.split(" | ", 2)[1] + " |" for line in section if line.startswith("| ") and "---" not in line}
    rows = [line for line in lone if line.startswith("| ") and "---" not in line and not line.startswith("| stage |")]
    shared = rows[: rows.index(next(line for line in rows if line.startswith("| gateway CPU per call"))) + 1]
    assert len(shared) == 8  # one stage, their sum, the two client latency rows, outside and its two parts, the CPU
    assert all(line in repeated for line in shared), [line for line in shared if line not in repeated]


def _threads(us_per_call: float, calls: int) -> ThreadCpu:
    """All of a run's CPU on the event loop, user mode: `us_per_call` µs for each of `calls`."""
    from benchmarks.request_path import MODES, THREAD_GROUPS

    seconds = dict.fromkeys([(group, mode) for group in THREAD_GROUPS for mode in MODES], 0.0)
    seconds[EVENT_LOOP, "user"] = us_per_call * calls / 1e6
    return ThreadCpu(seconds)


def _path_phase(name: str, method: str, clients: int, cpu_us: float, p50_ms: float, calls: int = 5000) -> PathPhase:
    """A phase of `calls` at `p50_ms` each, `cpu_us` of gateway CPU per call, 4 µs in its one stage."""
    from benchmarks.request_path import StageSplit

    split = StageSplit(method, calls, {"auth": calls}, {"auth": 4e-6 * calls})
    cpu_s = cpu_us * calls / 1e6
    return PathPhase(
        name, clients, Timing(np.full(calls, p50_ms / 1e3), 1, 4.0), split, cpu_s, 0.0, 1.0, cpu_s * 0.8,
        None, _threads(cpu_us, calls), 0.0, 0.0,
    )  # fmt: skip


def test_the_stage_table_sets_each_phase_against_the_echo_server_at_its_own_client_count() -> None:
    """The echo server: one client 228 µs CPU and p50 0.35 ms per call, 64 clients 127 µs and 15 ms.
    A one-client column is divided by (and subtracts) the one-client figures, the 64-client column
    the saturated ones: not every column by the saturated CPU and the one-client p50."""
    from types import SimpleNamespace

    from benchmarks.gateway_bench import RequestPath, render_path

    def t(ms: float, n: int = 1000) -> Timing:
        return Timing(np.full(n, ms / 1e3), 1, 4.0)

    echo = EchoResults(t(0.35), t(15.0), 0.127e-3 * 10000, 10000, _threads(127, 10000), _threads(228, 5000), 5000)
    assert round(echo.one_client_cpu_ms_per_call, 9) == 0.228
    phases = {
        "saturated": _path_phase("64 clients, Recommend", "Recommend", 64, 282, 16.0),
        "one": _path_phase("1 client, Recommend", "Recommend", 1, 660, 0.81),
        "one_bare": _path_phase("1 client, Recommend, profile_view NONE", "Recommend", 1, 653, 0.81),
        "get": _path_phase("1 client, GetProfile", "GetProfile", 1, 359, 0.51),
    }
    lines = render_path(SimpleNamespace(path=RequestPath(echo, echo, phases, dict(phases)), n_items=1000, clients=64), None)  # type: ignore[arg-type]
    rows = {line.split(" | ")[0].lstrip("| ").split(",")[0]: line.split(" | ")[1:] for line in lines if line.startswith("| ")}
    # columns: 1 client Recommend, its profile_view NONE twin, 1 client GetProfile, 64 clients Recommend
    assert rows["echo server CPU per call at the same client count"] == ["228", "228", "228", "127 |"]
    assert rows["gateway CPU per call / that echo server CPU per call"] == ["2.9×", "2.9×", "1.6×", "2.2× |"]
    assert rows["echo p50 at the same client count"] == ["350", "350", "350", "15,000 |"]
    assert rows["client p50 − that echo p50"] == ["460", "460", "160", "1,000 |"]


def _rpc_histogram(code: str, durations_s: np.ndarray) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`apron_rpc_duration_seconds`' cumulative buckets for Recommend calls of one status code."""
    from serving.metrics import LATENCY_BUCKETS

    out = {}
    for bound in (*LATENCY_BUCKETS, float("inf")):
        labels = {"method": "Recommend", "code": code, "version": "1", "le": "+Inf" if bound == float("inf") else str(bound)}
        out["apron_rpc_duration_seconds_bucket", tuple(sorted(labels.items()))] = float(np.sum(durations_s <= bound))
    return out


def test_the_tail_share_over_a_threshold_is_read_over_the_answered_calls_on_both_sides() -> None:
    """1,000 answered calls, 10 of them 80 ms inside the handler, and 1,000 refused at once: the
    gateway's own share over 50 ms is 1% as the client's (the handler's tail, none outside it), not
    0.5% with the refused in its denominator; a threshold between bucket bounds is refused."""
    import pytest

    from benchmarks.gateway_bench import tail_reading
    from benchmarks.load import ProcessLoad
    from benchmarks.request_path import SchedulingProbe, share_over, tail_evidence

    handler = np.r_[np.full(990, 0.002), np.full(10, 0.080)]
    samples = {**_rpc_histogram("OK", handler), **_rpc_histogram("RESOURCE_EXHAUSTED", np.full(1000, 0.0003))}
    load = ProcessLoad(Timing(handler + 0.0005, 1, 8.0), 1.0, 2, calls_all=1000, refused=1000, window=(0.0, 8.0))
    tail = tail_evidence(load, samples, 1.0, 0.5, SchedulingProbe(), max_batch_wait_ms=0.0)
    assert tail.over_ms[50.0] == (0.01, 0.01)
    assert tail.server_p50_ms == 2.5  # the bucket holding the answered calls' p50 (2 ms), not the refusals' (0.3 ms)
    assert tail_reading(tail)[0].startswith(
        "Reading: 1.00% of the answered calls took over 50 ms in the gateway's own durations and 1.00% as the client saw them"
    )
    with pytest.raises(ValueError, match="not a bucket bound"):
        share_over(samples, "apron_rpc_duration_seconds", 0.03, method="Recommend", code="OK")


def test_a_tail_without_the_gateways_histogram_says_not_measured_never_nan() -> None:
    from benchmarks.gateway_bench import over_rows, tail_reading
    from benchmarks.load import ProcessLoad
    from benchmarks.request_path import SchedulingProbe, tail_evidence

    latencies = np.r_[np.full(990, 0.002), np.full(10, 0.080)]
    load = ProcessLoad(Timing(latencies, 1, 8.0), 1.0, 2, calls_all=1000, window=(0.0, 8.0))
    tail = tail_evidence(load, {}, 1.0, 0.5, SchedulingProbe(), max_batch_wait_ms=0.0)
    text = "\n".join([*over_rows(tail), *tail_reading(tail)])
    assert "nan%" not in text  # (the other figures of these synthetic inputs are not the point here)
    assert "| 50 ms | 1.00% | not measured (no answered call in the gateway's `apron_rpc_duration_seconds`) |" in text
    assert "1.00% of the answered calls took over 50 ms as the client saw them; how many of them were slow inside" in text


def test_outside_the_stages_is_the_sum_of_its_split_over_the_same_calls() -> None:
    """At 64 clients the measured window's client mean less the stages is 7,320 µs, while the call
    log over every call of the phase (warm-up included, the calls the stages cover) puts 6,416 µs
    before the handler and 979 after: the row is their sum, 7,395, and the lone call's Targets text
    reads the same log."""
    import dataclasses
    from types import SimpleNamespace

    from benchmarks.gateway_bench import RequestPath, render_path
    from benchmarks.request_path import CallSplit
    from benchmarks.run import lone_call_split

    echo = EchoResults(
        Timing(np.full(100, 3.5e-4), 1, 1.0), Timing(np.full(100, 0.015), 1, 1.0), 0.1, 1000, _threads(100, 1000), _threads(200, 100), 100
    )  # fmt: skip
    one = dataclasses.replace(_path_phase("1 client, Recommend", "Recommend", 1, 660, 0.81), calls=CallSplit(300.0, 4.0, 200.0))
    saturated = dataclasses.replace(
        _path_phase("64 clients, Recommend", "Recommend", 64, 282, 7.324), calls=CallSplit(6416.0, 4.0, 979.0)
    )
    phases = {"saturated": saturated, "one": one, "get": _path_phase("1 client, GetProfile", "GetProfile", 1, 359, 0.51)}
    lines = render_path(SimpleNamespace(path=RequestPath(echo, echo, phases, dict(phases)), n_items=1000, clients=64), None)  # type: ignore[arg-type]
    row = next(line for line in lines if line.startswith("| outside the stages, mean µs"))
    assert row.endswith("| 500 | n/a | 7,395 |")  # GetProfile's phase has no call log here: no split, no total
    assert next(line for line in lines if line.startswith("| client latency, mean µs")).endswith("| 7,324 |")
    assert "; per call, mean: the scorer's runs 0.00 ms, the gateway's other stages 0.00 ms, outside the stages 0.50 ms" in (
        lone_call_split(SimpleNamespace(one_client=one, path=None, n_items=1000))  # type: ignore[arg-type]
    )
    assert "outside the stages not measured (no call log for the phase)" in lone_call_split(
        SimpleNamespace(one_client=phases["get"], path=None, n_items=1000)  # type: ignore[arg-type]
    )


def test_the_tail_reading_states_the_gateways_own_batch_wait_and_a_generation_without_collections_has_no_p99() -> None:
    """The reading says what `--max-batch-wait-ms` the gateway ran with (0 or not); a generation that
    never collected gets "none" in the GC table, not "≤ 0.00"."""
    import dataclasses

    import pytest

    from benchmarks.gateway_bench import tail_lines, tail_reading
    from benchmarks.load import ProcessLoad
    from benchmarks.request_path import SchedulingProbe, TailEvidence, tail_evidence

    pause = {  # generation 0 collected 4 times, under 1 ms each; generations 1 and 2 never
        ("apron_gc_pause_seconds_count", (("generation", "0"),)): 4.0,
        ("apron_gc_pause_seconds_sum", (("generation", "0"),)): 0.002,
        **{("apron_gc_pause_seconds_bucket", (("generation", "0"), ("le", le))): 4.0 for le in ("0.001", "+Inf")},
    }
    load = ProcessLoad(Timing(np.full(100, 0.002), 1, 8.0), 1.0, 2, calls_all=100, window=(0.0, 8.0))
    tail = tail_evidence(load, pause, 1.0, 0.5, SchedulingProbe(), max_batch_wait_ms=2.5)
    assert "requests on average: a request that found the scorer idle waited up to 2.5 ms for others to join its batch " \
        "(`--max-batch-wait-ms` 2.5)." in tail_reading(tail)[0]  # fmt: skip
    assert ": no request waited for company (`--max-batch-wait-ms` 0)." in tail_reading(dataclasses.replace(tail, max_batch_wait_ms=0.0))[0]
    # the one caller always knows the setting (GatewayHandle.max_batch_wait_ms): no reading goes without it
    with pytest.raises(TypeError, match="max_batch_wait_ms"):
        tail_evidence(load, pause, 1.0, 0.5, SchedulingProbe())  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="max_batch_wait_ms"):
        TailEvidence(**{f.name: getattr(tail, f.name) for f in dataclasses.fields(tail) if f.name != "max_batch_wait_ms"})
    gateway = SimpleNamespace(load_fraction=0.7, n_items=1000, offered_rate=50.0, cpu=SimpleNamespace(gateway_threads_ms={}), batched_after=None)
    lines = tail_lines(gateway, tail)  # type: ignore[arg-type]
    assert "| generation 0 | 4 | 2.0 | 0.0% | ≤ 1.00 |" in lines
    assert "| generation 1 | 0 | 0.0 | 0.0% | none |" in lines and "| generation 2 | 0 | 0.0 | 0.0% | none |" in lines
