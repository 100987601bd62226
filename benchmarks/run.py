"""`python -m benchmarks.run --output BENCHMARKS.md`: every benchmark in one run, written as Markdown.

Numbers are measured by this run (nothing is typed in): the machine, the command and the wall
time are written into the report next to them. Targets are checked against the measurements and
a missed target is reported with a profile of where the time goes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime
import torch

from benchmarks import gateway_bench, gpu_check, request_path, settings_ab, workers_bench
from benchmarks.gateway_bench import SATURATED
from benchmarks.model_bench import (
    PENALTY_CASES,
    SERVED_K,
    CatalogResult,
    HistoryResult,
    PenaltyResult,
    ProfileScaling,
    bench_catalog,
    bench_edit_penalty,
    bench_profile_scaling,
)
from benchmarks.request_path import EchoResults, PathPhase
from benchmarks.timing import Timing, target_row
from common.files import atomic_write_text
from serving.backends.base import WIDE_SCORER_BYTES, default_threads, scorer_threads
from serving.config import ServingConfig

GATEWAY_BATCH = ServingConfig().max_batch_size  # the micro-batcher's largest batch

SERVED_CATALOG = 41_000  # the catalog size the gateway targets are stated for
TARGET_BATCHING_SPEEDUP = 4.0  # micro-batching on / off throughput at 64 concurrent clients
TARGET_GATEWAY_FRACTION = 0.7  # gateway throughput / raw scorer throughput at the same batch size, 41k items
TARGET_P99_MS = 50.0  # at 70 % of the maximum throughput
TARGET_ONE_CLIENT_MARGIN_MS = 1.0  # one client's cached p50 over the scorer's batch-1 p50
TARGET_PROFILE_GROWTH = 2.0  # profile graph batch-1 cost at 100k items over its cost at 1k
TARGET_PENALTY_RATIO = 1.2  # the controllable preset's scorer over the same scorer without the edit penalty
PENALTY_BATCHES = (1, 32)
DEMO_CATALOG = 2_813  # `make serve`'s demo model (Last.fm 2K's artists)
LOAD_FRACTION = 0.7
# issue 19, the request path, as ratios to a bare grpc.aio echo server measured in the same run
TARGET_CPU_VS_ECHO = 2.0  # gateway CPU per cached Recommend / the echo server's CPU per call
TARGET_RECOMMEND_MARGIN_MS = 0.5  # one client: Recommend p50 <= echo p50 + scorer batch-1 p50 + this
TARGET_GET_PROFILE_MARGIN_MS = 0.3  # one client: GetProfile p50 <= echo p50 + this


@dataclass(frozen=True)
class Int8Gateway:
    """`settings_ab.measure` of a gateway serving a synthetic model exported with `--int8`."""

    n_items: int
    clients: int
    sample: settings_ab.Sample


@dataclass
class Report:
    catalogs: list[CatalogResult] = field(default_factory=list)
    histories: list[HistoryResult] = field(default_factory=list)
    gateways: list[gateway_bench.GatewayResults] = field(default_factory=list)  # one per --gateway-items size
    gateway_reason: str = ""  # why the gateway was not measured
    profile_scaling: ProfileScaling | None = None
    penalties: list[PenaltyResult] = field(default_factory=list)
    workers: workers_bench.WorkersResults | None = None  # the scale-out rows (gateway_reason when None)
    int8: Int8Gateway | None = None  # a gateway serving the largest gateway size exported with --int8
    load_average: tuple[float, float, float] = field(default_factory=os.getloadavg)  # at the start of the run


def machine_description() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (all numbers are CPU)"
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores visible (shared with other processes while this ran)",
        f"- GPU: {gpu}",
        f"- Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"onnxruntime {onnxruntime.__version__}, {platform.platform()}",
    ]


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def catalog_table(results: list[CatalogResult]) -> list[str]:
    base = results[0]
    lines = [
        f"| items | scorer ONNX MB | scorer b1 p50 ms (k = {SERVED_K}; K_MAX) | scorer b256 rows/s (k = {SERVED_K}; K_MAX) | "
        f"b256 cost vs {base.n_items:,} | profile b1 p50 ms | profile b256 rows/s | export s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        t = r.timings
        growth = t["scorer/ort/b256"].p50_ms / base.timings["scorer/ort/b256"].p50_ms
        lines.append(
            f"| {r.n_items:,} | {fmt(r.scorer_onnx_mb)} | {fmt(t['scorer/ort/b1'].p50_ms, 2)}; {fmt(t['scorer/ort-kmax/b1'].p50_ms, 2)} | "
            f"{fmt(t['scorer/ort/b256'].throughput, 0)}; {fmt(t['scorer/ort-kmax/b256'].throughput, 0)} | {fmt(growth, 1)}× | "
            f"{fmt(t['profile/ort/b1'].p50_ms, 2)} | {fmt(t['profile/ort/b256'].throughput, 0)} | {fmt(r.export_s)} |"
        )
    return lines


def runtime_table(result: CatalogResult) -> list[str]:
    lines = [
        "| batch | PyTorch eager p50 ms | ONNX Runtime p50 ms | eager rows/s | ORT rows/s | ORT speed-up |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch in (1, 256):
        eager, ort = result.timings[f"scorer/eager/b{batch}"], result.timings[f"scorer/ort/b{batch}"]
        lines.append(
            f"| {batch} | {fmt(eager.p50_ms, 2)} | {fmt(ort.p50_ms, 2)} | {fmt(eager.throughput, 0)} | "
            f"{fmt(ort.throughput, 0)} | {fmt(ort.throughput / eager.throughput, 2)}× |"
        )
    return lines


def history_table(results: list[HistoryResult]) -> list[str]:
    lines = [
        "| history length | profile b1 p50 ms | scorer b1 p50 ms (history excluded) |",
        "| ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r.history_length:,} | {fmt(r.profile.p50_ms, 3)} | {fmt(r.scorer.p50_ms, 3)} |")
    return lines


def served(report: Report) -> CatalogResult:
    return min(report.catalogs, key=lambda r: abs(r.n_items - SERVED_CATALOG))


def raw_scorer(report: Report) -> Timing:
    return served(report).timings["scorer/ort/b256"]


def gateway_batch_scorer(report: Report, settings: str = "ort-served") -> Timing | None:
    """The raw scorer at the micro-batcher's largest batch (the gateway's batch size under load),
    with the gateway's session settings ("ort-served") or ONNX Runtime's defaults ("ort")."""
    return served(report).timings.get(f"scorer/{settings}/b{GATEWAY_BATCH}")


def lone_call_context(report: Report) -> str:
    """The scorer's batch-1 p50 with the gateway's own session settings, and with its caches cold (as
    a gateway's own work between two calls leaves them), beside the one-client target, whose reference
    is ONNX Runtime's defaults called back to back (context, not the reference; "" when not measured)."""
    timings = served(report).timings
    notes = []
    if (own := timings.get("scorer/ort-served/b1")) is not None:
        notes.append(f"the scorer alone with the gateway's own session settings: {fmt(own.p50_ms, 2)} ms")
    if (cold := timings.get("scorer/ort-cold/b1")) is not None:
        notes.append(f"with its caches cold: {fmt(cold.p50_ms, 2)} ms")
    return f" ({'; '.join(notes)})" if notes else ""


def lone_call_split(g: gateway_bench.GatewayResults) -> str:
    """Where the lone call's mean went, from its stage table (the gateway section at that size): the
    scorer's runs, the other stages, and outside the stages ("" without the phase)."""
    phase = g.one_client
    if phase is None or not phase.split.calls:
        return ""
    split = phase.split
    run_us = split.per_call_us("scorer_run")
    # outside the stages from the call log, over the calls the stages cover (every call of the phase,
    # warm-up included), not the client's measured window less the stages: those are other calls
    outside = "not measured (no call log for the phase)" if phase.calls is None else f"{fmt(phase.calls.outside_us / 1e3, 2)} ms"
    return (
        f"; per call, mean: the scorer's runs {fmt(run_us / 1e3, 2)} ms, the gateway's other stages "
        f"{fmt((split.total_us - run_us) / 1e3, 2)} ms, outside the stages {outside} "
        f"(stage table: \"{'Request path' if g.path is not None else 'Gateway at'} {g.n_items:,} items\")"
    )


def gateway_scorer_threads(catalog: CatalogResult) -> int:
    """The intra-op threads `apron serve` gives the scorer graph of `catalog`'s size."""
    return ServingConfig().inference.ort_threads or scorer_threads(int(catalog.scorer_onnx_mb * 2**20))


def served_threads(report: Report) -> str:
    """The intra-op threads `apron serve` gives the served catalog's scorer, and why."""
    configured = ServingConfig().inference.ort_threads
    if configured:
        return f"{configured} intra-op thread(s), as configured"
    threads = gateway_scorer_threads(served(report))
    if threads > default_threads():
        return f"{threads} intra-op thread(s): every core, for a scorer graph of {WIDE_SCORER_BYTES / 2**20:g} MiB or more"
    return f"{threads} intra-op thread(s): the cores less one, which the event loop keeps"


def served_gateway(report: Report) -> gateway_bench.GatewayResults | None:
    """The gateway run at the catalog size the throughput targets are stated for."""
    return next((g for g in report.gateways if g.n_items == SERVED_CATALOG), None)


def path_gateway(report: Report) -> gateway_bench.GatewayResults | None:
    """The gateway run with the request-path section (the first --gateway-items size)."""
    return next((g for g in report.gateways if g.path is not None), None)


def scorer_batch1(report: Report, n_items: int, cold: bool = False) -> Timing | None:
    """The scorer at batch 1, back to back (warm caches) or `cold` (caches evicted before each call)."""
    found = [r for r in report.catalogs if r.n_items == n_items]
    return found[0].timings.get("scorer/ort-cold/b1" if cold else "scorer/ort/b1") if found else None


def scorer_b256(report: Report, n_items: int) -> Timing | None:
    found = [r for r in report.catalogs if r.n_items == n_items]
    return found[0].timings["scorer/ort/b256"] if found else None


def p99_row(g: gateway_bench.GatewayResults) -> tuple[str, str, bool | None]:
    return (
        f"p99 ≤ {TARGET_P99_MS:g} ms at {LOAD_FRACTION:.0%} of max throughput (open loop), {g.n_items:,} items",
        f"{fmt(g.at_load.p99_ms, 1)} ms at {fmt(g.offered_rate, 0)} req/s offered (p50 {fmt(g.at_load.p50_ms, 1)} ms)"
        + (f"; {g.offered_share_after:.0%} of the maximum measured right after it" if g.offered_share_after is not None else "")
        + request_path.refused_note(g.tail.refused, g.tail.client.calls),
        g.at_load.p99_ms <= TARGET_P99_MS and not g.tail.refused,  # a call shed was not served within 50 ms
    )


def int8_rows(report: Report) -> list[tuple[str, str, bool | None]]:
    """The p99 target once more for the largest gateway size's model exported with `--int8` (an
    export choice: the fp32 row above stays the model's own; the ranking it costs: export/README.md)."""
    if report.int8 is None:
        return []
    n_items, clients, s = report.int8.n_items, report.int8.clients, report.int8.sample
    return [(
        f"p99 ≤ {TARGET_P99_MS:g} ms at {LOAD_FRACTION:.0%} of max throughput (open loop), {n_items:,} items, "
        "the scorer exported with `apron export --int8` (ranking vs fp32: export/README.md, \"int8\")",
        f"{fmt(s.open_p99_ms, 1)} ms at {fmt(s.open_rate, 0)} req/s offered (closed loop: {fmt(s.rate, 0)} req/s at "
        f"{clients} clients; one client p50 {fmt(s.one_p50_ms, 2)} ms)"
        + request_path.refused_note(s.refused, s.open_answered),
        s.open_p99_ms <= TARGET_P99_MS and not s.refused,  # as p99_row: a call shed was not served within 50 ms
    )]  # fmt: skip


def cpu_targets(report: Report) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) for the CPU rows of issue 13 (41k items) and issue 19 (the request
    path, at the first gateway size); None = not measured."""
    g = served_gateway(report)
    clients = g.clients if g is not None else 64
    batch1 = served(report).timings["scorer/ort/b1"]
    same_batch = gateway_batch_scorer(report)
    names = (
        f"micro-batching ≥ {TARGET_BATCHING_SPEEDUP:g}× unbatched throughput ({clients} clients, {SERVED_CATALOG:,} items)",
        f"gateway ≥ {TARGET_GATEWAY_FRACTION:.0%} of the raw scorer at the same batch size ({GATEWAY_BATCH}, "
        f"{SERVED_CATALOG:,} items) and the same session settings as the gateway's scorer",
        f"one client, cached profile: p50 ≤ scorer batch-1 p50 + {TARGET_ONE_CLIENT_MARGIN_MS:g} ms ({SERVED_CATALOG:,} items)",
    )
    rows: list[tuple[str, str, bool | None]] = []
    if g is None:
        why = report.gateway_reason or f"no gateway run at {SERVED_CATALOG:,} items (--gateway-items)"
        rows += [(name, f"not measured: {why}", None) for name in names]
    else:
        speedup = g.batched.throughput / g.unbatched.throughput
        rows.append((names[0], f"{speedup:.2f}×", speedup >= TARGET_BATCHING_SPEEDUP))
        if same_batch is None:
            rows.append((names[1], f"not measured: no raw scorer run at batch {GATEWAY_BATCH}", None))
        else:
            fraction = g.max_throughput / same_batch.throughput
            measured = f"{fraction:.0%} ({fmt(g.max_throughput, 0)} vs {fmt(same_batch.throughput, 0)} req/s)"
            if (every_core := gateway_batch_scorer(report, "ort")) is not None:  # the model alone at its fastest
                measured += (f"; against ONNX Runtime's defaults (every core, spinning): "
                             f"{g.max_throughput / every_core.throughput:.0%} of {fmt(every_core.throughput, 0)}")  # fmt: skip
            rows.append((names[1], measured, fraction >= TARGET_GATEWAY_FRACTION))
        bound = batch1.p50_ms + TARGET_ONE_CLIENT_MARGIN_MS
        measured = f"{fmt(g.cache_hit.p50_ms, 2)} ms vs {fmt(batch1.p50_ms, 2)} + {TARGET_ONE_CLIENT_MARGIN_MS:g} ms"
        measured += lone_call_context(report) + lone_call_split(g)
        rows.append((names[2], measured, g.cache_hit.p50_ms <= bound))
    rows += [p99_row(gateway) for gateway in report.gateways]
    rows += int8_rows(report)
    rows += path_targets(report)
    scaling = report.profile_scaling
    if scaling is None or len(scaling.timings) < 2:
        rows.append((f"profile graph, batch 1: cost at the largest catalog ≤ {TARGET_PROFILE_GROWTH:g}× at the smallest",
                     "not measured: fewer than two catalog sizes", None))  # fmt: skip
    else:
        large, small = max(scaling.timings), min(scaling.timings)
        ratio = scaling.ratio(large, small)
        rows.append(
            (f"profile graph, batch 1, at {large:,} items ≤ {TARGET_PROFILE_GROWTH:g}× its cost at {small:,}",
             f"{ratio:.2f}× ({fmt(scaling.timings[large].p50_ms, 3)} vs {fmt(scaling.timings[small].p50_ms, 3)} ms)",
             ratio <= TARGET_PROFILE_GROWTH)
        )  # fmt: skip
    return rows


def in_every_pairing(results: list[tuple[str, bool]]) -> tuple[str, bool]:
    """A target's (figure, met) in each pairing of the floor with the gateway (`RequestPath.pairings`)
    as one cell: every figure shown, met only if met in each."""
    if len(results) == 1:
        return results[0]
    ordinals = ("first", "second", "third")  # beyond them, "pairing 4" and so on
    text = "; ".join(
        f"{ordinals[i]} pairing {figure}" if i < len(ordinals) else f"pairing {i + 1} {figure}" for i, (figure, _) in enumerate(results)
    )
    return text, all(met for _, met in results)


def path_targets(report: Report) -> list[tuple[str, str, bool | None]]:
    """Issue 19's rows: the gateway against the bare echo server of the same run."""
    g = path_gateway(report)
    items = f"{g.n_items:,} items" if g is not None else "the first --gateway-items size"
    names = (
        f"gateway CPU per cached Recommend ≤ {TARGET_CPU_VS_ECHO:g}× the bare echo server's CPU per call ({items})",
        f"one client, cached Recommend: p50 ≤ echo p50 + scorer batch-1 p50 + {TARGET_RECOMMEND_MARGIN_MS:g} ms ({items})",
        f"one client, GetProfile: p50 ≤ echo p50 + {TARGET_GET_PROFILE_MARGIN_MS:g} ms",
    )
    if g is None or g.path is None:
        why = report.gateway_reason or "no request-path run"
        return [(name, f"not measured: {why}", None) for name in names]
    pairings = g.path.pairings()

    def each(value: Callable[[EchoResults, dict[str, PathPhase]], tuple[str, bool]]) -> tuple[str, bool]:
        return in_every_pairing([value(echo, phases) for echo, phases in pairings])

    def cpu(echo: EchoResults, phases: dict[str, PathPhase]) -> tuple[str, bool]:
        phase = phases[SATURATED]
        gateway, scorer = phase.cpu_ms_per_call, phase.scorer_cpu_ms_per_call
        ratio = gateway / echo.cpu_ms_per_call
        return (
            f"{ratio:.2f}× ({fmt(gateway, 2)} vs {fmt(echo.cpu_ms_per_call, 2)} ms; less the scorer's runs, "
            f"{fmt(scorer * 1e3, 0)} µs per call: {(gateway - scorer) / echo.cpu_ms_per_call:.2f}×)", ratio <= TARGET_CPU_VS_ECHO,
        )  # fmt: skip

    figure, met = each(cpu)
    catalog = next((r for r in report.catalogs if r.n_items == g.n_items), None)
    if catalog is not None and (threads := gateway_scorer_threads(catalog)) > 1:  # the runs' other threads are not counted
        figure += f" (the scorer's runs: the CPU of the thread that ran each, not of its {threads - 1} other intra-op thread(s))"
    rows: list[tuple[str, str, bool | None]] = [(names[0], figure, met)]
    batch1 = scorer_batch1(report, g.n_items)
    if batch1 is None:
        rows.append((names[1], f"not measured: no scorer batch-1 run at {g.n_items:,} items (--catalog-sizes)", None))
    else:

        def recommend(echo: EchoResults, phases: dict[str, PathPhase]) -> tuple[str, bool]:
            p50, bound = phases["one"].timing.p50_ms, echo.one_client.p50_ms + batch1.p50_ms + TARGET_RECOMMEND_MARGIN_MS
            return (
                f"{fmt(p50, 2)} ms vs {fmt(echo.one_client.p50_ms, 2)} + {fmt(batch1.p50_ms, 2)} + "
                f"{TARGET_RECOMMEND_MARGIN_MS:g} = {fmt(bound, 2)} ms", p50 <= bound,
            )  # fmt: skip

        figure, met = each(recommend)
        cold = scorer_batch1(report, g.n_items, cold=True)
        cold_note = f" (the scorer alone with cold caches: {fmt(cold.p50_ms, 2)} ms)" if cold is not None else ""
        rows.append((names[1], figure + cold_note, met))

    def get_profile(echo: EchoResults, phases: dict[str, PathPhase]) -> tuple[str, bool]:
        p50, bound = phases["get"].timing.p50_ms, echo.one_client.p50_ms + TARGET_GET_PROFILE_MARGIN_MS
        return f"{fmt(p50, 2)} ms vs {fmt(echo.one_client.p50_ms, 2)} + {TARGET_GET_PROFILE_MARGIN_MS:g} = {fmt(bound, 2)} ms", p50 <= bound

    rows.append((names[2], *each(get_profile)))
    return rows


