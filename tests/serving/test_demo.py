"""The demo path of `apron serve` (export/demo.py, built by serving/cli.py): with no model in the repository, train a small
APRON on synthetic data, export it, and serve it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from export.demo import DemoSettings, build_demo_repository, demo_dataset_dir
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.redis_process import RedisProcess
from tests.serving.conftest import gateway_config, running_gateway
from training.data.dataset import ProcessedDataset

ROOT = Path(__file__).resolve().parents[2]


async def test_demo_repository_is_built_and_served(tmp_path: Path, redis_server: RedisProcess) -> None:
    repository = build_demo_repository(tmp_path / "model_repository", DemoSettings(n_items=300, n_users=600, n_tags=8, epochs=2))
    assert (repository / "apron_metadata.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".apron-demo-")]  # the work dir is gone
    demo_data = ProcessedDataset.load(demo_dataset_dir(repository))  # kept for `make loadtest`
    assert demo_data.item_ids == json.loads((repository / "apron_metadata.json").read_text())["item_ids"]
    async with running_gateway(gateway_config(repository, redis_server.url)) as gateway:
        prototypes = await gateway.stub.ListPrototypes(pb.ListPrototypesRequest())
        assert len(prototypes.prototypes) == 8
        history = [p.item_id for p in prototypes.prototypes[:3]]
        response = await gateway.stub.Recommend(pb.RecommendRequest(user_id="demo", history=history, k=10))
        assert len(response.items) == 10 and not {i.item_id for i in response.items} & set(history)


def test_readme_first_command_on_an_empty_directory(tmp_path: Path) -> None:
    """`apron serve` with nothing there: builds the default demo model, starts its own Redis, and
    prints how to call it (the README's `make serve`)."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--port", "0", "--metrics-port", "0"],
        cwd=tmp_path, env={**os.environ, "APRON_LOG_FORMAT": "text"},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        output, deadline = "", time.monotonic() + 300
        while "stop with Ctrl-C" not in output and time.monotonic() < deadline and process.poll() is None:
            output += process.stdout.readline()
        assert re.search(r"APRON gateway on 127\.0\.0\.1:\d+ \(model version 1", output), output
        assert "apron client --target" in output
        assert (tmp_path / "model_repository" / "apron_metadata.json").is_file()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
