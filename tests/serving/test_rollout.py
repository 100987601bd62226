"""Model rollout inside one gateway (serving/models.py, serving/admin.py), over real sockets with a
real redis-server: a second version loaded beside the first and swapped in through the admin RPC,
profiles and edits carried across versions, a load that fails leaving the old version serving, and
the A/B split's shares. The rollout under Locust load, SIGHUP and Triton: tests/reliability/test_rollout.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import shutil
import threading
import types
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from serving.config import ServingConfig
from serving.models import Routing, available_versions, user_bucket
from serving.proto_gen.apron.v1 import admin_pb2 as admin
from serving.proto_gen.apron.v1 import admin_pb2_grpc as admin_grpc
from serving.redis_process import RedisProcess
from tests.export.fixtures import export_tiny_repository, make_tiny_checkpoint
from tests.polling import eventually
from tests.serving.conftest import Gateway, gateway_config, liked_history, pb, running_gateway

RENAMED = "new-sound"  # version 2 of `renamed_repository` has this prototype instead of version 1's last one


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same catalog and prototypes as `tiny_checkpoint`, trained longer: other scores."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint-v2") / "apron.pt", steps=45)


@pytest.fixture(scope="module")
def two_versions(tiny_checkpoint: Path, second_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("two-versions") / "model_repository"
    export_tiny_repository(tiny_checkpoint, repository)
    export_tiny_repository(second_checkpoint, repository)
    assert available_versions(repository) == [1, 2]
    return repository


@pytest.fixture(scope="module")
def renamed_repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 2 lacks version 1's last prototype (its tag vocabulary changed)."""
    directory = tmp_path_factory.mktemp("renamed")
    saved = torch.load(tiny_checkpoint, weights_only=False)
    saved["dataset"]["tag_names"][-1] = RENAMED
    torch.save(saved, directory / "renamed.pt")
    repository = directory / "model_repository"
    export_tiny_repository(tiny_checkpoint, repository)
    export_tiny_repository(directory / "renamed.pt", repository)
    return repository


def onnx_scorer(cls: type, repository: Path, version: int):  # type: ignore[no-untyped-def]
    """`cls` (an OnnxRuntimeScorer) on `version`'s two graphs, tagged with the version."""
    from serving.backends.onnxruntime import load_scorer_session, load_session, onnx_path

    scorer = cls(
        load_session(onnx_path(repository, "apron_profile", version)),
        load_scorer_session(onnx_path(repository, "apron_scorer", version)),
    )
    scorer.version = version
    return scorer


def model_set(repository: Path, make, backend: str = "onnxruntime", metrics=None):  # type: ignore[no-untyped-def]
    """A ModelSet of `make`'s scorers without a gateway: no call reaches its profile caches' store."""
    from serving.metrics import Metrics
    from serving.models import ModelSet

    no_calls = types.SimpleNamespace(ttl_s=3600)
    return ModelSet(repository, no_calls, make, metrics or Metrics(), backend)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def watching(models, interval_s: float = 0.01):  # type: ignore[no-untyped-def]
    """`models.watch` running for the block; then stopped, and the models closed."""
    watch = asyncio.ensure_future(models.watch(interval_s))
    try:
        yield
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await models.close()


def admin_stub(gateway: Gateway) -> admin_grpc.ModelAdminStub:
    return admin_grpc.ModelAdminStub(gateway.channel)


def serving(status: admin.ModelStatus) -> dict[str, int]:
    return {v.role: v.version for v in status.serving}