def penalty_target(report: Report) -> tuple[str, str, bool | None]:
    """Issue 19's edit-penalty row: its worst ratio over batch 1 and 32, edited and not (ONNX Runtime)."""
    name = (
        f"edit penalty: the `controllable` preset's scorer at {SERVED_CATALOG:,} items ≤ {TARGET_PENALTY_RATIO:g}× "
        "the same scorer without it (γ = 0), batch 1 and 32, with and without a removed prototype (ONNX Runtime)"
    )
    result = next((r for r in report.penalties if r.n_items == SERVED_CATALOG), None)
    if result is None or "onnxruntime" not in result.runtimes:
        return name, f"not measured: no run at {SERVED_CATALOG:,} items", None
    ratios = {(case, batch): result.ratio("onnxruntime", case, batch) for batch in result.batches for case in PENALTY_CASES}
    worst = max(ratios, key=ratios.__getitem__)
    measured = f"worst {ratios[worst]:.2f}× (b{worst[1]} {worst[0]}); " + ", ".join(
        f"b{batch} {case} {ratio:.2f}×" for (case, batch), ratio in ratios.items()
    )
    return name, measured, ratios[worst] <= TARGET_PENALTY_RATIO


def targets(report: Report) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) for each target; None = not measured. The GPU rows are not measured
    by this command: they come from `make gpu-check`'s record (benchmarks/gpu_check.py)."""
    workers = workers_bench.targets(report.workers, report.gateway_reason)
    return [*cpu_targets(report), penalty_target(report), *workers, *gpu_check.targets(gpu_check.read_record())]


