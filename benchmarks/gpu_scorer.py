"""The project's scorer on a GPU against `../shared/perf/gpu_ceiling.py`'s bound, same shapes, one run.

What is timed, per catalog size and batch size:
- `scorer`: `serving/backends/torch.py`'s `TorchModel.top_k`, what `--backend torch --device cuda`
  runs per batch: numpy profile weights in (pinned copy), the bucket's CUDA graph (shares, u, f in
  fp16, log-sum-exp), exclusions written as -inf (50 per row, like a history), top-k on the GPU,
  ids and scores back through pinned buffers, one synchronisation;
- `ceiling`: gpu_ceiling.py's step on the same (B, 600) x (600, N) shape: addmm + top-k, fp16,
  replayed as a CUDA graph, timed with CUDA events over the same number of calls.
The ratio is ceiling ms / scorer ms (= scorer queries/s over the ceiling's). The issue's target:
≥ 0.5 at batch 256, 41k and 1M items. The model is random with the project's shapes (APRON
defaults: H = 16 heads of 64, f = 1024 -> 600 -> N, K = 80 prototypes): speed depends on shapes only.

    python -m benchmarks.gpu_scorer                       # on the GPU machine: JSON lines
    python -m benchmarks.gpu_scorer --device cpu --items 2000 --batches 1 4 --calls 3   # smoke test

`make gpu-check` (benchmarks/gpu_check.py) runs it on the GPU machine with the rest of the GPU check.
NOT RUN ON A GPU HERE: the machine this was written on has no GPU, so no GPU figure in this
repository comes from it yet; `--device cpu` only checks that the script runs (tests do that).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu_check import CATALOGS
from export import contract
from export.served_model import ServedProfile, ServedScorer
from serving.backends.torch import TORCH_DTYPES, TorchModel, resolve_dtype, weights_path

BATCHES = (1, 256, 1024)
HEADS, HEAD_DIM, HIDDEN, PROTOTYPES = 16, 64, 600, 80  # APRONConfig defaults, 80 tags
EXCLUDED_PER_ROW = 50


def random_served(
    n_items: int, k_max: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[ServedProfile, ServedScorer]:
    """Served modules of the project's shapes with random weights; table and f in `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.rand(n_items, HEADS * PROTOTYPES, generator=generator)  # (N, H*K)
    values = torch.randn(PROTOTYPES, HEADS, HEAD_DIM, generator=generator)  # (K, H, D')
    layers = [
        (torch.randn(HIDDEN, HEADS * HEAD_DIM, generator=generator) * 0.05, torch.zeros(HIDDEN)),
        (torch.randn(n_items, HIDDEN, generator=generator) * 0.05, torch.zeros(n_items)),
    ]
    return ServedProfile(table.to(dtype), HEADS, PROTOTYPES), ServedScorer(values, layers, k_max, f_dtype=dtype)


@dataclass(frozen=True)
class Row:
    device: str
    items: int
    batch: int
    k: int
    dtype: str  # the table's and f's
    scorer_ms: float
    ceiling_ms: float
    scorer_qps: float
    ceiling_qps: float
    ratio: float  # ceiling_ms / scorer_ms


def timer(device: torch.device) -> Callable[[Callable[[], object], int, int], float]:
    """ms per call: CUDA events around `calls` calls after `warm` (gpu_ceiling.py's way), or wall time on CPU."""

    def cuda(fn: Callable[[], object], calls: int, warm: int) -> float:
        for _ in range(warm):
            fn()
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / calls

    def cpu(fn: Callable[[], object], calls: int, warm: int) -> float:
        for _ in range(warm):
            fn()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) * 1e3 / calls

    return cuda if device.type == "cuda" else cpu


