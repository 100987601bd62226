"""Seconds per training epoch of one model on a processed dataset: the measurement behind the
MacridVAE speed-up (training/README.md). Run it at two commits to compare implementations:

    python -m training.speed artifacts/data/lastfm-2k --model sem-macridvae --features text --threads 1 \
        --set embedding_dim=50 --epochs 2

Each epoch is the trainer's (every training batch, then the validation NDCG@100); the JSON gives
the mean wall time and CPU time per epoch and each epoch's validation NDCG@100 (equal numbers at two commits
show that a faster implementation trains the same model).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from training.cli import parse_overrides
from training.data.dataset import ProcessedDataset
from training.device import machine_description
from training.train import build_model, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a directory written by `apron prepare`")
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", default="text")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = ProcessedDataset.load(args.dataset)
    hyperparameters = parse_overrides(args.overrides, args.model)
    cpu = time.process_time()
    build_model(dataset, args.model, args.features, dict(hyperparameters))  # what train() also does first
    build_cpu = time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    _, info = train(dataset, args.model, features_kind=args.features, epochs=args.epochs, batch_size=args.batch_size,
                    seed=0, patience=args.epochs, device="cpu", hyperparameters=hyperparameters, progress=False)  # fmt: skip
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    # the trainer's history has no per-epoch clock; the epochs' share of the wall time is equal
    per_epoch = info.train["wall_time_s"] / max(1, info.train["epochs_run"])
    print(json.dumps({
        "model": args.model, "hyperparameters": hyperparameters, "epochs": info.train["epochs_run"],
        "seconds_per_epoch": round(per_epoch, 2), "total_s": round(total, 1), "threads": args.threads,
        # CPU seconds per epoch (train() less building the model): steadier than the wall clock on a
        # machine that other work shares
        "cpu_s_per_epoch": round((cpu - build_cpu) / max(1, info.train["epochs_run"]), 2),
        "machine": machine_description(torch.device("cpu")), "torch": torch.__version__,
        "python": platform.python_version(),
        "val_ndcg@100": [round(h["val_ndcg@100"], 6) for h in info.train["history"]],
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
