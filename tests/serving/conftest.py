"""Fixtures of the gateway tests: a real redis-server, the export stage's tiny repository and
tritonserver, and gateways on free ports talking to them over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.config import ServingConfig
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from serving.redis_process import RedisProcess
from serving.resources import Resources
from serving.server import ApronServer, create_server
from tests.export.fixtures import (  # noqa: F401  (pytest finds fixtures by name)
    penalised_checkpoint,
    penalised_repository,
    python_repository,
    tiny_checkpoint,
    tiny_dataset,
    triton_server,
)

BACKENDS = ("onnxruntime", "triton", "torch")
IN_PROCESS = ("onnxruntime", "torch")  # backends behind the gateway's own micro-batcher


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


@pytest.fixture(scope="session")
def main_tags() -> np.ndarray:
    """Each item's main tag in the tiny dataset the repository's model was trained on (seed 0)."""
    dataset, _, _ = tiny_dataset(0)
    return np.asarray(dataset.item_tags.toarray().argmax(1))


def liked_history(main_tags: np.ndarray, liked: int, other: int, seed: int = 1) -> list[str]:
    """A user who mostly listens to tag `liked` (8 items) and a little to `other` (3 items)."""
    rng = np.random.default_rng(seed)
    items = [*rng.choice(np.flatnonzero(main_tags == liked), 8, replace=False)]
    items += [*rng.choice(np.flatnonzero(main_tags == other), 3, replace=False)]
    return [f"track-{int(i):04d}" for i in items]


def item_index(item_id: str) -> int:
    return int(item_id.split("-")[1])


@dataclass
class Gateway:
    server: ApronServer
    port: int
    channel: grpc.aio.Channel
    stub: pb_grpc.RecommenderStub

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels`."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


@contextlib.asynccontextmanager
async def running_gateway(config: ServingConfig, resources: Resources | None = None) -> AsyncIterator[Gateway]:
    """A started gateway; with `resources`, on those (the caller closes them), else on its own."""
    server, port = await create_server(config, resources=resources)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Gateway(server, port, channel, pb_grpc.RecommenderStub(channel))
    finally:
        await channel.close()
        await server.stop(2.0)


def gateway_config(repository: Path, redis_url: str, backend: str = "onnxruntime", triton_url: str = "", **overrides: object) -> ServingConfig:
    config = ServingConfig(
        repository=str(repository),
        build_demo=False,
        port=0,
        metrics_port=0,
        redis_url=redis_url,
        backend=backend,
        log_format="text",
        auth=False,  # tokens and roles are tested in tests/reliability
        request_timeout_s=120.0,  # the server's own deadline: far beyond any call on a loaded CI machine
    )
    if triton_url:
        overrides["triton_url"] = triton_url
    return dataclasses.replace(config, **overrides)


@pytest.fixture(params=BACKENDS)
def backend_config(request: pytest.FixtureRequest, python_repository: Path, redis_server: RedisProcess) -> ServingConfig:  # noqa: F811
    """A gateway configuration for each backend (Triton: the export stage's real tritonserver)."""
    if request.param == "triton":
        triton = request.getfixturevalue("triton_server")
        return gateway_config(python_repository, redis_server.url, "triton", triton.grpc_url)
    return gateway_config(python_repository, redis_server.url, request.param)


@pytest.fixture
def ort_config(python_repository: Path, redis_server: RedisProcess) -> ServingConfig:  # noqa: F811
    return gateway_config(python_repository, redis_server.url)


@pytest.fixture
async def gateway(backend_config: ServingConfig) -> AsyncIterator[Gateway]:
    async with running_gateway(backend_config) as running:
        yield running


@pytest.fixture
async def ort_gateway(ort_config: ServingConfig) -> AsyncIterator[Gateway]:
    async with running_gateway(ort_config) as running:
        yield running


@pytest.fixture
def user_id(request: pytest.FixtureRequest) -> str:
    """A user id no other test uses (tests share one Redis)."""
    return f"user-{request.node.nodeid}"


__all__ = ["pb", "IN_PROCESS", "Gateway", "running_gateway", "gateway_config", "liked_history", "item_index"]


def hold_scores(server: Any) -> asyncio.Event:
    """`server`'s scorer waits, on every call, until the event returned is set: its calls stay in
    flight (what a drain must cut)."""
    release = asyncio.Event()
    top_k = server.scorer.top_k

    async def held_top_k(*args: object, **kwargs: object) -> object:
        await release.wait()
        return await top_k(*args, **kwargs)

    server.scorer.top_k = held_top_k
    return release