def ceiling_step(device: torch.device, dtype: torch.dtype, batch: int, n_items: int, k: int) -> Callable[[], object]:
    """gpu_ceiling.py's work: (B, 600) x (600, N) + bias, top-k; a CUDA graph replay on CUDA."""
    weight = torch.randn(HIDDEN, n_items, device=device, dtype=dtype) * 0.05
    bias = torch.zeros(n_items, device=device, dtype=dtype)
    x = torch.randn(batch, HIDDEN, device=device, dtype=dtype)

    def step() -> object:
        return torch.topk(torch.addmm(bias, x, weight), k, dim=-1)

    if device.type != "cuda":
        return step
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def bench(
    device: str = "cuda",
    catalogs: Sequence[int] = CATALOGS,
    batches: Sequence[int] = BATCHES,
    k: int = 100,
    dtype: str = "auto",
    calls: int = 50,
    seed: int = 0,
) -> Iterator[Row]:
    """One Row per (catalog, batch) as each is measured; the scorer and the ceiling timed back to
    back in this process."""
    target = torch.device(device)
    chosen = resolve_dtype(dtype, target.type)
    time_ms = timer(target)
    rng = np.random.default_rng(seed)
    for n_items in catalogs:
        profile, scorer = random_served(n_items, k, chosen, seed)
        model = TorchModel(profile, scorer, device, max(batches), cuda_graphs=True, buckets=sorted(set(batches)))
        model.capture()
        for batch in batches:
            weights = (rng.dirichlet(np.ones(PROTOTYPES), size=(batch, HEADS)) * 50).astype(np.float32)
            excludes = [rng.choice(n_items, size=min(EXCLUDED_PER_ROW, n_items), replace=False) for _ in range(batch)]
            repeats = max(3, calls // 2) if batch >= 1024 else calls
            scorer_ms = time_ms(lambda m=model, w=weights, e=excludes: m.top_k(w, e), repeats, 3)
            ceiling_ms = time_ms(ceiling_step(target, chosen, batch, n_items, k), repeats, 3)
            yield Row(device, n_items, batch, k, str(chosen).removeprefix("torch."), round(scorer_ms, 4),
                      round(ceiling_ms, 4), round(batch / scorer_ms * 1e3), round(batch / ceiling_ms * 1e3),
                      round(ceiling_ms / scorer_ms, 3))  # fmt: skip
        del model, profile, scorer
        if target.type == "cuda":
            torch.cuda.empty_cache()


def write_repository(
    repository: Path, n_items: int, dtype: torch.dtype = torch.float32, k_max: int = contract.DEFAULT_K_MAX, seed: int = 0
) -> Path:
    """A model repository the torch backend serves (`apron serve --backend torch`): `random_served`'s
    modules in the export's weights files (export/served_model.py) and an `apron_metadata.json`, no
    ONNX graphs. At 1M items an ONNX export passes protobuf's 2 GB limit, and the export needs the
    training stack; the torch backend reads only these files. `dtype` is the stored tensors' type:
    the export writes float32; float16 halves what each of N gateway workers holds on the GPU while
    it loads (the float32 tensors and their float16 copy)."""
    from export.metadata import ExportMetadata, tensor_table, versioned_metadata_name
    from export.served_model import profile_tensors, scorer_tensors, weights_bytes

    k_max = min(k_max, n_items)
    profile, scorer = random_served(n_items, k_max, seed=seed)
    prototype_items = np.random.default_rng(seed).choice(n_items, PROTOTYPES, replace=False).tolist()
    item_ids = [f"item{i}" for i in range(n_items)]
    metadata = ExportMetadata(
        model_version=1, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        dataset_name=f"random-{n_items}", dataset_fingerprint=f"random-{n_items}-seed{seed}", n_items=n_items,
        n_heads=HEADS, n_prototypes=PROTOTYPES, k_max=k_max,
        feature_dim=0,  # no apron_item_encoder in this repository
        tag_names=[f"tag{k}" for k in range(PROTOTYPES)], tag_groups=["genre"] * PROTOTYPES,
        prototype_items=prototype_items, prototype_item_ids=[item_ids[i] for i in prototype_items],
        item_ids=item_ids, item_names=[f"Item {i}" for i in range(n_items)],
        tensors=tensor_table(contract.model_io(HEADS, PROTOTYPES, 0, k_max)), backend="torch",
        precision="fp32" if dtype == torch.float32 else "fp16", checkpoint={"random": True, "seed": seed},
    )  # fmt: skip
    for name, (tensors, info) in ((contract.PROFILE_MODEL, profile_tensors(profile)), (contract.SCORER_MODEL, scorer_tensors(scorer))):
        path = weights_path(repository, name, metadata.model_version)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(weights_bytes({key: value.to(dtype) for key, value in tensors.items()}, info))
    for name in (contract.METADATA_FILENAME, versioned_metadata_name(metadata.model_version)):
        (repository / name).write_text(metadata.to_json())
    return repository


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--items", type=int, nargs="+", default=list(CATALOGS))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--k", type=int, default=100, help="top-k width (gpu_ceiling.py uses 100)")
    parser.add_argument("--dtype", choices=TORCH_DTYPES, default="auto", help="auto: float16 on cuda, float32 on cpu")
    parser.add_argument("--calls", type=int, default=50, help="timed calls per shape (after 3 warm-up calls)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device visible to torch; --device cpu runs the smoke test")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__}), flush=True)
    for row in bench(args.device, args.items, args.batches, args.k, args.dtype, args.calls):
        print(json.dumps(asdict(row)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