async def test_admin_rpc_rolls_out_and_back_and_a_v1_profile_is_recomputed(
    two_versions: Path, redis_server: RedisProcess, main_tags: np.ndarray, user_id: str
) -> None:
    config = gateway_config(two_versions, redis_server.url, model_version=1)  # pinned to version 1 at start
    history = liked_history(main_tags, 2, 3)
    async with running_gateway(config) as gateway:
        first = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=5))
        assert first.model_version == 1
        tag = first.profile.weights[2].prototype  # the liked tag: it has weight
        await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype=tag, scale=0)]))

        frozen = gc.get_freeze_count()
        status = await admin_stub(gateway).LoadModel(admin.LoadModelRequest(version=2))
        assert serving(status) == {"primary": 2} and not status.pinned and list(status.available_versions) == [1, 2]
        # the new version's objects are out of the cyclic collector's sight (no long full collections)
        assert gc.get_freeze_count() > frozen
        # the user had a profile under version 1 only: recomputed from its stored history, not NOT_FOUND
        after = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        assert after.model_version == 2 and not after.profile_from_cache
        assert after.profile.history_length == first.profile.history_length
        heard = set(history)
        assert not heard & {item.item_id for item in after.items}  # the old history is still excluded
        edited = {w.prototype: w for w in after.profile.weights}[tag]  # the stored edit applies to version 2
        assert edited.weight == 0 and edited.edit.scale == 0 and edited.base_weight > 0
        assert list(after.unapplied_edits) == []
        assert gateway.metric("apron_profile_cache_requests_total", result="recovered", version="2") == 1
        again = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        assert again.profile_from_cache and [i.item_id for i in again.items] == [i.item_id for i in after.items]

        status = await admin_stub(gateway).LoadModel(admin.LoadModelRequest(version=1, pin=True))  # rollback
        assert serving(status) == {"primary": 1} and status.pinned
        back = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        assert back.model_version == 1 and back.profile_from_cache  # version 1's profile is still cached
        info = {labels["version"]: value for labels, value in model_info(gateway)}
        assert info == {"1": 1.0, "2": 0.0}
        assert gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", version="2") == 2
        assert gateway.metric("apron_model_loads_total", result="ok") >= 2


def model_info(gateway: Gateway) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(gateway.metrics_text())
        for sample in family.samples
        if sample.name == "apron_model_info"
    ]


async def test_an_edit_of_a_prototype_the_new_version_lacks_is_kept_and_reported(
    renamed_repository: Path, redis_server: RedisProcess, main_tags: np.ndarray, user_id: str
) -> None:
    config = gateway_config(renamed_repository, redis_server.url, model_version=1)
    async with running_gateway(config) as gateway:
        first = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 5, 0), k=5))
        lost_tag, kept_tag = first.profile.weights[5].prototype, first.profile.weights[0].prototype
        assert lost_tag != RENAMED
        edits = [pb.Edit(prototype=lost_tag, scale=0.5), pb.Edit(prototype=kept_tag, scale=2.0)]
        await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=edits))

        await admin_stub(gateway).LoadModel(admin.LoadModelRequest(version=2))
        response = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        assert response.model_version == 2 and list(response.unapplied_edits) == [lost_tag]
        shown = {w.prototype: w for w in response.profile.weights}
        assert lost_tag not in shown and RENAMED in shown and shown[kept_tag].edit.scale == 2.0
        profile = await gateway.stub.GetProfile(pb.GetProfileRequest(user_id=user_id))
        assert list(profile.unapplied_edits) == [lost_tag]
        assert {e.prototype for e in profile.stored_edits} == {lost_tag, kept_tag}  # kept, not dropped
        # version 2 refuses a new edit of a prototype it lacks, naming it
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype=lost_tag, scale=0)]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and lost_tag in refused.value.details()

        await admin_stub(gateway).LoadModel(admin.LoadModelRequest(version=1, pin=True))  # back: the edit applies again
        back = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        assert list(back.unapplied_edits) == [] and {w.prototype: w for w in back.profile.weights}[lost_tag].edit.scale == 0.5


