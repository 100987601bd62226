"""`python -m benchmarks.live_controllability CHECKPOINT`: APRON's Δ@20 measured through a running gateway.

The checkpoint is exported to a fresh model repository and served by a real gateway (ONNX Runtime
backend, its own redis-server) on a free port. For every test user with held-out items: Recommend
with the user's fold-in history (the full list F), then for each tag τ of U_τ (a history item
carries τ): EditProfile scale 0 on τ, Recommend again from the stored profile (the modified list
M), and EditProfile reset. Δ@20 and %Δ@20 are computed from those lists exactly as the offline
evaluation computes them from scores (`training.metrics`, Eq. 15-17), and compared with the
offline figure on the same users. Both use the fold-in history excluded from the ranking.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from training.evaluate import CONTROL_K
from training.metrics import (
    TAG_MIN_SHARE,
    Controllability,
    summarize_controllability,
    tag_delta,
    tag_membership,
)


@dataclass(frozen=True)
class LiveCase:
    """What the gateway is asked about: users' fold-in histories (original item ids) and T(·)."""

    histories: list[list[str]]  # per user, the fold-in item ids
    item_index: dict[str, int]  # item id -> catalog index
    tag_items: np.ndarray  # (K, N) boolean: item carries tag
    tag_names: list[str]


def make_case(fold_in: sp.csr_matrix, item_ids: list[str], item_tags: sp.spmatrix, tag_names: list[str],
              tag_min_share: float = TAG_MIN_SHARE) -> LiveCase:  # fmt: skip
    histories = [[item_ids[i] for i in fold_in[u].indices] for u in range(fold_in.shape[0])]
    return LiveCase(histories, {item: i for i, item in enumerate(item_ids)},
                    tag_membership(item_tags, tag_min_share).T, list(tag_names))  # fmt: skip


def _tag_dcg(items: list[str], case: LiveCase, tag: int, k: int) -> float:
    """Eq. 15 of a returned list, normalised by the ideal DCG@k (as `training.metrics.tag_ndcg_at_k`)."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    carries = np.array([case.tag_items[tag, case.item_index[i]] for i in items[:k]], dtype=float)
    return float((carries * discounts[: len(carries)]).sum() / discounts.sum())


async def live_controllability(stub: Any, case: LiveCase, k: int = CONTROL_K, user_prefix: str = "live") -> Controllability:
    """Δ@k through the gateway's RPCs (see the module docstring)."""
    from serving.proto_gen.apron.v1 import recommender_pb2 as pb

    n_tags = case.tag_items.shape[0]
    full = np.zeros((len(case.histories), n_tags))
    modified = np.zeros_like(full)
    in_tag = np.zeros(full.shape, dtype=bool)  # U_τ membership
    for u, history in enumerate(case.histories):
        user = f"{user_prefix}-{u}"
        await stub.EditProfile(pb.EditProfileRequest(user_id=user, reset=True))
        response = await stub.Recommend(pb.RecommendRequest(user_id=user, history=history, k=k))
        full_items = [item.item_id for item in response.items]
        indices = [case.item_index[i] for i in history]
        for tag in np.flatnonzero(case.tag_items[:, indices].any(axis=1)):
            in_tag[u, tag] = True
            full[u, tag] = _tag_dcg(full_items, case, tag, k)
            edit = pb.Edit(prototype=case.tag_names[tag], scale=0.0)
            await stub.EditProfile(pb.EditProfileRequest(user_id=user, edits=[edit]))
            response = await stub.Recommend(pb.RecommendRequest(user_id=user, k=k))  # the stored profile
            modified[u, tag] = _tag_dcg([item.item_id for item in response.items], case, tag, k)
            await stub.EditProfile(pb.EditProfileRequest(user_id=user, reset=True))
    per_tag = []
    for tag in range(n_tags):
        users = np.flatnonzero(in_tag[:, tag])
        if users.size and (result := tag_delta(full[users, tag], modified[users, tag], tag)) is not None:
            per_tag.append(result)
    return summarize_controllability(per_tag, k)