def bottleneck(report: Report) -> list[str]:
    """For missed targets: where each gateway run's CPU and event-loop time went (the tables are in
    the gateway sections)."""
    if all(ok is not False for _, _, ok in targets(report)):
        return []
    cores = os.cpu_count() or 1
    lines = ["Missed targets were profiled (per-process CPU time, the stage tables and pyinstrument, gateway under full load; "
             "tables in the gateway sections)."]  # fmt: skip
    for g in report.gateways:
        cpu = g.cpu
        top = "; ".join(f"`{h.function}` ({h.location}, {h.share:.0%})" for h in g.hotspots[1:4])
        lines.append(
            f"At {g.n_items:,} items and {fmt(g.max_throughput, 0)} req/s the gateway, its Redis and the load generator "
            f"used {cpu.busy:.0%} of the {cores} cores: the gateway took "
            f"{fmt(cpu.gateway_ms, 2)} CPU ms per request, its Redis {fmt(cpu.redis_ms, 2)} and the co-located load "
            f"generator {fmt(cpu.load_ms, 2)}. The gateway alone on all {cores} cores would top out near "
            f"{fmt(cores / (cpu.gateway_ms + cpu.redis_ms) * 1e3, 0)} req/s (CPU-bound estimate, not measured)."
            + (f" Largest self time on its event-loop thread: {top}; the loop was idle {g.hotspots[0].share:.0%} of the time."
               if g.hotspots else "")  # fmt: skip
        )
    return [" ".join(lines), ""]


