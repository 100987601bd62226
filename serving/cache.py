"""Redis state of the gateway: cached profiles and stored edits (redis.asyncio).

Keys:

Both keys of a user carry the user id as a Redis Cluster hash tag (`{user}`): they live in one slot,
so a Recommend's read of both stays one round trip on a cluster too (`--redis-cluster`), and the
MULTI/EXEC writes stay valid there. (The first layout had no braces: `migrate_legacy_edits`.)

- `apron:profile:<model_version>:{<user>}`: a hash holding the profile weights (H, K) float32, the
  history length, the digest of the history it came from, and that history's item indices
  (needed to exclude heard items when a later call sends no history). It has a TTL, refreshed on
  every read. Keying by model version means a new model never serves another model's weights.
- `apron:edits:{<user>}`: a hash with field = tag name and value = the edit as JSON. There is no TTL
  and no model version, so edits survive upgrades. Each edit is one HSET of its field, which is
  atomic, and a reset is DEL, so concurrent editors of different tags never overwrite each other
  (no read-modify-write).

`ProfileCache` wraps the scorer: it answers from Redis when the history is the cached one, and
otherwise asks the scorer and stores the result. The scorer knows nothing of Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import numpy as np
import redis.exceptions
from redis.asyncio import Redis, RedisCluster

from serving.backends.base import Scorer
from serving.catalog import history_digest
from serving.edits import EditSpec
from serving.errors import NotFound
from serving.metrics import Metrics

# Redis unreachable or too slow (the servicer answers UNAVAILABLE for them, except where noted).
STORE_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
PROFILE_PREFIX = "apron:profile"
EDITS_PREFIX = "apron:edits"


KEYS_VERSION_KEY = "apron:keys-version"  # "2": hash-tagged keys; absent: maybe keys of the first layout
KEYS_VERSION = "2"


def profile_key(model_version: int, user_id: str) -> str:
    return f"{PROFILE_PREFIX}:{model_version}:{{{user_id}}}"


def edits_key(user_id: str) -> str:
    return f"{EDITS_PREFIX}:{{{user_id}}}"


async def migrate_legacy_edits(redis: Redis) -> int:
    """Move the stored edits of the first key layout (`apron:edits:<user>`, before hash tags) to
    `apron:edits:{<user>}`, once per Redis (then KEYS_VERSION_KEY is set); returns how many users'
    edits were moved. Run by a single-node gateway at start, before it serves; a Redis Cluster
    deployment starts with the new layout. Never loses an edit: each old field is copied with
    HSETNX (an edit already stored under the new key, necessarily newer, wins) before the old key
    is deleted, so two gateways migrating at once, or one serving meanwhile, are harmless. Keys
    already of the new form are left alone (an old-layout user id that itself looks like `{...}`
    keeps its edits under the old key). Cached profiles are not moved: a miss recomputes them and
    the old ones expire."""
    if await redis.get(KEYS_VERSION_KEY) == KEYS_VERSION.encode():
        return 0
    moved = 0
    prefix = f"{EDITS_PREFIX}:".encode()
    async for key in redis.scan_iter(match=f"{EDITS_PREFIX}:*", count=1000):
        user = key[len(prefix) :].decode(errors="replace")
        if user.startswith("{") and user.endswith("}") or "\ufffd" in user:  # new form; not a user id we wrote
            continue
        fields = await redis.hgetall(key)
        async with redis.pipeline(transaction=True) as pipe:
            for field, value in fields.items():
                pipe.hsetnx(edits_key(user), field, value)
            await pipe.delete(key).execute()
        moved += 1
    await redis.set(KEYS_VERSION_KEY, KEYS_VERSION)
    return moved


@dataclass(frozen=True)
class ProfileRecord:
    weights: np.ndarray  # (H, K) float32, Eq. 13 before the value projection (unedited)
    history_length: int  # distinct valid items the profile was computed from
    digest: str  # catalog.history_digest of the history
    history_ids: np.ndarray  # (T,) int64 internal indices of that history

    def to_redis(self) -> dict[str, bytes | str | int]:
        return {
            "weights": np.ascontiguousarray(self.weights, dtype="<f4").tobytes(),
            "shape": ",".join(map(str, self.weights.shape)),
            "length": self.history_length,
            "digest": self.digest,
            "history": np.ascontiguousarray(self.history_ids, dtype="<i4").tobytes(),
        }

    @classmethod
    def from_redis(cls, fields: Mapping[bytes, bytes], shape: tuple[int, int]) -> ProfileRecord | None:
        """None when the hash is incomplete or has another shape (treated as a cache miss)."""
        try:
            stored_shape = tuple(int(d) for d in fields[b"shape"].decode().split(","))
            weights = np.frombuffer(fields[b"weights"], dtype="<f4")
            if stored_shape != shape or weights.size != shape[0] * shape[1]:
                return None
            return cls(
                weights=weights.reshape(shape).astype(np.float32),
                history_length=int(fields[b"length"]),
                digest=fields[b"digest"].decode(),
                history_ids=np.frombuffer(fields[b"history"], dtype="<i4").astype(np.int64),
            )
        except (KeyError, ValueError):
            return None


class RedisStore:
    """Profiles and edits in Redis; no model logic."""

    def __init__(self, redis: Redis | RedisCluster, ttl_s: int):
        self.redis = redis  # decode_responses=False: weights are bytes; a cluster client works alike
        self.ttl_s = ttl_s

    async def get_profile(
        self, model_version: int, user_id: str, shape: tuple[int, int]
    ) -> tuple[ProfileRecord | None, dict[str, EditSpec]]:
        """The cached profile (None: none or unusable) and the stored edits, in one round trip:
        a Recommend's only Redis read on a cache hit. No MULTI/EXEC: each HGETALL is atomic on its
        own (a reset plus its new edits is one transaction in `store_edits`), and the two keys need
        no common snapshot."""
        key = profile_key(model_version, user_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            fields, _, edits = await pipe.hgetall(key).expire(key, self.ttl_s).hgetall(edits_key(user_id)).execute()
        return (ProfileRecord.from_redis(fields, shape) if fields else None), _decode_edits(edits)

    async def put_profile(self, model_version: int, user_id: str, record: ProfileRecord) -> None:
        key = profile_key(model_version, user_id)
        async with self.redis.pipeline(transaction=True) as pipe:  # replace, never merge, a stale hash
            await pipe.delete(key).hset(key, mapping=record.to_redis()).expire(key, self.ttl_s).execute()

    async def find_history(self, user_id: str, versions: list[int]) -> tuple[int, np.ndarray] | None:
        """The history stored with the user's cached profile under the first of `versions` that has
        one (newest first is the caller's order): (that version, its internal item indices)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for version in versions:
                pipe.hmget(profile_key(version, user_id), "history")
            found = await pipe.execute()
        for version, (history,) in zip(versions, found, strict=True):
            if history is not None:
                return version, np.frombuffer(history, dtype="<i4").astype(np.int64)
        return None

    async def get_edits(self, user_id: str) -> dict[str, EditSpec]:
        return _decode_edits(await self.redis.hgetall(edits_key(user_id)))

    async def store_edits(self, user_id: str, edits: Mapping[str, EditSpec], reset: bool = False) -> dict[str, EditSpec]:
        """Reset (DEL) and/or set each edit's field (HSET) in one transaction; returns every stored
        edit afterwards (read inside the same transaction)."""
        key = edits_key(user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            if reset:
                pipe.delete(key)
            if edits:
                pipe.hset(key, mapping={tag: edit.to_json() for tag, edit in edits.items()})
            pipe.hgetall(key)
            results = await pipe.execute()
        return _decode_edits(results[-1])


def _decode_edits(fields: Mapping[bytes, bytes]) -> dict[str, EditSpec]:
    edits = {}
    for raw_tag, raw_edit in fields.items():
        tag = raw_tag.decode()
        try:
            edits[tag] = EditSpec.from_json(tag, raw_edit)
        except ValueError:
            continue  # a value written by something else: ignored rather than failing every call
    return edits


# (user id) -> the user's history in this version's catalog, from a profile cached under another
# version (serving/models.py), or None
Recover = Callable[[str], Awaitable[np.ndarray | None]]


class ProfileCache:
    """A user's profile: from Redis when the history matches, else from the scorer (then cached).
    A user with no profile under this version but one under another gets it recomputed from that
    one's history (`recover`, set by serving/models.py) rather than NOT_FOUND."""

    def __init__(self, store: RedisStore, scorer: Scorer, model_version: int, shape: tuple[int, int], metrics: Metrics | None = None):
        self.store = store
        self.scorer = scorer
        self.model_version = model_version
        self.shape = shape  # (H, K)
        self.metrics = metrics
        self.recover: Recover | None = None
        self._version_label = str(model_version)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache.labels(result, self._version_label).inc()

    async def cached(self, user_id: str) -> tuple[ProfileRecord | None, dict[str, EditSpec]]:
        """The cached profile (None when there is none) and the stored edits."""
        return await self.store.get_profile(self.model_version, user_id, self.shape)

    async def cached_or_recovered(self, user_id: str) -> tuple[ProfileRecord | None, dict[str, EditSpec]]:
        """`cached`, and when this version has no profile, one recomputed from another version's history."""
        record, edits = await self.cached(user_id)
        if record is None:
            record = await self._recovered(user_id)
        return record, edits

    async def _recovered(self, user_id: str) -> ProfileRecord | None:
        history = await self.recover(user_id) if self.recover is not None else None
        if history is None:
            return None
        self._count("recovered")
        return await self._compute_and_store(user_id, history)

    async def _compute_and_store(self, user_id: str, history_ids: np.ndarray) -> ProfileRecord:
        weights, length = await self.scorer.profile(history_ids)
        digest = history_digest(history_ids)
        record = ProfileRecord(np.asarray(weights, dtype=np.float32), length, digest, np.asarray(history_ids, dtype=np.int64))
        try:
            await self.store.put_profile(self.model_version, user_id, record)
        except STORE_DOWN:  # Redis went away after the read: answer, the next call stores it
            self._count("unavailable")
        return record

    async def resolve(
        self, user_id: str, history_ids: np.ndarray | None
    ) -> tuple[ProfileRecord, bool, dict[str, EditSpec]]:
        """(profile, came from the cache, stored edits). `history_ids` None: the cached profile or NotFound.

        Same history as cached (same digest): a hit. New history: computed, and it replaces the
        cached one. With Redis down, a history is still answered: computed and not stored, with no
        stored edits (counted as "unavailable"; the response's profile then shows no edit, which
        tells the client they were not applied); without a history there is nothing to compute
        from (UNAVAILABLE)."""
        try:
            cached, edits = await self.cached(user_id)
        except STORE_DOWN:
            if history_ids is None:
                raise
            self._count("unavailable")
            weights, length = await self.scorer.profile(history_ids)
            digest = history_digest(history_ids)
            record = ProfileRecord(np.asarray(weights, np.float32), length, digest, np.asarray(history_ids, np.int64))
            return record, False, {}
        if history_ids is None:
            if cached is None and (recovered := await self._recovered(user_id)) is not None:
                return recovered, False, edits
            if cached is None:
                self._count("miss")
                raise NotFound(
                    f"no profile for user {user_id!r} under model version {self.model_version}: "
                    "send the user's history once (RecommendRequest.history) to create it"
                )
            self._count("hit")
            return cached, True, edits
        digest = history_digest(history_ids)
        if cached is not None and cached.digest == digest:
            self._count("hit")
            return cached, True, edits
        self._count("miss")
        return await self._compute_and_store(user_id, history_ids), False, edits
