"""`make benchmarks` end to end at toy sizes: every section is measured and rendered from one run,
the gateway section included (a real gateway process with its own redis-server)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from benchmarks.gateway_bench import COMPARED_INTAKE
from benchmarks.run import main
from serving.config import ServingConfig


def test_benchmark_command_writes_every_section(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    code = main(
        ["--output", str(output), "--workdir", str(tmp_path / "work"), "--catalog-sizes", "1000", "41000",
         "--history-lengths", "10", "--seconds", "0.05", "--gateway-seconds", "1", "--gateway-items", "500",
         "--clients", "4", "--penalty-items", "600"]
    )  # fmt: skip
    assert code == 0
    text = output.read_text()
    for heading in ("## Targets", "## Scorer: ONNX Runtime vs PyTorch eager", "## Cost vs catalog size",
                    "## Cost vs history length", "## Raw scorer vs gateway", "### Micro-batching on vs off",
                    "### Profile cache hit vs miss", "### Where the CPU goes", "## Request path (500 items)",
                    "### Tail latency at 70% of the maximum throughput (500 items, open loop): the evidence",
                    "## Edit penalty: the cost of an edit, not of the catalog",
                    "## Scale-out: `apron serve --workers N`",
                    "## GPU: `make gpu-check`"):  # fmt: skip
        assert heading in text, heading
    cores = len(os.sched_getaffinity(0))
    workers = re.findall(r"^\| (\d+) \| [0-9,]+ \| [0-9.,]+ \| [0-9.,]+ \| (\d+)% \| (\d+)% \| (\d+)% \| -?\d+% \|$", text, re.M)
    assert [int(w[0]) for w in workers] == sorted({1, cores})
    assert all(0 <= int(idle) <= 100 and int(gateway) > 0 and int(load) > 0 for _, idle, gateway, load in workers)
    assert re.search(r"\| at saturation with 64 clients, `--workers \d+` .* \| -?\d+% unused at [0-9,]+ req/s, \d+ clients: idle \d+% "
                     r"\+ other processes on the shared machine -?\d+%", text)
    ratio = re.search(r"\| ratio on / off \| ([0-9.]+)× \|", text)
    assert ratio and float(ratio.group(1)) > 0
    busy = re.search(r"\| all three \| [0-9.,]+ \| (\d+)% \|", text)
    assert busy and 0 < int(busy.group(1)) <= 100
    assert "nan" not in text.lower()
    # the one-client target's context: the scorer at batch 1 with the gateway's own session settings, and cold
    assert re.search(r"A lone call's batch of 1: p50 [0-9.]+ ms with ONNX Runtime's defaults \(the scorer alone with the gateway's own session settings: [0-9.]+ ms; with its caches cold: [0-9.]+ ms\)\.", text)
    # the raw scorer at the gateway's batch, also with the gateway's own session settings (the target's reference)
    assert re.search(r"and \*\*[0-9,]+ rows/s\*\* with the gateway's own session settings \(\d+ intra-op thread", text)
    # the request path: the echo floor, and every stage a cached Recommend goes through, in each phase
    assert re.search(r"One client, one call in flight: \*\*p50 [0-9.]+ ms\*\*", text)
    for stage in ("auth", "redis_read", "scorer_run", "response", "record"):
        assert re.search(rf"\| `{stage}` \| [0-9,]+ \| [0-9,]+ \| ", text), stage
    # outside the stages, split at the handler for every phase by the gateway's call log (in the
    # request-path section: a lone call's own table, at a size without it, has the same rows)
    section = text[text.index("## Request path (500 items)") :]
    for part in ("before the handler", "after it"):
        row = re.search(rf"^\| of which {part}: .*$", section, re.M)
        assert row and len(re.findall(r"\| -?[0-9,]+", row.group(0))) == 4, row
    # the default --grpc-intake against COMPARED_INTAKE, each with where its calls waited
    intake = re.findall(
        r"^\| (\d+ \((?:default|grpc.aio's own)\)) \| [0-9,]+ \| [0-9.,]+ \| [0-9.,]+ \| ([0-9.,]+) \| [0-9.,]+ \| [0-9.,]+ \| [0-9.,]+ \|$",
        text, re.M,
    )  # fmt: skip
    assert [depth for depth, _ in intake] == [f"{ServingConfig().grpc_intake} (default)", f"{COMPARED_INTAKE} (grpc.aio's own)"], intake
    # the open loop's tail evidence, with the scorer's share of the time running a batch
    assert re.search(r"`apron_scorer` runs of [0-9.]+ requests and [0-9.]+ ms on average .*: the scorer, one run at a time, was running \d+% of the time", text)
    reading = re.search(r"^Reading: .*$", text, re.M)
    assert reading and "{" not in reading.group(0)  # every figure of the tail's reading filled in
    assert re.search(r"On average a call spent [0-9.,]+ ms from its send to the gateway's first stage", reading.group(0))
    # how much of the event loop the offered share of the maximum throughput took, and why
    assert re.search(r"At the maximum throughput \(the closed loop, \d+% of whose rate was offered\) a call cost the loop "
                     r"[0-9.]+ ms: here each cost [0-9.]+× that \(its batches held [0-9.]+ requests\), so \d+% of the rate "
                     r"took \d+% of the loop\.", reading.group(0))
    # the maximum measured again right after the open loop, and the offered rate's share of it
    after = re.search(r"^The maximum throughput, measured again right after the open loop .*: ([0-9,]+) req/s, against "
                      r"([0-9,]+) req/s when the offered rate was set from it, so the open loop offered (\d+)% of the "
                      r"maximum measured after it \(70% of the one before\)\.$", text, re.M)
    assert after, "no maximum measured after the open loop"
    again, first, share = (float(v.replace(",", "")) for v in after.groups())
    assert again > 0 and share == pytest.approx(100 * 0.7 * first / again, abs=1.5)
    assert re.search(rf"\| p99 ≤ 50 ms at 70% of max throughput \(open loop\), 500 items \| .* req/s offered \(p50 [0-9.]+ ms\); "
                     rf"{share:.0f}% of the maximum measured right after it \|", text)
    assert re.search(r"sent p99 [0-9.,]+ ms late \(its own garbage collections, its heap frozen after set-up: [0-9,]+ in all, "
                     r"[0-9.,]+ ms, the longest [0-9.,]+ ms\)", reading.group(0))
    # each request-path target in both pairings of the floor with the gateway measured next to it
    for target in (r"gateway CPU per cached Recommend ≤ 2× the bare echo server's CPU per call \(500 items\)",
                   r"one client, GetProfile: p50 ≤ echo p50 \+ 0.3 ms"):  # (Recommend's needs a scorer run at 500 items)
        row = re.search(rf"^\| {target} \| first pairing [0-9.]+(×| ms).*; second pairing [0-9.]+(×| ms).* \| (met|\*\*missed\*\*) \|$", text, re.M)
        assert row, target
    assert re.search(r"The Targets table pairs each floor with the gateway measured next to it: .*\(gateway CPU [0-9,]+ µs per call", text)
    # a call's CPU by thread group, the gateway's beside the echo server's at one client and at
    # saturation, the scorer's runs among it, and the reading of the differences
    cell = r"[0-9,]+ \([0-9,]+ / [0-9,]+\)"
    header = "| threads | echo server, 1 client | gateway: 1 client, Recommend | gateway: 1 client, GetProfile | echo server, 4 clients | gateway: 4 clients, Recommend |"
    assert header in text
    for group in ("event loop", "gRPC core", "other threads"):
        assert re.search(rf"^\| {group} \|( {cell} \|){{5}}$", text, re.M), group
    loop = re.search(rf"^\| event loop \| {cell} \| ([0-9,]+) ", text, re.M)
    assert loop and int(loop.group(1).replace(",", "")) > 0  # the gateway's loop did the calls' work
    scorer = re.search(r"^\| of which the scorer's runs, wall .* \|  \| [0-9,]+ \| ([0-9,]+) \|  \| [0-9,]+ \|$", text, re.M)
    assert scorer and scorer.group(1) == "0"  # GetProfile runs no scorer; the echo server none at all
    # the runs' own CPU (apron_inference_thread_cpu_seconds_total): some for each Recommend, none for GetProfile
    runs_cpu = re.search(r"^\| the scorer's runs, CPU of the thread that ran them .* \|  \| ([0-9,]+) \| ([0-9,]+) \|  \| ([0-9,]+) \|$", text, re.M)
    assert runs_cpu and runs_cpu.group(2) == "0" and int(runs_cpu.group(1).replace(",", "")) > 0
    # the CPU target read with and without the scorer's own CPU, in each pairing
    assert re.search(r"first pairing [0-9.]+× \([0-9.]+ vs [0-9.]+ ms; less the scorer's runs, [0-9,]+ µs per call: [0-9.]+×\); "
                     r"second pairing [0-9.]+× \([0-9.]+ vs [0-9.]+ ms; less the scorer's runs, [0-9,]+ µs per call: [0-9.]+×\)", text)
    gains = r"[+-][0-9,]+ µs \(event loop [+-][0-9,]+ µs, gRPC core [+-][0-9,]+ µs, other threads [+-][0-9,]+ µs; system time \d+% of the gateway's CPU\)"
    assert re.search(rf"^Beyond the echo server's: one client, a Recommend cost the gateway {gains} and a GetProfile {gains}; at saturation a Recommend {gains}\.$", text, re.M)
    assert re.search(r"\| edit penalty: .* \| not measured: no run at 41,000 items \| not measured \|", text)
    assert len(re.findall(r"\| 600 \| (onnxruntime|torch) \| \d+; \d+ \| (1|32) \| (unedited|edited) \|", text)) == 2 * 2 * 2
    # the p99 target once more, for the largest gateway size exported with --int8
    assert re.search(
        r"^\| p99 ≤ 50 ms at 70% of max throughput \(open loop\), 500 items, the scorer exported with `apron export --int8` .*"
        r"\| [0-9.]+ ms at [0-9,]+ req/s offered \(closed loop: [0-9,]+ req/s at 4 clients; one client p50 [0-9.]+ ms\)"
        r"(; [0-9,]+ calls \([0-9.]+%\) refused for load, in no latency)? \| (met|\*\*missed\*\*) \|$",
        text, re.M,
    )  # fmt: skip
