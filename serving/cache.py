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
- `apron:version:{<user>}`: a random token that every write of the user's profile or edits
  replaces in the same transaction (versioned reads, below). Same TTL as the profile.

`ProfileCache` wraps the scorer: it answers from Redis when the history is the cached one, and
otherwise asks the scorer and stores the result. The scorer knows nothing of Redis.

Versioned reads: each gateway process keeps the profiles and edits it read last (`ProfileCache`,
a bounded LRU), with the version they were read at. A later read of the same user asks Redis for
the version only (one GET, a few bytes, on the store's own pipelined connection where it can:
serving/redis_pipe.py) and uses its copy when the version is unchanged; otherwise,
or when its copy is older than `refresh_s` (which also refreshes the TTLs), it reads the profile,
the edits and the version in one atomic script. Because every write replaces the version in the
transaction that changes the data, an EditProfile acknowledged by any worker or replica is seen by
the very next read on every other one: there is no invalidation message to wait for, and nothing to
lose. The copy lets a process compute what follows from a profile (its shares, the encoded
response profile: `ProfileRecord.memo`) once per version instead of once per call, and lets a
Recommend score it while the version read is in flight (`ProfileCache.held`): the answer stands
only when the read confirms that very copy, so the guarantee is the same and the round trip hides
behind the scorer's (`python -m benchmarks.overlap_cost`).

Bounded and never blocking (`RedisStore`): every operation has a time limit (`timeout_s`); once Redis
failed one (no answer, refused, LOADING) or the gateway's watch saw it down (`mark`), Redis is known
down and every operation fails at once with `StoreSkipped` (no connection, no wait) until the watch
sees it answer again (a store without a watch lets one trial operation through every `retry_s`).
Recommend with a history then answers uncached at once; what needs Redis answers UNAVAILABLE at
once. A Redis at its maxmemory with nothing left to evict (only edits: they have no TTL;
`serving/redis_process.py`) refuses writes: `StoreFull` (UNAVAILABLE, nothing stored) for an edit,
an uncached answer for a Recommend with a history, with the user's stored edits read on their own
(a read needs no memory; `ProfileCache.resolve`). So does a Redis that refuses writes for its own
state (a read-only replica after a failover, failed persistence: `StoreRefused`, with why and what
mends it); it answers, so it is not known down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import redis.exceptions
from redis.asyncio import Redis, RedisCluster

from serving import stages
from serving.backends.base import Scorer
from serving.catalog import history_digest
from serving.edits import EditSpec
from serving.errors import NotFound, Unavailable
from serving.metrics import Metrics
from serving.redis_pipe import Endpoint, RedisPipe
from serving.redis_watch import reachable

T = TypeVar("T")


class StoreSkipped(redis.exceptions.ConnectionError):
    """Redis is known to be down: the operation was not tried (`RedisStore`)."""


class StoreRefused(Unavailable):
    """Redis answered but refused a write (UNAVAILABLE): a read-only replica (READONLY, as a primary
    is after a failover), failed persistence (MISCONF), too few replicas (NOREPLICAS), or its
    maxmemory (`StoreFull`). Not "known down" (`RedisStore.mark`): Redis answers, the watch's PING
    says so within 0.1 s, a refusal costs one round trip rather than a timeout, and its reads (the
    version GETs) still work; so each operation asks, and the first one after the cause is mended
    succeeds."""


class StoreFull(StoreRefused):
    """Redis refused a write: its maxmemory is reached with nothing left to evict (UNAVAILABLE)."""


