"""The limits that need state, all raising `ResourceExhausted` with the wait a retry needs (the
servicer's boundary answers RESOURCE_EXHAUSTED with `retry-after-ms`):

- `RateLimiter`: a token bucket per user id, for EditProfile (`--edit-rate`) and, optionally,
  Recommend (`--recommend-rate`); charged only once a request has been validated, and an
  EditProfile that then stores nothing (refused against the stored edits, Redis down) is refunded;
- `ConcurrencyLimit`: at most `--max-concurrent-rpcs` calls handled at once, and (when set) none admitted while
  calls wait longer than `--max-queue-delay-ms` to be taken up (`QueueDelay`); below that limit a
  share of new calls is shed so that the wait stays near half of it (`ShedProbability`, PIE); more
  are shed at once (load shedding) rather than queued, with a retry-after of the recent mean call
  duration (or the queue's delay).

The other request limits (message size, history length, edits per request, k) are checked where the
request is validated (`serving/validation.py`, the server's message-size options).

The buckets live in the gateway's memory: with N replicas behind a load balancer a user gets at most
N times the rate, which is what the limit is for (protecting Redis and the scorer from one runaway
client), not billing.
"""

from __future__ import annotations

import collections
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from serving.config import SecurityConfig, ServerConfig
from serving.errors import ResourceExhausted
from serving.validation import largest_request_bytes

GRPC_DEFAULT_MESSAGE_BYTES = 4 * 1024 * 1024  # grpc's own limit on a received message


def max_request_bytes(security: SecurityConfig) -> int:
    """`--max-message-bytes`, or with 0 (the default) the largest request validation accepts under
    `--max-history` / `--max-edits` (`validation.largest_request_bytes`): nothing larger can succeed,
    so nothing larger is read into memory."""
    return security.max_message_bytes or largest_request_bytes(security.max_history, security.max_edits)


# The same request as compact JSON (serving/http.py) takes at most this many times its protobuf size,
# plus a constant: a string escaped character by character ("\u0001" is 6 bytes for 1), a double
# as up to 24 digits and a field name beside it, `"include_heard":false` for 2 bytes.
JSON_FACTOR = 6
JSON_OVERHEAD_BYTES = 4096


def max_json_request_bytes(security: SecurityConfig) -> int:
    """The HTTP/JSON body limit that matches `max_request_bytes` (compact JSON)."""
    return JSON_FACTOR * max_request_bytes(security) + JSON_OVERHEAD_BYTES


def message_size_options(max_request: int) -> list[tuple[str, int]]:
    """grpc server options that reject larger requests (RESOURCE_EXHAUSTED from grpc) and never send
    a response over the larger of that and grpc's default."""
    return [
        ("grpc.max_receive_message_length", max_request),
        ("grpc.max_send_message_length", max(max_request, GRPC_DEFAULT_MESSAGE_BYTES)),
    ]


# Calls grpc core holds before the event loop takes them (its "pending" queue): beyond the soft limit
# core drops calls at random (Random Early Detection, up to all of them at the hard limit), and a
# dropped call reaches the client as a bare CANCELLED, unlogged and uncounted: 8-11% of a 2,000-call
# burst at grpc's defaults (1,000 / 3,000). Raised so that a burst reaches the boundary, which
# sheds it with RESOURCE_EXHAUSTED and a retry-after instead (a pending call holds only its headers).
MAX_PENDING_CALLS = 20_000
MAX_PENDING_CALLS_HARD = 40_000


def admission_options() -> list[tuple[str, int]]:
    """grpc server options: core's pending-call queue left to the boundary's admission (see above)."""
    return [
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS_HARD),
    ]


