"""Concurrent editors of one user: no lost update, and no reader ever sees half of an edit.

50 clients (each on its own channel) edit 50 different tags of the same user at once, for several
rounds; every acknowledged edit must be stored. Meanwhile other clients read the profile through
Recommend and GetProfile while a writer keeps replacing a three-tag edit set: every read must show
the three tags edited together with one value. Both run until enough has happened (counts), never
for a fixed time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import scipy.sparse as sp

from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from tests.export import fixtures as export_fixtures
from tests.polling import eventually
from tests.serving.conftest import gateway_config, running_gateway

pytestmark = pytest.mark.timeout(300)

_tiny_dataset = export_fixtures.tiny_dataset  # the original, before the fixture patches it
N_TAGS = 64  # the export stage's tiny model has 6 tags; these tests need one per client
N_CLIENTS = 50


def wide_dataset(seed: int = 0) -> tuple[SimpleNamespace, np.ndarray, np.ndarray]:
    """The export fixtures' tiny dataset with N_TAGS tags: tag t >= 6 is carried by item t (its
    prototype) and a few random items."""
    dataset, features, users = _tiny_dataset(seed)
    rng = np.random.default_rng(seed)
    item_tags = np.zeros((dataset.n_items, N_TAGS), np.float32)
    item_tags[:, : dataset.n_tags] = dataset.item_tags.toarray()
    for tag in range(dataset.n_tags, N_TAGS):
        item_tags[tag, tag] = 3
        item_tags[rng.choice(dataset.n_items, 4, replace=False), tag] += 1
    dataset.n_tags = N_TAGS
    dataset.item_tags = sp.csr_matrix(item_tags)
    dataset.tag_names = [f"tag{t}" for t in range(N_TAGS)]
    dataset.tag_groups = ["genre"] * N_TAGS
    dataset.prototype_items = np.arange(N_TAGS, dtype=np.int64)
    return dataset, features, users


@pytest.fixture(scope="module")
def wide_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wide")
    with pytest.MonkeyPatch.context() as patch:  # make_tiny_checkpoint builds from `tiny_dataset`
        patch.setattr(export_fixtures, "tiny_dataset", wide_dataset)
        checkpoint = export_fixtures.make_tiny_checkpoint(directory / "apron.pt", steps=5)
    export_fixtures.export_tiny_repository(checkpoint, directory / "model_repository")
    return directory / "model_repository"


HISTORY = [f"track-{i:04d}" for i in range(70, 82)]


async def test_fifty_clients_edit_fifty_tags_of_one_user(wide_repository: Path, redis_server) -> None:
    config = gateway_config(wide_repository, redis_server.url, edit_burst=1000)
    async with running_gateway(config) as gateway:
        target = f"127.0.0.1:{gateway.port}"
        channels = [grpc.aio.insecure_channel(target) for _ in range(N_CLIENTS)]
        stubs = [pb_grpc.RecommenderStub(channel) for channel in channels]
        try:
            for round_ in range(5):
                user = f"crowd-{round_}"
                await gateway.stub.Recommend(pb.RecommendRequest(user_id=user, history=HISTORY, k=5), timeout=20)
                expected = {f"tag{i}": round(1.0 + i / 100 + round_, 6) for i in range(N_CLIENTS)}
                start = asyncio.Event()

                async def edit(
                    stub: pb_grpc.RecommenderStub, tag: str, scale: float, user: str = user, start: asyncio.Event = start
                ) -> list[str]:
                    await start.wait()  # all 50 leave together
                    request = pb.EditProfileRequest(user_id=user, edits=[pb.Edit(prototype=tag, scale=scale)])
                    response = await stub.EditProfile(request, timeout=30)
                    return [e.prototype for e in response.stored_edits]

                tasks = [
                    asyncio.create_task(edit(stub, tag, scale))
                    for stub, (tag, scale) in zip(stubs, expected.items(), strict=True)
                ]
                await asyncio.sleep(0.05)
                start.set()
                seen = await asyncio.gather(*tasks)
                assert all(tag in stored for tag, stored in zip(expected, seen, strict=True))
                assert max(len(stored) for stored in seen) == N_CLIENTS  # the last one saw everything

                profile = await gateway.stub.GetProfile(pb.GetProfileRequest(user_id=user), timeout=20)
                stored = {e.prototype: round(e.scale, 6) for e in profile.stored_edits}
                assert stored == expected, f"round {round_}: lost {sorted(set(expected) - set(stored))}"
                edited = {w.prototype for w in profile.profile.weights if w.HasField("edit")}
                assert edited == set(expected)
        finally:
            for channel in channels:
                await channel.close()


async def test_readers_never_see_half_an_edit(wide_repository: Path, redis_server) -> None:
    config = gateway_config(wide_repository, redis_server.url, edit_rate=0.0)
    user, tags = "atomic", ("tag1", "tag2", "tag3")
    async with running_gateway(config) as gateway:
        await gateway.stub.Recommend(pb.RecommendRequest(user_id=user, history=HISTORY, k=5), timeout=20)
        first = [pb.Edit(prototype=tag, scale=0.5) for tag in tags]  # readers start with a whole set
        await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user, edits=first, reset=True), timeout=20)
        target = f"127.0.0.1:{gateway.port}"
        stop = asyncio.Event()
        snapshots: list[tuple[str, dict[str, float]]] = []

        steps = 0

        async def writer() -> None:
            nonlocal steps
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.RecommenderStub(channel)
                while not stop.is_set():
                    step = steps + 1
                    scale = float(step % 7)  # 0 removes the three tags together, which must also be whole
                    edits = [pb.Edit(prototype=tag, scale=scale) for tag in tags]
                    # A reset plus the new set in one call: a reader sees the old set or the new one.
                    await stub.EditProfile(pb.EditProfileRequest(user_id=user, edits=edits, reset=True), timeout=20)
                    steps = step

        async def reader(kind: str) -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.RecommenderStub(channel)
                while not stop.is_set():
                    if kind == "recommend":
                        response = await stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=20)
                        weights = response.profile.weights
                    else:
                        weights = (await stub.GetProfile(pb.GetProfileRequest(user_id=user), timeout=20)).profile.weights
                    snapshots.append((kind, {w.prototype: w.edit.scale for w in weights if w.HasField("edit")}))

        def enough() -> bool:  # counts, not a time window: a slow machine just takes longer
            values = {next(iter(e.values()), None) for _, e in snapshots}
            return steps >= 20 and len(snapshots) >= 40 and len(values) > 1

        tasks = [asyncio.create_task(reader(kind)) for kind in ("recommend", "get", "recommend", "get")]
        tasks.append(asyncio.create_task(writer()))
        try:
            await eventually(enough, "20 edits written and 40 reads that saw more than one of them", timeout=240)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    for kind, edits in snapshots:
        assert set(edits) == set(tags), (kind, edits)  # never a missing tag (half-applied reset + set)
        assert len(set(edits.values())) == 1, (kind, edits)  # never two values from two different edits