# Redis unreachable, too slow, or known down (the servicer answers UNAVAILABLE for them, except where noted).
STORE_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# Redis refuses to store (full, read-only, ...): a Recommend goes on uncached, as with STORE_DOWN.
STORE_UNUSABLE = (*STORE_DOWN, StoreRefused)
# What an operation that Redis refused did not do (StoreRefused's message): a write stored nothing;
# a full read writes too (the user's version, the TTLs: READ_SCRIPT), so a GetProfile, or an
# EditProfile's read before its write, got nothing to answer or check against
NOTHING_STORED = "nothing was stored"
NOTHING_READ = (
    "it refused the write that reading a user's profile makes (a new version token, the TTLs): "
    "the profile was not read and nothing was stored"
)
RETRY_S = 0.5  # while Redis is known down: one operation is let through this often, to see it answer again
PROFILE_PREFIX = "apron:profile"
EDITS_PREFIX = "apron:edits"
VERSION_PREFIX = "apron:version"
MEMO_KEYS = 8  # values remembered per profile record (ProfileRecord.memo)
LOCAL_PROFILES = 4096  # profiles a gateway process keeps (ProfileCache), least recently used dropped
LOCAL_REFRESH_S = 600.0  # a kept profile is read in full again after this long (refreshing its TTL)
CACHE_RESULTS = ("hit", "miss", "recovered", "unavailable")  # apron_profile_cache_requests{result}
PROFILE_READS = ("version", "full")  # apron_profile_reads{kind}: a kept copy confirmed by its version, a full read


KEYS_VERSION_KEY = "apron:keys-version"  # "2": hash-tagged keys; absent: maybe keys of the first layout
KEYS_VERSION = "2"


def profile_key(model_version: int, user_id: str) -> str:
    return f"{PROFILE_PREFIX}:{model_version}:{{{user_id}}}"


def edits_key(user_id: str) -> str:
    return f"{EDITS_PREFIX}:{{{user_id}}}"


def version_key(user_id: str) -> str:
    return f"{VERSION_PREFIX}:{{{user_id}}}"


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


def kept_weights(weights: np.ndarray) -> np.ndarray:
    """A profile's (H, K) weights as a record keeps them: float32, in an array of their own. A
    backend's row is a view of its whole batch's output, which a kept view would keep alive (32
    profiles' worth for one, for as long as the record is held)."""
    return np.array(weights, dtype=np.float32)