async def test_set_weights_add_up_over_the_prototypes_of_every_version(
    renamed_repository: Path, redis_server: RedisProcess, main_tags: np.ndarray, user_id: str
) -> None:
    """A weight stored under version 1 for a prototype version 2 lacks still counts toward version 2's
    edits' sum: stored past 1 there, a rollback to version 1 would fail every call of the user."""
    config = gateway_config(renamed_repository, redis_server.url, model_version=1)
    async with running_gateway(config) as gateway:
        first = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 5, 0), k=5))
        lost_tag, kept_tag = first.profile.weights[5].prototype, first.profile.weights[0].prototype
        await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype=lost_tag, weight=0.6)]))

        await admin_stub(gateway).LoadModel(admin.LoadModelRequest(version=2))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype=kept_tag, weight=0.6)]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sum to 1.2" in refused.value.details() and lost_tag in refused.value.details()
        await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype=kept_tag, weight=0.4)]))

        await admin_stub(gateway).LoadModel(admin.LoadModelRequest(version=1, pin=True))  # back: both apply, 1.0 in all
        back = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        shown = {w.prototype: w for w in back.profile.weights}
        assert (shown[lost_tag].edit.weight, shown[kept_tag].edit.weight) == pytest.approx((0.6, 0.4))


async def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    two_versions: Path, redis_server: RedisProcess, main_tags: np.ndarray, user_id: str, tmp_path: Path
) -> None:
    repository = tmp_path / "model_repository"
    shutil.copytree(two_versions, repository)
    shutil.rmtree(repository / "apron_scorer" / "2")  # version 2's scorer is gone: it cannot load
    config = gateway_config(repository, redis_server.url, model_version=1)
    async with running_gateway(config) as gateway:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await admin_stub(gateway).LoadModel(admin.LoadModelRequest(version=2))
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "still serves" in failed.value.details()
        status = await admin_stub(gateway).GetModelStatus(admin.GetModelStatusRequest())
        assert serving(status) == {"primary": 1} and status.last_error
        response = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 1, 2), k=5))
        assert response.model_version == 1
        assert gateway.metric("apron_model_loads_total", result="failed") == 1
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await admin_stub(gateway).LoadModel(admin.LoadModelRequest(version=7))
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "[1, 2]" in unknown.value.details()


async def test_a_load_longer_than_the_request_timeout_is_bounded_by_the_callers_deadline_only(
    two_versions: Path, redis_server: RedisProcess
) -> None:
    """--request-timeout-s bounds the request path; a load takes what its version needs (the torch
    backend's CUDA graph capture: minutes), so LoadModel answers when it is done, within the caller's
    deadline. With a 1 µs request timeout any load outlasts it: it used to answer DEADLINE_EXCEEDED,
    cut halfway."""
    config = gateway_config(two_versions, redis_server.url, model_version=1, request_timeout_s=1e-6)
    async with running_gateway(config) as gateway:
        status = await admin_stub(gateway).LoadModel(admin.LoadModelRequest(version=2), timeout=120)
        assert serving(status) == {"primary": 2} and not status.last_error