def connection_options(server: ServerConfig) -> list[tuple[str, int]]:
    """grpc server options that bound connections: an idle one is closed, an old one asked to
    reconnect (GOAWAY) and closed once its calls had the shutdown grace to finish."""
    return [
        ("grpc.max_connection_idle_ms", int(server.max_connection_idle_s * 1000)),
        ("grpc.max_connection_age_ms", int(server.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(server.shutdown_grace_s * 1000)),
    ]


@dataclass
class _Bucket:
    tokens: float
    updated: float  # clock reading when `tokens` was last brought up to date


class RateLimiter:
    """Token bucket per key (user id): `rate_per_s` tokens a second, at most `burst` saved up.

    Memory is bounded by `max_keys`: the least recently used buckets are dropped first. A bucket
    unused for burst / rate seconds is full again, so dropping it changes nothing; only when more
    than `max_keys` users are active within that window does a dropped user get a fresh burst.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        setting: str = "--edit-rate",
        what: str = "edits",
    ):
        if not (rate_per_s > 0 and burst >= 1 and max_keys >= 1):
            raise ValueError(
                f"rate limit needs rate > 0, burst >= 1, max_keys >= 1; got {rate_per_s}, {burst}, {max_keys}"
            )
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self.setting = setting
        self.what = what
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def try_acquire(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens from `key`'s bucket: 0.0 when allowed, else the seconds to wait (no
        tokens are taken from a refused request, so retrying after that wait succeeds)."""
        now = self.clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)
            bucket.updated = now
        self._buckets[key] = bucket  # most recently used goes last
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate_per_s

    def check(self, key: str, cost: float = 1.0) -> None:
        """Raise ResourceExhausted (with the wait) when `key` is over its rate; the servicer's
        boundary turns it into RESOURCE_EXHAUSTED with `retry-after-ms`."""
        wait_s = self.try_acquire(key, cost)
        if wait_s > 0:
            raise ResourceExhausted(
                f"too many {self.what} for this user: at most {self.rate_per_s:g}/s with bursts of {self.burst:g} "
                f"({self.setting}); retry in {wait_s:.2f} s",
                retry_after_s=wait_s,
            )

    def refund(self, key: str, cost: float = 1.0) -> None:
        """Give back what `try_acquire` took for a request that then failed without doing what the
        rate limits (an edit refused against the stored state, Redis unavailable): it costs nothing.
        A bucket dropped meanwhile is full again anyway."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + cost)

    def __len__(self) -> int:
        return len(self._buckets)


def edit_limiter(security: SecurityConfig) -> RateLimiter | None:
    """The EditProfile limiter `security` asks for (None with --edit-rate 0)."""
    if security.edit_rate == 0:
        return None
    return RateLimiter(security.edit_rate, security.edit_burst, setting="--edit-rate / --edit-burst")


def recommend_limiter(security: SecurityConfig) -> RateLimiter | None:
    """The per-user Recommend limiter `security` asks for (None with --recommend-rate 0, the default)."""
    if security.recommend_rate == 0:
        return None
    return RateLimiter(
        security.recommend_rate, security.recommend_burst, setting="--recommend-rate / --recommend-burst", what="recommendations"
    )


class QueueDelay:
    """How long a call waits before the event loop takes it up: in grpc core's pending-call queue
    (the loop accepts one call per method per turn, so a burst waits there, out of the admission
    limit's sight) and in the loop itself. Measured by a probe call that waits in the same queue
    (`serving/queue_probe.py`): `sent()` when it leaves, `arrived()` when the gateway takes it up.
    The estimate is the last probe's wait, or the age of the probe still on its way if that is
    longer (so a growing queue is seen before the probe gets through it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._sent_at: float | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=1)  # the last wait of each queue probed

    def track(self, queues: int) -> None:
        """Probes take turns over `queues` queues (one per gRPC server and Recommender method,
        serving/queue_probe.py): the
        estimate keeps the longest of their last waits, so one long queue is not forgotten while the
        others are probed."""
        self._recent = collections.deque(self._recent, maxlen=queues)

    @property
    def last_s(self) -> float:
        """The longest of the last waits of each queue probed (`track`); 0 before any or after `forget`."""
        return max(self._recent, default=0.0)

    def sent(self) -> None:
        self._sent_at = self.clock()

    def arrived(self) -> None:
        if self._sent_at is not None:
            self._recent.append(self.clock() - self._sent_at)
            self._sent_at = None

    def forget(self) -> None:
        """A probe that failed: no estimate (0) until the next one arrives."""
        self._sent_at = None
        self._recent.clear()

    def estimate(self) -> float:
        waiting = 0.0 if self._sent_at is None else self.clock() - self._sent_at
        return max(self.last_s, waiting)


# PIE, "Proportional Integral controller Enhanced" (RFC 8033), the drop probability of an AQM,
# here the share of new calls shed at admission. Gains per update, in probability per second of delay
# (RFC 8033 §4.2); the update interval is the queue probe's (serving/queue_probe.py sends one each).
PIE_ALPHA = 0.125  # how far the delay is over the target
PIE_BETA = 1.25  # how fast it grew since the last update
PROBE_INTERVAL_S = 0.05  # a queue probe (and a PIE update) at most every 50 ms
# RFC 8033 §5.1's auto-tuning: a small probability moves in small steps, so light overload is shed lightly
_PIE_SCALE = (
    (0.000001, 1 / 2048),
    (0.00001, 1 / 512),
    (0.0001, 1 / 128),
    (0.001, 1 / 32),
    (0.01, 1 / 8),
    (0.1, 1 / 2),
)


def pie_step(p: float, delay_s: float, old_delay_s: float, target_s: float) -> float:
    """One PIE update of the shed probability `p` from the queue delay now and at the last update
    (RFC 8033 §4.2 with §5.1's scaling; pure)."""
    step = PIE_ALPHA * (delay_s - target_s) + PIE_BETA * (delay_s - old_delay_s)
    for bound, scale in _PIE_SCALE:
        if p < bound:
            step *= scale
            break
    if p >= 0.1 and step > 0.02:  # §5.1: no jump from shedding some to shedding all in one update
        step = 0.02
    p += step
    if delay_s == 0 and old_delay_s == 0:  # §4.2: an empty queue lets the probability decay
        p *= 0.98
    return min(1.0, max(0.0, p))


class ShedProbability:
    """The share of new calls to shed so that the queue delay settles near `target_s` with the
    gateway still busy: PIE, updated lazily (at a call's admission, at most every `update_s`) from the
    probe's estimate. Why not all-or-nothing at the limit: clients that retry in a closed loop then
    come back together, the gateway idles while they wait and the queue refills in waves (RELIABILITY.md
    measured 342 -> 113 req/s); shedding a share holds the delay with the gateway kept busy."""

    def __init__(
        self,
        target_s: float,
        queue: QueueDelay,
        draw: Callable[[], float] = random.random,
        update_s: float = PROBE_INTERVAL_S,
    ):
        self.target_s = target_s
        self.queue = queue
        self.draw = draw  # uniform in [0, 1)
        self.update_s = update_s
        self.p = 0.0
        self._old_delay_s = 0.0
        self._updated_at = queue.clock()

    def update(self) -> float:
        """The current probability, after any update that is due (one step per interval passed: a
        gateway idle for a while catches up on the decay)."""
        now = self.queue.clock()
        steps = int((now - self._updated_at) / self.update_s)
        if steps > 0:
            delay = self.queue.estimate()
            for _ in range(min(steps, 100)):
                self.p = pie_step(self.p, delay, self._old_delay_s, self.target_s)
                self._old_delay_s = delay
            self._updated_at = now
        return self.p

    def shed(self, delay_s: float) -> bool:
        p = self.update()
        if delay_s < self.target_s / 2 and p < 0.2:  # RFC 8033 §4.1: a short queue is never shed
            return False
        return p > 0 and self.draw() < p


class ConcurrencyLimit:
    """At most `limit` calls at once (asyncio: one event loop, no lock needed), and none admitted
    while calls wait longer than `max_queue_delay_s` to be taken up (`queue`); below that, a share of
    them (`ShedProbability`, targeting half the limit) so that the wait rarely reaches it. `enter()` raises
    ResourceExhausted when either is exceeded; `leave(seconds)` frees the slot and updates the mean
    call duration that the retry-after hint uses (a slot frees about that soon; a queue drains in
    about its delay)."""

    SMOOTHING = 0.05  # weight of the newest call in the moving mean
    MIN_RETRY_S = 0.005

    def __init__(
        self,
        limit: int,
        queue: QueueDelay | None = None,
        max_queue_delay_s: float = 0.0,
        draw: Callable[[], float] = random.random,
    ):
        if limit < 1:
            raise ValueError(f"a concurrency limit must be at least 1, got {limit}")
        self.limit = limit
        self.queue = queue if max_queue_delay_s > 0 else None
        self.max_queue_delay_s = max_queue_delay_s
        self.draw = draw  # uniform in [0, 1): the jitter of a retry-after, the shedding's draw
        self.shedding = None if self.queue is None else ShedProbability(max_queue_delay_s / 2, self.queue, draw)
        self.active = 0
        self.mean_s = 0.01

    def enter(self) -> None:
        if self.active >= self.limit:
            retry_s = max(self.MIN_RETRY_S, self.mean_s)
            raise ResourceExhausted(
                f"the gateway is at its limit of {self.limit} calls at once (--max-concurrent-rpcs); "
                f"retry in {retry_s * 1000:.0f} ms",
                retry_after_s=retry_s,
            )
        shedding = self.shedding  # set exactly when the queue delay limit is (its queue is self.queue)
        if shedding is None:
            self.active += 1
            return
        delay = shedding.queue.estimate()
        if delay > self.max_queue_delay_s:
            # every call taken up now waited about that long (the queue is first in, first out): all
            # are shed until it drains; their retries, told to wait about the queue's delay with a
            # jitter, do not come back in one wave
            retry_s = delay * (0.5 + self.draw())
            raise ResourceExhausted(
                f"calls wait {delay * 1000:.0f} ms before the gateway takes them up, over its limit of "
                f"{self.max_queue_delay_s * 1000:.0f} ms (--max-queue-delay-ms): overloaded; retry in {retry_s * 1000:.0f} ms",
                retry_after_s=retry_s,
            )
        if shedding.shed(delay):
            # a share of the calls, to hold the wait near the target with the gateway still busy; a
            # retry meets the same share, so it is told to wait the expected attempts (1 / (1 - p))
            # times the queue's delay: fewer retries are refused again (each costs a call's work)
            p = shedding.p
            retry_s = max(delay, shedding.target_s) / max(0.05, 1.0 - p) * (0.5 + self.draw())
            raise ResourceExhausted(
                f"calls wait {delay * 1000:.0f} ms before the gateway takes them up: overloaded, shedding "
                f"{p:.0%} of new calls to hold the wait near "
                f"{shedding.target_s * 1000:.0f} ms, half its limit (--max-queue-delay-ms); retry in {retry_s * 1000:.0f} ms",
                retry_after_s=retry_s,
            )
        self.active += 1

    def leave(self, seconds: float) -> None:
        self.active -= 1
        self.mean_s += self.SMOOTHING * (seconds - self.mean_s)


NO_LIMIT = sys.maxsize  # --max-concurrent-rpcs 0 with a queue delay limit: count nothing


def concurrency_limit(server: ServerConfig, queue: QueueDelay | None = None) -> ConcurrencyLimit | None:
    """The admission limits `server` asks for (None: neither --max-concurrent-rpcs nor --max-queue-delay-ms)."""
    max_delay_s = server.max_queue_delay_ms / 1000 if queue is not None else 0.0
    if not server.max_concurrent_rpcs and not max_delay_s:
        return None
    return ConcurrencyLimit(server.max_concurrent_rpcs or NO_LIMIT, queue, max_delay_s)