@dataclass(frozen=True)
class ProfileRecord:
    weights: np.ndarray  # (H, K) float32, Eq. 13 before the value projection (unedited)
    history_length: int  # distinct valid items the profile was computed from
    digest: str  # catalog.history_digest of the history
    history_ids: np.ndarray  # (T,) int64 internal indices of that history
    # values computed from this record (and the edits named in the key) by its users, kept while the
    # record is: a profile read once serves many calls (`memoized`)
    memo: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)

    def memoized(self, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()` the first time `key` is asked for, the same value afterwards (a few keys per
        record: the memo is emptied beyond MEMO_KEYS)."""
        try:
            return self.memo[key]
        except KeyError:
            if len(self.memo) >= MEMO_KEYS:
                self.memo.clear()
            value = self.memo[key] = compute()
            return value

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


@dataclass(frozen=True)
class StoredProfile:
    """A user's state in Redis as one atomic read saw it."""

    version: bytes  # the user's version token at that moment
    record: ProfileRecord | None  # the cached profile (None: none, or unusable)
    edits: dict[str, EditSpec]  # the stored edits
    read_at: float = field(default_factory=time.monotonic)


class VersionReads:
    """Version reads that share round trips: a read while none is in flight goes at once (one GET),
    and the reads that arrive while one is in flight go together when it returns (one MGET), so
    under load a process pays one round trip per batch of calls, not per call, and a lone call
    waits for nothing."""

    def __init__(self, store: RedisStore):
        self.store = store
        self._busy = False
        self._waiting: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # the MGETs in flight (a task each: no caller owns them)

    async def get(self, user_id: str) -> bytes | None:
        if self._busy:
            future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            self._waiting.append((user_id, future))
            return await future
        self._busy = True
        try:
            return await self.store.get_one_version(user_id)
        finally:  # also when this caller gave up: the ones waiting behind it still get their read
            self._next()

    def _next(self) -> None:
        if not self._waiting:
            self._busy = False
            return
        batch, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._read_many(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_many(self, batch: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        try:
            versions = await self.store.get_versions([user_id for user_id, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:  # every caller of the batch gets the failure (STORE_DOWN: served uncached)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, future), version in zip(batch, versions, strict=True):
                if not future.done():
                    future.set_result(version)
        finally:
            self._next()


# One atomic read of a user's profile, edits and version, refreshing the TTLs; a user without a
# version gets the caller's fresh one (ARGV[2]). KEYS: profile, edits, version; ARGV: ttl, version.
READ_SCRIPT = """
local version = redis.call('GET', KEYS[3])
if version then
  redis.call('EXPIRE', KEYS[3], ARGV[1])
else
  version = ARGV[2]
  redis.call('SET', KEYS[3], version, 'EX', ARGV[1])
end
local profile = redis.call('HGETALL', KEYS[1])
if #profile > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return {version, profile, redis.call('HGETALL', KEYS[2])}
"""


# Store the edits (KEYS[1]) and a new version (KEYS[2]) only while the version is still the one the
# caller validated them against (ARGV[3]; empty: whatever it is): nil when it changed, else the
# stored edits after the write. ARGV: ttl, new version, expected version, reset ("1"), then field,
# value pairs. A script, not WATCH/MULTI: atomic on one node and on a cluster (one slot) alike.
EDIT_SCRIPT = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return false
end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[1])
end
if #ARGV > 4 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""


class VersionChanged(Exception):
    """A conditional write found the user's version changed since the caller's read: nothing was written."""


class UserLocks:
    """One asyncio.Lock per user, kept only while someone holds or waits for it: a process's
    read-check-write sequences on one user (EditProfile) run one at a time, so they never lose
    the conditional write to each other; only other processes' writes can (`VersionChanged`)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # user -> (lock, holders and waiters)

    def kept(self) -> dict[str, int]:
        """The users whose lock is kept now, each with how many calls hold or wait for it: only users
        with some, so the registry is bounded by the calls in flight, not by every user ever seen."""
        return {user: users for user, (_, users) in self._locks.items()}

    @contextlib.asynccontextmanager
    async def hold(self, user_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(user_id, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[user_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:  # cancelled while waiting, too
            users = self._locks[user_id][1] - 1
            if users:
                self._locks[user_id] = (lock, users)
            else:
                del self._locks[user_id]


def new_version() -> bytes:
    """A version token: random, so a version key that expired and came back never repeats an old one."""
    return secrets.token_hex(8).encode()


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A script's HGETALL reply (field, value, field, value, ...) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _is_oom(error: redis.exceptions.ResponseError) -> bool:
    """Redis refused a write for its maxmemory (a script's refusal arrives as a plain ResponseError)."""
    return isinstance(error, redis.exceptions.OutOfMemoryError) or "OOM command not allowed" in str(error)


# Redis' refusals of a write for a state of the server, not of the request, by error code: why, and
# what mends it. redis-py strips the code it has a class for (ReadOnlyError), a script's refusal
# arrives as a plain ResponseError that quotes it ("... -READONLY You can't write ...").
WRITE_REFUSALS = {
    "READONLY": (
        "refuses writes: it is a read-only replica (READONLY), as a primary is after a failover",
        "point --redis-url at the current primary",
    ),
    "MISCONF": (
        "refuses writes because it cannot persist them (MISCONF: its last snapshot failed, e.g. a full or "
        "read-only disk)",
        "give its data directory room or write access; it takes writes again once a save succeeds (BGSAVE)",
    ),
    "NOREPLICAS": (
        "refuses writes: fewer replicas acknowledge it than its min-replicas-to-write (NOREPLICAS)",
        "bring its replicas back or lower min-replicas-to-write",
    ),
}
_REFUSAL_CODE = re.compile(r"(?:^|[\s-])(" + "|".join(WRITE_REFUSALS) + r")\b")


def _refusal(error: redis.exceptions.ResponseError) -> str | None:
    """The WRITE_REFUSALS code of a write Redis refused for its own state, or None (another error)."""
    if isinstance(error, redis.exceptions.ReadOnlyError):
        return "READONLY"
    found = _REFUSAL_CODE.search(str(error))
    return found.group(1) if found else None


class RedisStore:
    """Profiles, edits and their versions in Redis; no model logic.

    `timeout_s`: the longest one operation may take before it fails with redis' TimeoutError
    (UNAVAILABLE), enforced here with `asyncio.timeout`. Give it when the client has no
    `socket_timeout` of its own: redis-py wraps every command's send in `asyncio.wait_for` when it
    has one, a task per command on Python 3.11, which doubles the CPU of a small GET. None: the
    client's own socket timeout applies.

    Known down (the module docstring): set by a failed operation or `mark(False)` (the gateway's
    watch), cleared by `mark(True)` or a trial operation that succeeds: one per `retry_s` (None: no
    trials, the watch alone says when Redis is back: no call ever waits for a Redis known down)."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        ttl_s: int,
        timeout_s: float | None = None,
        retry_s: float | None = RETRY_S,
        *,
        pipelined: bool = True,
    ):
        self.redis = redis  # decode_responses=False: weights are bytes; a cluster client works alike
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.down_since: float | None = None  # monotonic time Redis was first known down (None: not known down)
        self._next_trial = 0.0
        self._read = redis.register_script(READ_SCRIPT)  # EVALSHA, loaded on first use (and after a restart)
        self._edit = redis.register_script(EDIT_SCRIPT)
        self._versions = VersionReads(self)  # version reads when the pipe cannot take them
        # version reads on their own pipelined connection (serving/redis_pipe.py): bounded by
        # `timeout_s` (the pipe has no socket timeout), not on a cluster (a user's keys live on one
        # of many nodes) nor with credentials it cannot present
        usable = pipelined and timeout_s is not None and isinstance(redis, Redis)
        endpoint = Endpoint.of(redis) if usable else None
        self.pipe = RedisPipe(endpoint, timeout_s) if endpoint is not None else None  # type: ignore[arg-type]  # usable: a limit

    @property
    def known_down(self) -> bool:
        return self.down_since is not None

    def mark(self, up: bool) -> None:
        """What a check of Redis found (the watch's PING): up clears "known down", down sets it."""
        if up:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = time.monotonic()
            self._next_trial = math.inf if self.retry_s is None else self.down_since + self.retry_s

    async def aclose(self) -> None:
        if self.pipe is not None:
            await self.pipe.close()
        await self.redis.aclose()

    async def reachable(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until Redis answers a PING; whether it did (it is then not known down)."""
        up = await reachable(self.redis, timeout_s)
        if up:
            self.mark(True)
        return up

    @contextlib.asynccontextmanager
    async def _operation(self, refused: str = NOTHING_STORED) -> AsyncIterator[None]:
        """One Redis operation: skipped at once while Redis is known down (but for one trial per
        `retry_s`), limited to `timeout_s`, and what its failure says about Redis recorded. A write
        Redis refused for its state is `StoreRefused` (UNAVAILABLE), its message saying why, what
        was not done (`refused`) and what mends it."""
        if self.down_since is not None:
            now = time.monotonic()
            if now < self._next_trial:
                raise StoreSkipped(f"Redis has not answered for {now - self.down_since:.1f} s, so it was not asked")
            self._next_trial = now + self.retry_s  # type: ignore[operator]  # this call is the trial: the others keep skipping
        try:
            if self.timeout_s is None:
                yield
            else:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        yield
                except TimeoutError as error:  # this operation's own limit (a caller's deadline arrives as cancellation)
                    raise redis.exceptions.TimeoutError(f"Redis did not answer within {self.timeout_s:g} s") from error
        except STORE_DOWN:
            self.mark(False)
            raise
        except redis.exceptions.ResponseError as error:
            self.down_since = None  # it answered, if only to refuse
            if _is_oom(error):
                raise StoreFull(
                    "the profile store (Redis) is full: its maxmemory is reached and only stored edits are left "
                    f"(cached profiles are evicted first), so {refused}; raise its limit "
                    "(--redis-maxmemory-mb for the private redis-server, maxmemory for your own)"
                ) from error
            if (code := _refusal(error)) is not None:
                why, mend = WRITE_REFUSALS[code]
                raise StoreRefused(f"the profile store (Redis) {why}, so {refused}; {mend} ({error})") from error
            raise  # a bug of ours (a wrong key type, a bad script): INTERNAL, logged
        self.down_since = None  # it answered

    async def get_profile(self, model_version: int, user_id: str, shape: tuple[int, int]) -> StoredProfile:
        """The cached profile, the stored edits and their version, in one round trip (one script,
        atomic: the three belong together), refreshing the profile's and the version's TTL."""
        keys = [profile_key(model_version, user_id), edits_key(user_id), version_key(user_id)]
        async with self._operation(refused=NOTHING_READ):
            version, fields, edits = await self._read(keys=keys, args=[self.ttl_s, new_version()])
        record = ProfileRecord.from_redis(_pairs(fields), shape) if fields else None
        return StoredProfile(version, record, _decode_edits(_pairs(edits)))

    def send_version_read(self, user_id: str) -> asyncio.Future[bytes | None] | None:
        """The user's version GET, written to the pipe now, so that the caller can compute while it is
        in flight and then `get_version(user_id, sent)`; None when it cannot be sent now (no pipe,
        not connected yet, Redis known down): `get_version` then reads it the other way."""
        if self.pipe is None or self.down_since is not None:
            return None
        return self.pipe.get(version_key(user_id).encode())

    async def get_version(self, user_id: str, sent: asyncio.Future[bytes | None] | None = None) -> bytes | None:
        """The user's version token (None: none): enough to tell whether a copy read at some
        version is still what Redis holds. `sent`: the read `send_version_read` sent for it. On the
        pipe when it is connected; otherwise on redis-py, where concurrent calls share round trips
        (`VersionReads`)."""
        if sent is None:
            sent = self.send_version_read(user_id)
            if sent is None:
                return await self._versions.get(user_id)
        try:  # the pipe bounds the read itself (`timeout_s`): no timer per call
            return await sent
        except STORE_DOWN:
            self.mark(False)
            raise

    async def get_one_version(self, user_id: str) -> bytes | None:
        async with self._operation():
            return await self.redis.get(version_key(user_id))

    async def get_versions(self, user_ids: list[str]) -> list[bytes | None]:
        """Many users' versions in one round trip (MGET; on a cluster, one per node)."""
        keys = [version_key(user_id) for user_id in user_ids]
        async with self._operation():
            if isinstance(self.redis, RedisCluster):
                return list(await self.redis.mget_nonatomic(keys))
            return list(await self.redis.mget(keys))

    async def put_profile(self, model_version: int, user_id: str, record: ProfileRecord) -> StoredProfile:
        """Replace the cached profile; returns the state it leaves (the new version, with the edits
        read in the same transaction)."""
        key, version = profile_key(model_version, user_id), new_version()
        async with self._operation(), self.redis.pipeline(transaction=True) as pipe:  # replace, never merge, a stale hash
            pipe.delete(key).hset(key, mapping=record.to_redis()).expire(key, self.ttl_s)
            results = await pipe.set(version_key(user_id), version, ex=self.ttl_s).hgetall(edits_key(user_id)).execute()
        return StoredProfile(version, record, _decode_edits(results[-1]))

    async def find_history(self, user_id: str, versions: list[int]) -> tuple[int, np.ndarray] | None:
        """The history stored with the user's cached profile under the first of `versions` that has
        one (newest first is the caller's order): (that version, its internal item indices)."""
        async with self._operation(), self.redis.pipeline(transaction=False) as pipe:
            for version in versions:
                pipe.hmget(profile_key(version, user_id), "history")
            found = await pipe.execute()
        for version, (history,) in zip(versions, found, strict=True):
            if history is not None:
                return version, np.frombuffer(history, dtype="<i4").astype(np.int64)
        return None

    async def get_edits(self, user_id: str) -> dict[str, EditSpec]:
        async with self._operation():
            return _decode_edits(await self.redis.hgetall(edits_key(user_id)))

    async def store_edits(
        self, user_id: str, edits: Mapping[str, EditSpec], reset: bool = False, expected: bytes | None = None
    ) -> dict[str, EditSpec]:
        """Reset (DEL) and/or set each edit's field (HSET) and replace the version, atomically (one
        script); returns every stored edit afterwards. With `expected` (the version a read returned),
        only if the version is still that one: else VersionChanged, and nothing was written."""
        fields = [part for tag, edit in edits.items() for part in (tag, edit.to_json())]
        args = [self.ttl_s, new_version(), expected or b"", b"1" if reset else b"0", *fields]
        async with self._operation():
            stored = await self._edit(keys=[edits_key(user_id), version_key(user_id)], args=args)
        if stored is None:
            raise VersionChanged(f"the version of {user_id!r} changed since {expected!r} was read")
        return _decode_edits(_pairs(stored))


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
    one's history (`recover`, set by serving/models.py) rather than NOT_FOUND.

    Keeps the `local_entries` users it read last (versioned reads: the module docstring); 0 keeps
    none (every read is a full one)."""

    def __init__(
        self,
        store: RedisStore,
        scorer: Scorer,
        model_version: int,
        shape: tuple[int, int],
        metrics: Metrics | None = None,
        *,
        local_entries: int = LOCAL_PROFILES,
        refresh_s: float = LOCAL_REFRESH_S,
    ):
        self.store = store
        self.scorer = scorer
        self.model_version = model_version
        self.shape = shape  # (H, K)
        self.metrics = metrics
        self.local_entries = local_entries
        self.refresh_s = min(refresh_s, store.ttl_s / 2)  # a kept copy never outlives its TTL unread
        self._local: OrderedDict[str, StoredProfile] = OrderedDict()
        self.recover: Recover | None = None
        self._version_label = str(model_version)
        # each counter resolved once, not per lookup
        self._counters = {result: metrics.cache.labels(result, self._version_label) for result in CACHE_RESULTS} if metrics else {}
        self._reads = {kind: metrics.profile_reads.labels(kind) for kind in PROFILE_READS} if metrics else {}

    def _remember(self, user_id: str, stored: StoredProfile) -> None:
        if self.local_entries <= 0:
            return
        self._local[user_id] = stored
        self._local.move_to_end(user_id)
        while len(self._local) > self.local_entries:
            self._local.popitem(last=False)

    def held(self, user_id: str, digest: str | None) -> StoredProfile | None:
        """The kept copy that `resolve` answers with when Redis still holds its version (a hit on a
        copy young enough not to be read again), or None. A caller may compute with it while that
        read is in flight, and use what it computed only once `resolve` returns this very copy
        (its record and edits, the same objects): the servicer's `_recommend`."""
        kept = self._local.get(user_id)
        if kept is None or kept.record is None or time.monotonic() - kept.read_at >= self.refresh_s:
            return None
        if digest is not None and kept.record.digest != digest:
            return None  # a new history: resolve computes a new profile
        return kept

    def confirm(self, user_id: str, held: StoredProfile, history_ids: np.ndarray | None, digest: str | None) -> Confirmation:
        """`resolve(user_id, history_ids, digest)` for a caller computing with `held` meanwhile: the
        version read is sent now and the answer awaited later (`Confirmation.result`)."""
        return Confirmation(self, user_id, held, history_ids, digest)

    def _confirmed(self, user_id: str, held: StoredProfile, version: bytes | None) -> bool:
        """Whether Redis's `version` confirms the kept copy `held` (then counted as `resolve` counts a hit)."""
        if version is None or version != held.version or self._local.get(user_id) is not held:
            return False
        self._local.move_to_end(user_id)
        self._count_read("version")
        self._count("hit")
        return True

    async def _read(self, user_id: str) -> StoredProfile:
        """The user's state: the kept copy when Redis still holds its version, else a full read."""
        kept = self._local.get(user_id)
        if (
            kept is not None
            and time.monotonic() - kept.read_at < self.refresh_s
            and await self.store.get_version(user_id) == kept.version
        ):
            if self._local.get(user_id) is kept:  # other reads may have pushed it out during the await
                self._local.move_to_end(user_id)
            self._count_read("version")
            return kept
        stored = await self.store.get_profile(self.model_version, user_id, self.shape)
        self._count_read("full")
        self._remember(user_id, stored)
        return stored

    def _count_read(self, kind: str) -> None:
        counter = self._reads.get(kind)
        if counter is not None:
            counter.inc()

    def _count(self, result: str) -> None:
        counter = self._counters.get(result)
        if counter is not None:
            counter.inc()

    async def cached(self, user_id: str) -> tuple[ProfileRecord | None, dict[str, EditSpec]]:
        """The cached profile (None when there is none) and the stored edits."""
        stored = await self._read(user_id)
        stages.mark(stages.REDIS_READ)
        return stored.record, stored.edits

    async def state(self, user_id: str) -> StoredProfile:
        """The user's state (`cached`'s, with its version), and when this version has no profile, one
        recomputed from another version's history: EditProfile validates edits against it and stores
        them only at its version, GetProfile shows it."""
        stored = await self._read(user_id)
        stages.mark(stages.REDIS_READ)
        if stored.record is None and (recovered := await self._recovered(user_id)) is not None:
            again = await self._read(user_id)  # the version the recovered profile's write left
            stored = again if again.record is not None else dataclasses.replace(again, record=recovered)  # (not stored)
        return stored

    async def _recovered(self, user_id: str) -> ProfileRecord | None:
        history = await self.recover(user_id) if self.recover is not None else None
        if history is None:
            return None
        self._count("recovered")
        return await self._compute_and_store(user_id, history)

    async def _compute_and_store(self, user_id: str, history_ids: np.ndarray, digest: str | None = None) -> ProfileRecord:
        weights, length = await self.scorer.profile(history_ids)
        stages.mark(stages.PROFILE)
        digest = digest or history_digest(history_ids)
        record = ProfileRecord(kept_weights(weights), length, digest, np.asarray(history_ids, dtype=np.int64))
        try:
            stored = await self.store.put_profile(self.model_version, user_id, record)
        except STORE_UNUSABLE:  # Redis went away (or filled up) after the read: answer, a later call stores it
            self._count("unavailable")
        else:
            self._remember(user_id, stored)  # with the version and edits the write left
        stages.mark(stages.REDIS_WRITE)
        return record

    async def resolve(
        self, user_id: str, history_ids: np.ndarray | None, digest: str | None = None
    ) -> tuple[ProfileRecord, bool, dict[str, EditSpec]]:
        """(profile, came from the cache, stored edits). `history_ids` None: the cached profile or NotFound;
        `digest`: its history_digest when the caller knows it.

        Same history as cached (same digest): a hit. New history: computed, and it replaces the
        cached one. With Redis down, a history is still answered: computed and not stored, with no
        stored edits (counted as "unavailable"; the response's profile then shows no edit, which
        tells the client they were not applied); without a history there is nothing to compute
        from (UNAVAILABLE). A Redis that refuses writes (`StoreRefused`) is treated alike: answered,
        not stored. It still holds the stored edits, and serves reads: full (`StoreFull`: the read
        was refused because the user's version, which has a TTL, was evicted and writing a new one
        needs memory; the edits have none), a read-only replica, one that cannot persist. So they
        are read on their own and applied, or, if even that fails, UNAVAILABLE: an answer that
        ignores acknowledged edits would break the promise that recommendations follow them at once."""
        try:
            cached, edits = await self.cached(user_id)
        except STORE_UNUSABLE as error:  # down, known down (skipped at once), full or refusing writes
            stages.mark(stages.REDIS_READ)
            if history_ids is None:
                raise
            edits = await self._edits_when_refused(user_id, error) if isinstance(error, StoreRefused) else {}
            self._count("unavailable")
            weights, length = await self.scorer.profile(history_ids)
            stages.mark(stages.PROFILE)
            digest = digest or history_digest(history_ids)
            record = ProfileRecord(kept_weights(weights), length, digest, np.asarray(history_ids, np.int64))
            return record, False, edits
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
        digest = digest or history_digest(history_ids)
        if cached is not None and cached.digest == digest:
            self._count("hit")
            return cached, True, edits
        self._count("miss")
        return await self._compute_and_store(user_id, history_ids, digest), False, edits


    async def _edits_when_refused(self, user_id: str, refused: StoreRefused) -> dict[str, EditSpec]:
        """The user's stored edits, read on their own (HGETALL, a read: Redis serves it at its
        maxmemory, as a read-only replica, or unable to persist) after `refused` (the versioned
        read's write of a version) was refused; Unavailable when even that fails."""
        try:
            edits = await self.store.get_edits(user_id)
        except (redis.exceptions.RedisError, Unavailable) as error:  # down now, refused, ...: not a reason to ignore edits
            raise Unavailable(
                f"{refused}; and the user's stored edits could not be read either ({error}): a recommendation "
                "without them would ignore edits the user stored, so none was made"
            ) from error
        stages.mark(stages.REDIS_READ)
        return edits


class Confirmation:
    """A held copy's check under way (`ProfileCache.confirm`). On the pipe the version GET goes out
    at once and is matched against the copy when the caller awaits `result` (no task: the read
    costs a write and a callback); without the pipe, `resolve` runs as its own task meanwhile. A
    version that differs, and a read that failed, end in `resolve` itself: the same answer, the
    same errors, as a call that held no copy."""

    def __init__(self, cache: ProfileCache, user_id: str, held: StoredProfile, history_ids: np.ndarray | None, digest: str | None):
        self.cache, self.user_id, self.held, self.history_ids, self.digest = cache, user_id, held, history_ids, digest
        self.sent = cache.store.send_version_read(user_id)
        self.task = None if self.sent is not None else stages.unclocked_task(cache.resolve(user_id, history_ids, digest))

    def cancel(self) -> None:
        """The caller no longer wants it (its own work failed, or it was cancelled)."""
        if self.sent is not None:
            self.sent.cancel()  # its reply is read and dropped
        elif self.task is not None and not self.task.cancel() and not self.task.cancelled():
            self.task.exception()  # it had ended: retrieved, so asyncio does not log it as lost

    async def result(self) -> tuple[ProfileRecord, bool, dict[str, EditSpec]]:
        """What `resolve` answers: the held copy's (record, True, edits) when Redis confirmed it."""
        if self.task is not None:
            return await self.task  # a cancelled caller cancels the read with it
        try:
            version = await self.cache.store.get_version(self.user_id, self.sent)
        except STORE_UNUSABLE:  # resolve finds Redis known down and answers as it does then
            version = None
        if self.cache._confirmed(self.user_id, self.held, version):
            return self.held.record, True, self.held.edits  # type: ignore[return-value]  # held: a record
        return await self.cache.resolve(self.user_id, self.history_ids, self.digest)