def ceiling_lines(cpu: gateway_bench.CpuUse, scorer: Timing) -> list[str]:
    """What the machine's cores allow the gateway at most, from CPU per request: the raw scorer's at
    full batches plus what the gateway spends outside its scorer (event loop, gRPC core), its Redis
    and the co-located load generator. Why the gateway-vs-raw target can (or cannot) be met here."""
    if scorer.cpu_s is None:
        return []
    cores = os.cpu_count() or 1
    raw_ms = scorer.cpu_s / (scorer.calls * scorer.batch) * 1e3
    threads = cpu.gateway_threads_ms
    outside_ms = threads[request_path.EVENT_LOOP] + threads[request_path.GRPC_CORE]
    ceiling = cores / (raw_ms + outside_ms + cpu.redis_ms + cpu.load_ms) * 1e3
    return [
        f"What the {cores} cores allow: the raw scorer at batch {scorer.batch} took {fmt(raw_ms, 3)} CPU ms per row (its "
        f"process's CPU over the run, every thread). At saturation the gateway spent {fmt(outside_ms, 3)} CPU ms per "
        f"request on its event loop and gRPC core's threads and {fmt(threads[request_path.OTHER_THREADS], 3)} on its "
        f"other threads, the scorer's among them (`request_path.thread_cpu`); its Redis {fmt(cpu.redis_ms, 3)} and the "
        f"co-located load generator {fmt(cpu.load_ms, 3)}. With every batch full and nothing else running, the cores "
        f"could serve at most {fmt(ceiling, 0)} req/s: {ceiling / scorer.throughput:.0%} of the raw scorer, which has "
        "them to itself (a CPU-bound estimate, not measured).",
        "",
    ]


