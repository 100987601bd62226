"""The model versions a gateway serves, which one answers a user, and how a new one is rolled out.

A `LoadedModel` is everything of one version: its metadata (`ServedModel`), its scorer (backend
sessions and micro-batchers, or Triton asked for that version), its profile cache (Redis keys of
that version) and its response encoder. `ModelSet` holds the *primary* version and, for an A/B
split, a *candidate* that answers a stated share of users, chosen by a hash of the user id (so a
user stays on one side as long as the split does).

Rollout without a failed call (`ModelSet.apply`): the versions the new routing needs are loaded
*beside* the serving ones — metadata read and checked against its graphs (`metadata_mismatches`,
`graph_mismatches`, `warm_up`: item count, prototype count, k_max, which graph is which), scorer
started, one warm-up inference through both graphs — and only then does one assignment swap the routing (atomic on the event loop). The
gateway's start is the same path: a version whose metadata does not match its graphs is refused
with a message naming the mismatch, at start and at a hot rollout alike (the old version serves on). A call takes
its `LoadedModel` once, at its start (`use`), and keeps it to its end, so in-flight calls finish on
the version they started on; a replaced version is closed when its last call has ended. If anything
fails while loading, the routing is left as it was and the error says why (log line, the
`apron_model_loads_total{result="failed"}` counter, the admin RPC's status).

Triggers: SIGHUP and the admin RPC (`serving/admin.py`) call `apply`; `--watch-repository` polls the
repository for a newer version. `--model-version N` (and the admin RPC) pins a version: neither
SIGHUP nor the watch moves a pinned primary.

Profiles survive a version change (`recover_history`): a cached profile is keyed by version, so a
user known only under an earlier version has no profile under the new one; instead of NOT_FOUND the
history stored with the old profile is mapped, through the old version's item ids, into the new
catalog, and the profile is computed again. Stored edits are keyed by prototype name and carry no
version: they apply wherever the new model has that prototype, and the others are kept in Redis
and listed in each response's `unapplied_edits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export import contract
from export.metadata import ExportMetadata, MetadataError, metadata_path
from serving.backends.base import GraphSignature, Scorer
from serving.cache import STORE_DOWN, ProfileCache, RedisStore
from serving.catalog import ServedModel
from serving.config import SplitNames, check_ab_split
from serving.errors import Unavailable
from serving.metrics import Metrics
from serving.profile_encoding import ProfileEncoder

log = logging.getLogger("apron.gateway")
_VERSIONED = re.compile(r"^apron_metadata\.v(\d+)\.json$")
WATCH_INTERVAL_S = 2.0
WATCH_RETRY_MAX_S = 60.0  # the longest wait between tries of a version the backend could not serve yet
# the version that answered the call being handled ("none" before one was chosen): the RPC metrics' label
current_version: contextvars.ContextVar[str] = contextvars.ContextVar("apron_model_version", default="none")


class ModelLoadError(RuntimeError):
    """A version could not be loaded or warmed: the routing was left as it was."""


def available_versions(repository: str | Path) -> list[int]:
    """The versions whose metadata the repository holds (`apron_metadata.v<N>.json`), ascending."""
    try:
        names = [p.name for p in Path(repository).iterdir()]
    except OSError:
        return []
    return sorted(int(m[1]) for name in names if (m := _VERSIONED.match(name)))


def user_bucket(user_id: str) -> float:
    """A user's place in [0, 1): the first 8 bytes of sha256(user id). Stable across processes,
    replicas and restarts (Python's hash() is salted per process), uniform over user ids."""
    digest = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


# a rollout's split in its own terms (LoadModel and `apron serve`'s start-up both build a Routing):
# "the candidate version is the primary", where ServingConfig's refusal names the flags
ROUTING_NAMES = SplitNames("the candidate version", "the candidate's share of users", "the primary")


@dataclass(frozen=True)
class Routing:
    """Which versions answer: `primary` for everyone but the candidate's share."""

    primary: int
    candidate: int = 0  # 0: no A/B split
    share: float = 0.0  # of users sent to the candidate
    pinned: bool = False  # SIGHUP and --watch-repository leave a pinned primary alone

    def __post_init__(self) -> None:
        if self.primary < 1:
            raise ValueError(f"the primary version must be a positive integer, got {self.primary}")
        check_ab_split(self.candidate, self.share, self.primary, ROUTING_NAMES)

    @property
    def versions(self) -> tuple[int, ...]:
        return (self.primary, self.candidate) if self.candidate else (self.primary,)


@dataclass(eq=False)
class LoadedModel:
    model: ServedModel
    scorer: Scorer
    profiles: ProfileCache
    encoder: ProfileEncoder
    in_flight: int = 0
    retired: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def version(self) -> int:
        return self.model.version


ScorerFactory = Callable[[ServedModel], Scorer]


class ModelSet:
    def __init__(
        self,
        repository: str | Path,
        store: RedisStore,
        make_scorer: ScorerFactory,
        metrics: Metrics,
        backend: str,
    ):
        self.repository = Path(repository)
        self.store = store
        self.make_scorer = make_scorer
        self.metrics = metrics
        self.backend = backend
        self.routing: Routing | None = None
        self._loaded: dict[int, LoadedModel] = {}
        self._primary: LoadedModel | None = None
        self._candidate: LoadedModel | None = None
        self._lock = asyncio.Lock()
        self._metadata: dict[int, ServedModel] = {}  # older versions' catalogs, for recover_history
        self.last_error = ""
        self._published: set[tuple[str, str, str]] = set()
        # the watch does not retry a version that failed until it changes: (version, its metadata file's identity)
        self._failed_newest: tuple[int, tuple[int, int, int] | None] = (0, None)

    # ------------------------------------------------------------------------------ the request path

    @property
    def primary(self) -> LoadedModel:
        if self._primary is None:
            raise RuntimeError("no model loaded yet")
        return self._primary

    def route(self, user_id: str) -> LoadedModel:
        routing, candidate = self.routing, self._candidate
        if candidate is not None and routing is not None and user_bucket(user_id) < routing.share:
            return candidate
        return self.primary

    @contextlib.contextmanager
    def use(self, user_id: str) -> Iterator[LoadedModel]:
        """The version that answers `user_id`, held until the block ends (a rollout meanwhile
        closes it only after this call)."""
        served = self.route(user_id)
        current_version.set(str(served.version))
        with self._held(served):
            yield served

    @contextlib.contextmanager
    def _held(self, served: LoadedModel) -> Iterator[LoadedModel]:
        """`served` kept open until the block ends: a version retired meanwhile closes after it."""
        served.in_flight += 1
        try:
            yield served
        finally:
            served.in_flight -= 1
            if served.retired and served.in_flight == 0:
                asyncio.get_running_loop().create_task(self._close(served))

    async def healthy(self) -> bool:
        """Whether every routed version's backend answers (the gateway's readiness). Each is held
        while it is asked, as a call holds it: a rollout during the poll closes it afterwards (a
        closed Triton scorer asked again opened a client nothing closed)."""
        served = [m for m in (self._primary, self._candidate) if m is not None]
        answers = []
        with contextlib.ExitStack() as held:  # all of them before the first wait: a rollout during the
            for model in served:  # wait on one must not close another still to be asked
                held.enter_context(self._held(model))
            for model in served:
                answers.append(await model.scorer.healthy())
        return bool(served) and all(answers)

    # ------------------------------------------------------------------------------ rollout

    def newest_version(self) -> int:
        versions = available_versions(self.repository)
        if not versions:
            raise ModelLoadError(f"{self.repository} holds no model version (no apron_metadata.v<N>.json)")
        return versions[-1]

    async def apply(self, routing: Routing) -> Routing:
        """Load what `routing` needs beside the serving versions, warm it, then swap. Raises
        ModelLoadError (routing unchanged) when a version cannot be loaded or warmed."""
        async with self._lock:
            fresh: list[LoadedModel] = []
            try:
                for version in routing.versions:
                    if version not in self._loaded:
                        fresh.append(await self._load(version))
                        self._loaded[version] = fresh[-1]
            except BaseException as error:  # cancelled too (the caller's deadline): nothing half-loaded stays
                for served in fresh:
                    self._loaded.pop(served.version, None)
                    await self._close(served)
                reason = str(error) if isinstance(error, Exception) else f"cancelled ({type(error).__name__})"
                self.last_error = reason
                self.metrics.model_loads.labels("failed").inc()
                log.error("model rollout failed, still serving %s: %s", self._describe(self.routing), reason)
                if not isinstance(error, Exception):
                    raise
                raise ModelLoadError(str(error)) from error
            previous = self.routing
            self._primary = self._loaded[routing.primary]
            self._candidate = self._loaded[routing.candidate] if len(routing.versions) == 2 else None
            self.routing = routing
            self.last_error = ""
            for version, served in list(self._loaded.items()):
                if version not in routing.versions:
                    del self._loaded[version]
                    served.retired = True
                    if served.in_flight == 0:
                        await self._close(served)
            self._publish_info()
            if fresh:
                # What start-up and the loaded versions made (modules, the catalog's strings, the
                # sessions) lives as long as the process or the version: out of the cyclic collector's
                # sight, a full collection scans only what calls create. Unfrozen, each one paused the
                # event loop 33-69 ms (apron_gc_pause_seconds, BENCHMARKS.md's tail-latency evidence).
                # Frozen objects are never collected as cycles, so each load first thaws and collects
                # everything once (one such pause per rollout): what the versions retired since the
                # last load left in cycles is freed then, and nothing frozen outlives two rollouts.
                gc.unfreeze()
                gc.collect()
                gc.freeze()
            if fresh or previous != routing:
                self.metrics.model_loads.labels("ok").inc()
                log.info("model routing", extra={"fields": {"now": self._describe(routing), "before": self._describe(previous)}})
            return routing

    async def reload(self) -> Routing:
        """SIGHUP / the watch: the newest version becomes primary unless a version is pinned."""
        routing = self.routing
        if routing is not None and routing.pinned:
            return await self.apply(routing)  # loads nothing new; a failed candidate is retried
        newest = self.newest_version()
        candidate = routing.candidate if routing is not None and routing.candidate != newest else 0
        share = routing.share if candidate else 0.0
        return await self.apply(Routing(newest, candidate, share, pinned=False))

    async def watch(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        """--watch-repository: roll out a newer version as soon as the repository holds one (until cancelled)."""
        # the newest version seen, its tries the backend answered UNAVAILABLE, and when the next one may go
        waiting_for, waits, retry_at = 0, 0, 0.0
        while True:
            await asyncio.sleep(interval_s)
            routing = self.routing
            if routing is None or routing.pinned:
                continue
            try:
                newest = await asyncio.to_thread(self.newest_version)
            except ModelLoadError:
                continue
            if newest != waiting_for:  # a newer version than the one waited for: tried at once
                waiting_for, waits, retry_at = newest, 0, 0.0
            if newest == routing.primary or time.monotonic() < retry_at:
                continue
            # the files' identity before the load: one re-exported while it ran is not the one that failed
            # (read only when a load may follow, not on every tick)
            identity = await asyncio.to_thread(self._identity, newest)
            if self._failed_newest != (newest, identity):
                try:
                    await self.reload()
                except ModelLoadError as error:  # logged and counted
                    if isinstance(error.__cause__, Unavailable):  # the backend cannot serve it yet (Triton loads a
                        # new version on its own repository poll, seconds later): tried again, less and less often
                        waits += 1
                        retry_at = time.monotonic() + min(WATCH_RETRY_MAX_S, interval_s * 2.0 ** min(waits - 1, 30))
                    else:  # refused (mismatched metadata, a broken graph): tried again once that version's files
                        # change (the same number exported again after a roll-back, model_repository/README.md)
                        self._failed_newest = (newest, identity)

    def _identity(self, version: int) -> tuple[int, int, int] | None:
        """What tells one export of `version` from another: its metadata file's inode, size and
        modification time (an export writes it last, a new file each time); None when it is gone."""
        try:
            stat = metadata_path(self.repository, version).stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    async def close(self) -> None:
        async with self._lock:
            for served in list(self._loaded.values()):
                await self._close(served)
            self._loaded.clear()

    async def _load(self, version: int) -> LoadedModel:
        model = await asyncio.to_thread(ServedModel.load, self.repository, version)
        refuse_mismatches(model, metadata_mismatches(model.metadata))
        # sessions and weights load for a second or more at large catalogs: not on the loop that serves
        scorer = await asyncio.to_thread(self.make_scorer, model)
        try:
            await scorer.start()
            refuse_mismatches(model, graph_mismatches(model.metadata, await scorer.signatures()))
            await warm_up(scorer, model)
        except BaseException:
            await scorer.close()
            raise
        profiles = ProfileCache(self.store, scorer, model.version, (model.n_heads, model.n_prototypes), self.metrics)
        profiles.recover = lambda user, served=model: self.recover_history(served, user)
        encoder = ProfileEncoder(model.metadata.tag_names, model.metadata.prototype_item_ids)
        return LoadedModel(model, scorer, profiles, encoder)

    async def _close(self, served: LoadedModel) -> None:
        if served.closed.is_set():
            return
        served.closed.set()
        await served.scorer.close()

    def _publish_info(self) -> None:
        """apron_model_info: 1 for the primary, the share for a candidate, 0 for what was served
        before (set to 0 rather than removed: --workers sums the series of all processes)."""
        routing = self.routing
        if routing is None:
            return
        now = {(str(routing.primary), self.backend, "primary"): 1.0}
        if self._candidate is not None:
            now[(str(routing.candidate), self.backend, "candidate")] = routing.share
        for labels in self._published - now.keys():
            self.metrics.model_info.labels(*labels).set(0)
        for labels, value in now.items():
            self.metrics.model_info.labels(*labels).set(value)
        self._published = set(now)

    @staticmethod
    def _describe(routing: Routing | None) -> str:
        if routing is None:
            return "nothing"
        text = f"version {routing.primary}" + (" (pinned)" if routing.pinned else "")
        if len(routing.versions) == 2:
            text += f", {routing.share:.0%} of users on version {routing.candidate}"
        return text

    # ------------------------------------------------------------------------------ profiles across versions

    async def recover_history(self, model: ServedModel, user_id: str) -> np.ndarray | None:
        """The user's history in `model`'s catalog, from their newest cached profile under another
        version (None: there is none, or its catalog is gone from the repository)."""
        others = [v for v in reversed(available_versions(self.repository)) if v != model.version]
        if not others:
            return None
        try:
            found = await self.store.find_history(user_id, others)
        except STORE_DOWN:
            return None
        if found is None:
            return None
        version, old_ids = found
        old = self._metadata.get(version) or self._loaded_model(version)
        if old is None:
            try:
                old = await asyncio.to_thread(ServedModel.load, self.repository, version)
            except (MetadataError, OSError):
                return None
            self._metadata = {version: old}  # one older catalog kept: the usual rollout has one
        item_ids = [old.metadata.item_ids[i] for i in old_ids.tolist() if 0 <= i < old.metadata.n_items]
        indices, _ = model.history_indices(item_ids)
        return indices if indices.size else None

    def _loaded_model(self, version: int) -> ServedModel | None:
        served = self._loaded.get(version)
        return served.model if served is not None else None

    def status(self) -> dict[str, object]:
        routing = self.routing
        return {
            "routing": routing,
            "available": available_versions(self.repository),
            "last_error": self.last_error,
        }


# ------------------------------------------------------------------------------ a version's checks before it serves


def refuse_mismatches(model: ServedModel, found: list[str]) -> None:
    if found:
        raise ModelLoadError(f"version {model.version} refused, its apron_metadata does not match its graphs: " + "; ".join(found))


def metadata_mismatches(meta: ExportMetadata) -> list[str]:
    """What in the metadata alone cannot be true of any exported model (pure)."""
    found = []
    if not 1 <= meta.k_max <= meta.n_items:
        found.append(f"k_max {meta.k_max} is outside [1, n_items {meta.n_items}]")
    if meta.n_heads < 1 or meta.n_prototypes < 1:
        found.append(f"n_heads {meta.n_heads} and n_prototypes {meta.n_prototypes} must be positive")
    outside = [i for i in meta.prototype_items if not 0 <= i < meta.n_items]
    if outside:
        found.append(f"prototype_items {outside[:5]} are outside the catalog of n_items {meta.n_items}")
    return found


def graph_mismatches(meta: ExportMetadata, graphs: dict[str, GraphSignature]) -> list[str]:
    """The graphs' declared tensors against what the metadata says they are (pure; `graphs` {}:
    a backend without graphs, nothing to compare). Names first (a graph in the other's place is
    named as such), then every dimension both sides fix: prototype count, heads, k_max."""
    expected = contract.model_io(meta.n_heads, meta.n_prototypes, meta.feature_dim, meta.k_max)
    batch_inputs = {spec.name for specs in contract.BATCH_INPUTS.values() for spec in specs}  # computed by Triton

    def names(specs: tuple) -> set[str]:
        return {spec.name for spec in specs}

    found = []
    for model, graph in graphs.items():
        inputs, outputs = expected[model]
        if names(inputs) - graph.inputs.keys() or names(outputs) - graph.outputs.keys():
            other = next((name for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL) if name != model and
                          graph.inputs.keys() - batch_inputs <= names(expected[name][0]) and
                          names(expected[name][1]) <= graph.outputs.keys()), None)  # fmt: skip
            what = f": it is the {other} graph (profile and scorer swapped?)" if other else ""
            found.append(
                f"{model}'s graph takes {sorted(graph.inputs)} and gives {sorted(graph.outputs)}, expected "
                f"{sorted(names(inputs))} -> {sorted(names(outputs))}{what}"
            )
            continue
        for direction, specs, declared in (("input", inputs, graph.inputs), ("output", outputs, graph.outputs)):
            for spec in specs:
                if -1 in spec.dims:  # open by the contract (history length, exclusions): nothing to compare
                    continue
                dims = declared[spec.name][1:]  # without the batch axis
                if len(dims) != len(spec.dims) or any(d is not None and d != e for d, e in zip(dims, spec.dims, strict=False)):
                    found.append(f"{model} {direction} {spec.name} is {list(dims)} per user, the metadata says "
                                 f"{list(spec.dims)} ({describe_dims(model, spec.name, meta)})")  # fmt: skip
    return found


def describe_dims(model: str, tensor: str, meta: ExportMetadata) -> str:
    """Which metadata fields a tensor's dims come from, for a mismatch's message."""
    if tensor in (contract.TOP_IDS, contract.TOP_SCORES):
        return f"k_max {meta.k_max}"
    if tensor == contract.PROFILE_WEIGHTS:
        return f"n_heads {meta.n_heads}, n_prototypes {meta.n_prototypes}"
    return model


async def warm_up(scorer: Scorer, model: ServedModel) -> None:
    """One inference through both graphs with the prototypes' items as a history: a version whose
    graphs do not answer as its metadata says is never swapped in. The scorer is asked for k_max
    items with every item but the metadata's last excluded: exactly that last item may score (a
    graph with more items scores others too, one with fewer has no such item), and a graph that
    returns fewer than k_max items cannot answer what the metadata promises."""
    meta = model.metadata
    history = np.unique(np.asarray(meta.prototype_items, dtype=np.int64))
    last = meta.n_items - 1
    # at least 2: with one item asked for, an extra item ranked second would go unseen
    weights, length, ids, scores = await scorer.warm_up(history, np.arange(last, dtype=np.int64), max(meta.k_max, 2))
    if weights.shape != (model.n_heads, model.n_prototypes) or length < 1:
        raise ModelLoadError(
            f"version {model.version}: the profile graph answered shape {weights.shape} for {length} items, "
            f"expected ({model.n_heads}, {model.n_prototypes}) from apron_metadata (n_heads, n_prototypes)"
        )
    found = []
    if len(ids) < meta.k_max:
        found.append(f"k_max {meta.k_max}, but the scorer graph returns {len(ids)} items")
    scored = [int(i) for i, score in zip(np.asarray(ids).tolist(), np.asarray(scores).tolist(), strict=True) if np.isfinite(score)]
    beyond = sorted(i for i in scored if i > last)
    if beyond:
        found.append(f"the scorer graph scores items {beyond[:5]} beyond n_items {meta.n_items}: its catalog is larger")
    elif scored != [last]:
        found.append(f"the scorer graph has no item {last} (n_items {meta.n_items}): its catalog is smaller")
    refuse_mismatches(model, found)