async def test_a_cancelled_load_leaves_nothing_loaded_and_is_recorded(two_versions: Path) -> None:
    """A rollout cut short (the caller's deadline, a client gone) closes what it loaded, keeps the
    routing, and is counted and reported as a failed load, like any other failure."""
    from serving.backends.onnxruntime import OnnxRuntimeScorer
    from serving.metrics import Metrics

    started, closed = asyncio.Event(), []

    class Hangs(OnnxRuntimeScorer):  # version 2's warm-up never ends
        async def warm_up(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self.version == 2:
                started.set()
                await asyncio.Event().wait()
            return await super().warm_up(*args, **kwargs)

        async def close(self) -> None:
            closed.append(self.version)
            await super().close()

    metrics = Metrics()
    models = model_set(two_versions, lambda model: onnx_scorer(Hangs, two_versions, model.version), metrics=metrics)
    await models.apply(Routing(1))
    try:
        loading = asyncio.ensure_future(models.apply(Routing(1, 2, 0.5)))
        await asyncio.wait_for(started.wait(), 60)
        loading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loading
        assert models.routing == Routing(1) and sorted(models._loaded) == [1]
        assert closed == [2] and "cancelled" in models.last_error
        assert metrics.model_loads.labels("failed")._value.get() == 1
    finally:
        await models.close()


def share_bounds(n: int, p: float, z: float = 5.0) -> tuple[float, float]:
    """Where the count of n Bernoulli(p) draws falls but with probability ~6e-7 (z = 5)."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


async def test_ab_split_serves_the_stated_share_stable_per_user(
    two_versions: Path, redis_server: RedisProcess, main_tags: np.ndarray, user_id: str
) -> None:
    config = gateway_config(two_versions, redis_server.url, model_version=1, ab_version=2, ab_share=0.3)
    users = [f"{user_id}-{i}" for i in range(1000)]
    history = liked_history(main_tags, 0, 1)
    async with running_gateway(config) as gateway:
        first = {}
        for user in users:
            response = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user, history=history, k=1))
            first[user] = response.model_version
        on_candidate = sum(v == 2 for v in first.values())
        low, high = share_bounds(len(users), 0.3)
        assert low <= on_candidate <= high, f"{on_candidate} of {len(users)} users on the candidate"
        assert set(first.values()) == {1, 2}
        for user in users[:200]:  # stable: the same user lands on the same side again, cached there
            response = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user, k=1))
            assert response.model_version == first[user] and response.profile_from_cache
        assert all(first[u] == (2 if user_bucket(u) < 0.3 else 1) for u in users)
        by_version = {v: gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", version=v) for v in "12"}
        assert by_version["2"] == on_candidate + sum(first[u] == 2 for u in users[:200])
        info = {labels["role"]: (labels["version"], value) for labels, value in model_info(gateway)}
        assert info == {"primary": ("1", 1.0), "candidate": ("2", 0.3)}
        # a split asked for through LoadModel that would not happen is refused, and the split stays
        for request in (admin.LoadModelRequest(version=1, candidate_version=2), admin.LoadModelRequest(version=2, candidate_version=2, candidate_share=0.5)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin_stub(gateway).LoadModel(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "split" in refused.value.details()
        assert {labels["role"]: labels["version"] for labels, _ in model_info(gateway)} == {"primary": "1", "candidate": "2"}


def test_user_bucket_is_uniform_and_routing_is_validated() -> None:
    buckets = np.array([user_bucket(f"user-{i}") for i in range(20_000)])
    counts, _ = np.histogram(buckets, bins=10, range=(0, 1))
    low, high = share_bounds(20_000, 0.1)
    assert ((low <= counts) & (counts <= high)).all(), counts
    assert user_bucket("alice") == user_bucket("alice")
    with pytest.raises(ValueError, match="share"):
        Routing(1, 2, 1.5)
    with pytest.raises(ValueError, match="candidate"):
        Routing(1, 0, 0.2)
    assert Routing(1).versions == (1,) and Routing(1, 2, 0.5).versions == (1, 2)
    with pytest.raises(ValueError, match="needs both"):  # asked for, never dropped quietly
        Routing(1, 2, 0.0)
    with pytest.raises(ValueError, match="is the primary"):
        Routing(2, 2, 0.5)
    with pytest.raises(ValueError, match="ab-share"):
        ServingConfig(ab_version=2)
    with pytest.raises(ValueError, match="needs two versions"):
        ServingConfig(model_version=2, ab_version=2, ab_share=0.5)


@pytest.mark.parametrize(
    ("primary", "candidate", "share"),
    [(1, 2, 1.5), (1, 2, -0.1), (1, -1, 0.0), (1, 0, 0.2), (1, 2, 0.0), (2, 2, 0.5)],
    ids=["share above 1", "share below 0", "negative candidate", "share without a candidate", "candidate without a share", "one version twice"],
)
def test_the_flags_and_a_rollout_refuse_a_split_by_one_rule_in_their_own_terms(primary: int, candidate: int, share: float) -> None:
    """`apron serve`'s flags (ServingConfig, before loading) and a rollout (Routing: LoadModel, the
    start-up) refuse the same splits with the same sentence, only the names of the three numbers told
    apart: one rule (config.check_ab_split), not two copies that can drift."""
    from serving.config import SPLIT_FLAGS
    from serving.models import ROUTING_NAMES

    with pytest.raises(ValueError) as flags:
        ServingConfig(model_version=primary, ab_version=candidate, ab_share=share)
    with pytest.raises(ValueError) as rollout:
        Routing(primary, candidate, share)
    in_rollout_terms = str(flags.value)
    for field in ("candidate", "share", "primary"):
        in_rollout_terms = in_rollout_terms.replace(getattr(SPLIT_FLAGS, field), getattr(ROUTING_NAMES, field))
    assert in_rollout_terms == str(rollout.value)


async def test_watch_repository_rolls_out_a_newly_exported_version_and_a_pin_holds(
    tiny_checkpoint: Path, second_checkpoint: Path, redis_server: RedisProcess, main_tags: np.ndarray, user_id: str, tmp_path: Path
) -> None:
    repository = tmp_path / "model_repository"
    export_tiny_repository(tiny_checkpoint, repository)
    history = liked_history(main_tags, 4, 5)
    watching = gateway_config(repository, redis_server.url, watch_repository=True, watch_interval_s=0.05)
    pinned = gateway_config(repository, redis_server.url, model_version=1)
    async with running_gateway(watching) as gateway, running_gateway(pinned) as pinned_gateway:
        first = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=5))
        assert first.model_version == 1
        await asyncio.to_thread(export_tiny_repository, second_checkpoint, repository)
        await eventually(lambda: gateway.server.models.routing.primary == 2, "the watch rolled out version 2")
        response = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        assert response.model_version == 2
        # SIGHUP's reload on a pinned gateway: the newest version is there, the pin holds
        assert (await pinned_gateway.server.models.reload()).primary == 1
        response = await pinned_gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        assert response.model_version == 1


async def test_the_watch_tries_again_a_version_the_backend_could_not_serve_yet(tiny_checkpoint: Path, second_checkpoint: Path, tmp_path: Path) -> None:
    """Triton loads a new version on its own repository poll, seconds after the gateway's watch
    sees it: a version refused as UNAVAILABLE is tried again (it was skipped for good, and the
    gateway stayed on the old version); one refused for a mismatch is not."""
    from serving.backends.onnxruntime import OnnxRuntimeScorer
    from serving.errors import Unavailable

    repository = tmp_path / "model_repository"
    export_tiny_repository(tiny_checkpoint, repository)
    served: set[int] = {1}
    tries: list[int] = []
    on_loop: list[bool] = []

    class NotServedYet(OnnxRuntimeScorer):  # what TritonScorer.start says of a version Triton has not loaded
        async def start(self) -> None:
            tries.append(self.version)
            if self.version not in served:
                raise Unavailable(f"Triton does not serve version {self.version} yet")

    def make(model):  # type: ignore[no-untyped-def]
        on_loop.append(threading.current_thread() is threading.main_thread())  # loading sessions blocks
        return onnx_scorer(NotServedYet, repository, model.version)

    models = model_set(repository, make, "triton")
    await models.apply(Routing(1))
    async with watching(models):
        await asyncio.to_thread(export_tiny_repository, second_checkpoint, repository)
        await eventually(lambda: tries.count(2) >= 2, "the watch tried version 2 again after UNAVAILABLE")
        assert models.routing.primary == 1
        served.add(2)  # the backend's own poll loaded it
        await eventually(lambda: models.routing.primary == 2, "the watch rolled out version 2 once it was served")
        assert on_loop and not any(on_loop)  # every version's scorer was made off the event loop


async def test_a_version_retired_during_a_health_poll_is_closed_after_it(two_versions: Path) -> None:
    """Readiness asks each routed version's backend; a rollout meanwhile retires the one being asked,
    which is closed only once the poll is done with it (a closed Triton scorer asked again opened a
    client that nothing closed)."""
    from serving.backends.onnxruntime import OnnxRuntimeScorer

    asked, answer = asyncio.Event(), asyncio.Event()
    closed: list[int] = []

    class SlowHealth(OnnxRuntimeScorer):
        async def healthy(self) -> bool:
            if self.version == 1:
                asked.set()
                await answer.wait()
            return self.version not in closed

        async def close(self) -> None:
            closed.append(self.version)
            await super().close()

    def make(model):  # type: ignore[no-untyped-def]
        return onnx_scorer(SlowHealth, two_versions, model.version)

    models = model_set(two_versions, make)
    await models.apply(Routing(1))
    try:
        poll = asyncio.ensure_future(models.healthy())
        await asyncio.wait_for(asked.wait(), 60)
        await models.apply(Routing(2))  # version 1 retired while the poll still asks it
        assert closed == []  # held by the poll
        answer.set()
        assert await poll  # it answered before it was closed
        await eventually(lambda: closed == [1], "version 1 closed once the poll let go of it")
    finally:
        await models.close()


async def test_a_candidate_dropped_during_the_primarys_health_poll_is_asked_before_it_closes(two_versions: Path) -> None:
    """The poll holds every routed version before its first wait: a rollout that drops the candidate
    while the primary is being asked closes it only after the poll (the poll used to ask the closed
    candidate: a Triton scorer opened a client nothing closed, and readiness read False)."""
    from serving.backends.onnxruntime import OnnxRuntimeScorer

    asked, answer = asyncio.Event(), asyncio.Event()
    closed: list[int] = []
    asked_closed: list[int] = []

    class SlowPrimary(OnnxRuntimeScorer):
        async def healthy(self) -> bool:
            if self.version == 1:
                asked.set()
                await answer.wait()
            elif self.version in closed:
                asked_closed.append(self.version)
            return self.version not in closed

        async def close(self) -> None:
            closed.append(self.version)
            await super().close()

    models = model_set(two_versions, lambda model: onnx_scorer(SlowPrimary, two_versions, model.version))
    await models.apply(Routing(1, 2, 0.5))
    try:
        poll = asyncio.ensure_future(models.healthy())
        await asyncio.wait_for(asked.wait(), 60)
        await models.apply(Routing(1))  # the split ends while the poll asks the primary
        assert closed == []  # the candidate is held by the poll
        answer.set()
        assert await poll and asked_closed == []
        await eventually(lambda: closed == [2], "the candidate closed once the poll let go of it")
    finally:
        await models.close()


async def test_the_watch_tries_a_version_number_again_once_it_was_exported_again(
    tiny_checkpoint: Path, second_checkpoint: Path, tmp_path: Path
) -> None:
    """model_repository/README.md, "Roll back": a version that failed to load is removed and a fixed
    model exported, which takes the same number; the watch skipped that number for good."""
    from serving.backends.onnxruntime import OnnxRuntimeScorer

    repository = tmp_path / "model_repository"
    export_tiny_repository(tiny_checkpoint, repository)
    broken = {2}
    tries: list[int] = []

    def make(model):  # type: ignore[no-untyped-def]
        tries.append(model.version)
        if model.version in broken:
            raise RuntimeError(f"version {model.version} is broken")  # refused, not UNAVAILABLE: not retried as is
        return onnx_scorer(OnnxRuntimeScorer, repository, model.version)

    models = model_set(repository, make)
    await models.apply(Routing(1))
    async with watching(models):
        await asyncio.to_thread(export_tiny_repository, second_checkpoint, repository)
        await eventually(lambda: tries.count(2) == 1 and models.last_error != "", "version 2 refused")
        # roll back: version 2's files go, and the fixed model is exported as version 2 again
        for name in ("apron_profile", "apron_scorer", "apron_item_encoder", "apron_recommend"):
            shutil.rmtree(repository / name / "2", ignore_errors=True)
        (repository / "apron_metadata.v2.json").unlink()
        shutil.copy(repository / "apron_metadata.v1.json", repository / "apron_metadata.json")
        broken.clear()
        await asyncio.to_thread(export_tiny_repository, tiny_checkpoint, repository)
        assert available_versions(repository) == [1, 2]
        await eventually(lambda: models.routing.primary == 2, "the watch rolled out the new version 2")