def profile_scaling_lines(scaling: ProfileScaling | None) -> list[str]:
    if scaling is None:
        return []
    small = min(scaling.timings)
    return [
        f"Profile graph alone (`model_bench.bench_profile_scaling`: random tables of the served width, batch 1, "
        f"a {scaling.history_length}-item history, ONNX Runtime):",
        "",
        f"| items | profile b1 p50 ms | cost vs {small:,} |",
        "| ---: | ---: | ---: |",
        *[
            f"| {n:,} | {fmt(t.p50_ms, 3)} | {scaling.ratio(n, small):.2f}× |"
            for n, t in sorted(scaling.timings.items())
        ],
        "",
    ]


def penalty_lines(results: list[PenaltyResult]) -> list[str]:
    if not results:
        return []
    lines = [
        "## Edit penalty: the cost of an edit, not of the catalog",
        "",
        "APRON's `controllable` preset subtracts γ · each item's mean attention on removed prototypes "
        f"(γ = {results[0].gamma:g}); the same synthetic weights exported with γ = 0 are the reference. "
        "`unedited`: no share is 0 (the graph's `If` skips the penalty); `edited`: one tag removed in every "
        "head of every row (its row of the precomputed penalty table is gathered). ONNX Runtime runs the "
        "`apron_scorer` graph in the in-process backend's session, torch the torch backend's "
        "`TorchModel.top_k` (CPU, fp32), both with the intra-op threads `apron serve` gives them (ONNX Runtime: "
        f"`load_scorer_session`, every core for a scorer graph of {WIDE_SCORER_BYTES / 2**20:g} MiB or more, else "
        "the cores less one; torch: the cores less one), as each runner reported them in the threads column; the "
        "four runners are called in turn, call after call (`model_bench.bench_edit_penalty`). "
        f"K_MAX {results[0].k_max}; {DEMO_CATALOG:,} items is the demo model's catalog (`make serve`).",
        "",
        "| items | runtime | intra-op threads (γ > 0; γ = 0) | batch | profile | γ > 0 p50 ms | γ = 0 p50 ms | ratio |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for result in results:
        for runtime in result.runtimes:
            threads = f"{result.threads[runtime, 'penalty']}; {result.threads[runtime, 'plain']}"
            for batch in result.batches:
                for case in PENALTY_CASES:
                    penalty = result.timings[(runtime, "penalty", case, batch)]
                    plain = result.timings[(runtime, "plain", case, batch)]
                    lines.append(
                        f"| {result.n_items:,} | {runtime} | {threads} | {batch} | {case} | {fmt(penalty.p50_ms, 2)} | "
                        f"{fmt(plain.p50_ms, 2)} | {result.ratio(runtime, case, batch):.2f}× |"
                    )
    return [*lines, ""]


def render(report: Report, command: str, wall_s: float, started: str) -> str:
    served_result = served(report)
    raw = raw_scorer(report)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` on {started} in {wall_s / 60:.1f} min. Every number below comes from that "
        "one run (the GPU rows and section excepted: they come from `make gpu-check`'s record, named there); "
        "regenerate with the same command. Models are synthetic APRON models of the served shape "
        "(80 prototypes, 16 heads, 384-d features, f = 1024→600→N, K_MAX = 1000): speed depends on shapes, "
        "not on trained values.",
        "",
        *machine_description(),
        f"- Load average (every process on the machine, 1 min) at the start and the end of the run: "
        f"{report.load_average[0]:.1f} and {os.getloadavg()[0]:.1f}",
        "",
        "## Targets",
        "",
        "| target | measured | status |",
        "| --- | --- | --- |",
        *[target_row(*row) for row in targets(report)],
        "",
        *bottleneck(report),
        f"## Scorer: ONNX Runtime vs PyTorch eager ({served_result.n_items:,} items)",
        "",
        "The `apron_scorer` graph (shares → u → f → log-softmax → exclusion → TopK) as `apron export` "
        "traces it, run by PyTorch eager and by ONNX Runtime (CPU execution provider). p50 is per call; "
        "rows/s = batch × calls / wall time.",
        "",
        *runtime_table(served_result),
        "",
        "## Cost vs catalog size (ONNX Runtime)",
        "",
        "The scorer grows linearly with the catalog (its last layer and TopK are N wide); the profile graph "
        "gathers the history's rows of the precomputed N×(H·K) item table, so its cost follows the history. "
        f"The scorer is timed asking for the k the gateway's requests ask for (k = {SERVED_K}, its `top_k` "
        "input, as the in-process backend feeds it), and beside it returning K_MAX = min(1,000, items) "
        "(`top_k` not fed: Triton, the torch backend, graphs exported before it).",
        "",
        *catalog_table(report.catalogs),
        "",
        *profile_scaling_lines(report.profile_scaling),
        *penalty_lines(report.penalties),
        f"## Cost vs history length ({report.histories[0].n_items:,} items, batch 1, ONNX Runtime)"
        if report.histories else "## Cost vs history length",
        "",
        "The profile graph gathers one table row per history item, so its cost follows the history length; "
        "the scorer scatters the exclusion list into its N-wide scores.",
        "",
        *history_table(report.histories),
        "",
        "## Raw scorer vs gateway",
        "",
        f"Raw scorer (no gRPC, batch 256, ONNX Runtime, {served_result.n_items:,} items): "
        f"**{fmt(raw.throughput, 0)} rows/s** (p50 {fmt(raw.p50_ms, 1)} ms per batch).",
        "",
    ]
    at_gateway_batch = gateway_batch_scorer(report, "ort")
    as_served = gateway_batch_scorer(report)
    served_g = served_gateway(report)
    if at_gateway_batch is not None:
        lines += [
            f"The gateway's micro-batcher runs at most {GATEWAY_BATCH} requests at once (`max_batch_size`); "
            f"at that batch the raw scorer does **{fmt(at_gateway_batch.throughput, 0)} rows/s** with ONNX Runtime's "
            f"defaults (every core, spinning workers; p50 {fmt(at_gateway_batch.p50_ms, 1)} ms per batch)"
            + ("." if as_served is None else
               f", and **{fmt(as_served.throughput, 0)} rows/s** with the gateway's own session settings "
               f"({served_threads(report)}; no spinning; p50 {fmt(as_served.p50_ms, 1)} ms per batch). The second is the most the "
               "gateway's scorer can do here, so the target compares with it."),
            f"A lone call's batch of 1: p50 {fmt(served(report).timings['scorer/ort/b1'].p50_ms, 2)} ms with ONNX Runtime's "
            f"defaults{lone_call_context(report)}.",
            "",
        ]  # fmt: skip
        if served_g is not None:
            ratios = [f"{served_g.max_throughput / at_gateway_batch.throughput:.0%} of the first"]
            if as_served is not None:
                ratios.insert(0, f"**{served_g.max_throughput / as_served.throughput:.0%}** of the second")
            lines += [f"Gateway / raw scorer at batch {GATEWAY_BATCH}: {', '.join(ratios)}.", ""]
            if as_served is not None:
                lines += ceiling_lines(served_g.cpu, as_served)
    if not report.gateways:
        lines += [f"Gateway: not measured: {report.gateway_reason}.", ""]
    for g in report.gateways:
        raw_here = scorer_b256(report, g.n_items)
        lines += gateway_bench.render(g, raw_here.throughput if raw_here is not None else None)
        if g.path is not None:
            lines += gateway_bench.render_path(g, scorer_batch1(report, g.n_items), scorer_batch1(report, g.n_items, cold=True))
    lines += workers_bench.render(report.workers) if report.workers else []
    lines += gpu_check.section(gpu_check.read_record())
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--catalog-sizes", type=int, nargs="+", default=[1_000, 10_000, SERVED_CATALOG, 100_000])
    parser.add_argument("--history-lengths", type=int, nargs="+", default=[10, 100, 1_000])
    parser.add_argument("--seconds", type=float, default=1.5, help="minimum time per model measurement")
    parser.add_argument("--gateway-seconds", type=float, default=8.0, help="time per gateway load phase")
    parser.add_argument(
        "--gateway-items", type=int, nargs="+", default=[1_000, SERVED_CATALOG],
        help="catalog sizes served by the gateway, one gateway run each; the first also gets the request-path "
        "section (a bare gRPC echo server, stage tables, tail-latency evidence)",
    )  # fmt: skip
    parser.add_argument(
        "--penalty-items", type=int, nargs="*", default=[DEMO_CATALOG, SERVED_CATALOG],
        help="catalog sizes of the edit-penalty benchmark (the target is stated for 41000)",
    )  # fmt: skip
    parser.add_argument("--clients", type=int, default=64, help="concurrent gRPC clients")
    parser.add_argument(
        "--load-processes", type=int, default=max(2, (os.cpu_count() or 2) // 4),
        help="processes of the load generator (a multi-process asyncio gRPC driver)",
    )  # fmt: skip
    parser.add_argument("--skip-gateway", action="store_true", help="model benchmarks only")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out"), help="exports and profiles")
    args = parser.parse_args(argv)
    if SERVED_CATALOG not in args.catalog_sizes:
        parser.error(f"--catalog-sizes must include {SERVED_CATALOG} (the targets are stated for it)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    report = Report()
    for n_items in sorted(args.catalog_sizes):
        served_size = n_items == SERVED_CATALOG
        batches = (1, GATEWAY_BATCH, 256) if served_size else (1, 256)
        served_batches = (1, GATEWAY_BATCH) if served_size else ()  # a lone call's batch, and the gateway's largest
        histories = args.history_lengths if served_size else ()  # on the same export: it takes seconds at this size
        catalog = bench_catalog(n_items, batches, args.seconds, eager=served_size, served_batches=served_batches, history_lengths=histories)
        report.catalogs.append(catalog)
        report.histories += catalog.histories
        print(f"catalog {n_items:,}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    report.profile_scaling = bench_profile_scaling(sorted(args.catalog_sizes), args.seconds / 2)
    print(f"profile scaling: done ({time.perf_counter() - start:.0f} s)", flush=True)
    for n_items in args.penalty_items:
        report.penalties.append(bench_edit_penalty(n_items, PENALTY_BATCHES, args.seconds * 2))
        print(f"edit penalty, {n_items:,} items: done ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.skip_gateway:
        report.gateway_reason = "skipped (--skip-gateway)"
    elif reason := gateway_bench.unavailable():
        report.gateway_reason = reason
    else:
        for i, n_items in enumerate(args.gateway_items):
            settings = gateway_bench.Settings(
                n_items=n_items, clients=args.clients, seconds=args.gateway_seconds, workdir=args.workdir,
                load_fraction=LOAD_FRACTION, raw_throughput=raw_scorer(report).throughput,
                profile_if_p99_above_ms=TARGET_P99_MS, load_processes=args.load_processes, request_path=i == 0,
            )  # fmt: skip
            report.gateways.append(gateway_bench.run(settings))
            print(f"gateway at {n_items:,} items: done ({time.perf_counter() - start:.0f} s)", flush=True)
        n_items = max(args.gateway_items)
        int8 = settings_ab.Target.export(n_items, args.workdir / "int8", int8=True)
        sample = settings_ab.measure(int8, {}, args.clients, args.gateway_seconds, args.load_processes, LOAD_FRACTION)
        report.int8 = Int8Gateway(n_items, args.clients, sample)
        print(f"gateway at {n_items:,} items, int8: done ({time.perf_counter() - start:.0f} s)", flush=True)
        report.workers = workers_bench.run(workers_bench.Settings(args.workdir, args.gateway_seconds, args.clients, args.load_processes))
    text = render(report, command, time.perf_counter() - start, started)
    atomic_write_text(args.output, text)
    print(f"wrote {args.output} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