def offline_controllability(model: Any, fold_in: sp.csr_matrix, item_tags: sp.spmatrix,
                            tag_min_share: float = TAG_MIN_SHARE) -> Controllability:  # fmt: skip
    """The offline evaluation's Δ@k on the same users (`training.evaluate.controllability`)."""
    from types import SimpleNamespace

    from training.evaluate import controllability, score_users
    from training.metrics import exclude_history

    scores = exclude_history(score_users(model, fold_in), fold_in)
    return controllability(model, SimpleNamespace(item_tags=item_tags), fold_in, scores, tag_min_share=tag_min_share)


async def _measure(repository: Path, case: LiveCase, k: int) -> Controllability:
    import grpc

    from serving.config import ServingConfig
    from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
    from serving.redis_process import RedisProcess
    from serving.server import create_server

    with RedisProcess() as redis:
        config = ServingConfig(repository=str(repository), build_demo=False, port=0, metrics_port=0,
                               redis_url=redis.url, backend="onnxruntime", log_format="text", auth=False,
                               edit_rate=0.0)  # one client measuring, not a per-user limits test  # fmt: skip
        server, port = await create_server(config)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await live_controllability(pb_grpc.RecommenderStub(channel), case, k)
        finally:
            await server.stop(2.0)


def run(checkpoint: Path, dataset_dir: Path | None, k: int, max_users: int | None) -> dict[str, Any]:
    from export.pipeline import export_checkpoint
    from training.checkpoint import load_checkpoint
    from training.device import machine_description, resolve_device
    from training.evaluate import load_dataset_for

    start = time.perf_counter()
    model, info = load_checkpoint(checkpoint)
    model.eval()
    dataset = load_dataset_for(info.dataset, dataset_dir)
    users = np.flatnonzero(np.asarray(dataset.test_te.sum(axis=1)).ravel() > 0)[:max_users]  # as evaluate_model
    fold_in = dataset.test_tr[users]
    tag_min_share = getattr(model.config, "tag_min_share", TAG_MIN_SHARE)
    case = make_case(fold_in, dataset.item_ids, dataset.item_tags, dataset.tag_names, tag_min_share)
    offline = offline_controllability(model, fold_in, dataset.item_tags, tag_min_share)
    with tempfile.TemporaryDirectory(prefix="apron-live-") as tmp:
        repository = Path(tmp) / "model_repository"
        export_checkpoint(checkpoint, repository, k_max=max(k, 20))
        live = asyncio.run(_measure(repository, case, k))
    summary = {
        "command": "python -m benchmarks.live_controllability " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(resolve_device("cpu")),
        "checkpoint": str(checkpoint),
        "n_users": int(len(users)),
        "n_tags": len(live.per_tag),
        "description": (f"gateway (ONNX Runtime backend, real redis-server, gRPC over 127.0.0.1), the "
                        f"{len(users)} test users with held-out items; EditProfile scale 0 per tag of U_τ, then "
                        "Recommend from the stored profile, then reset; Δ@20 from the returned lists."),  # fmt: skip
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    for name, result in (("offline", offline), ("live", live)):
        values = asdict(result)
        values.pop("per_tag")
        summary[name] = values
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live_controllability", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="an APRON checkpoint (e.g. artifacts/results/checkpoints/lastfm-2k/apron.pt)")
    parser.add_argument("--dataset", type=Path, default=None, help="its processed dataset (default: the recorded path)")
    parser.add_argument("--k", type=int, default=CONTROL_K)
    parser.add_argument("--max-users", type=int, default=None, help="only the first N test users")
    parser.add_argument("--output", type=Path, default=Path("docs") / "results" / "live_controllability.json",
                        help="the record RESULTS.md includes (committed, like the runs)")
    args = parser.parse_args(argv)
    summary = run(args.checkpoint, args.dataset, args.k, args.max_users)
    from common.files import atomic_write_text

    atomic_write_text(args.output, json.dumps(summary, indent=1))
    print(json.dumps({key: summary[key] for key in ("offline", "live", "n_users", "wall_time_s")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
