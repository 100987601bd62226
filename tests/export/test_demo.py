"""export/demo.py: the demo model repository `apron serve` builds when it has none."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from export.demo import DemoSettings, build_demo_repository, demo_dataset_dir, lastfm_copy
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.redis_process import RedisProcess
from tests.export.fixtures import REPOSITORY_README
from tests.serving.conftest import gateway_config, running_gateway
from training.data.dataset import ProcessedDataset
from training.models.apron import PRESETS


async def test_demo_repository_is_built_and_served(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Built as `make serve` builds it: into a model_repository/ that holds only its README; a line
    after each training epoch (the Last.fm demo trains for half a minute)."""
    caplog.set_level(logging.INFO, logger="apron.demo")
    (tmp_path / "model_repository").mkdir()
    shutil.copyfile(REPOSITORY_README, tmp_path / "model_repository" / "README.md")
    repository = build_demo_repository(tmp_path / "model_repository", DemoSettings(dataset="synthetic", n_items=300, n_users=600, n_tags=8, epochs=2))
    assert (repository / "apron_metadata.json").is_file() and (repository / "README.md").is_file()
    epochs = [record.getMessage() for record in caplog.records if re.match(r"demo: epoch \d+/2 done", record.getMessage())]
    assert [line.split()[2] for line in epochs] == ["1/2", "2/2"] and all("NDCG@100" in line for line in epochs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".apron-demo-")]  # the work dir is gone
    demo_data = ProcessedDataset.load(demo_dataset_dir(repository))  # kept for `make loadtest`
    metadata = json.loads((repository / "apron_metadata.json").read_text())
    assert demo_data.item_ids == metadata["item_ids"]
    assert metadata["checkpoint"]["train"]["hyperparameters"] == PRESETS["controllable"]  # the demo's default preset
    with RedisProcess() as redis_server:
        async with running_gateway(gateway_config(repository, redis_server.url)) as gateway:
            prototypes = await gateway.stub.ListPrototypes(pb.ListPrototypesRequest())
            assert len(prototypes.prototypes) == 8
            history = [p.item_id for p in prototypes.prototypes[:3]]
            response = await gateway.stub.Recommend(pb.RecommendRequest(user_id="demo", history=history, k=10))
            assert len(response.items) == 10 and not {i.item_id for i in response.items} & set(history)


def test_demo_dataset_choice() -> None:
    from export.demo import resolve_dataset

    assert resolve_dataset("auto") == ("lastfm-2k" if lastfm_copy() else "synthetic")
    assert resolve_dataset("synthetic") == "synthetic" and resolve_dataset("lastfm-2k") == "lastfm-2k"
    with pytest.raises(ValueError, match="demo dataset must be one of auto, lastfm-2k, synthetic"):
        DemoSettings(dataset="msd")
    with pytest.raises(ValueError, match="demo preset must be one of paper, controllable"):
        DemoSettings(preset="best")
