"""serving/limits.py: the per-user token bucket (with a fake clock) and the count checks."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from serving.config import ServingConfig
from serving.errors import ResourceExhausted
from serving.limits import (
    GRPC_DEFAULT_MESSAGE_BYTES,
    ConcurrencyLimit,
    RateLimiter,
    max_request_bytes,
    message_size_options,
)
from serving.validation import largest_request_bytes


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_steady_rate_per_user() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.try_acquire("alice") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire("alice") == pytest.approx(0.5)  # one token per 0.5 s
    assert limiter.try_acquire("bob") == 0.0  # users do not share a bucket
    clock.now += 0.5
    assert limiter.try_acquire("alice") == 0.0
    assert limiter.try_acquire("alice") == pytest.approx(0.5)
    clock.now += 100.0  # refills up to the burst, not beyond
    assert [limiter.try_acquire("alice") for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.5)]


def test_refused_requests_take_no_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=clock)
    assert limiter.try_acquire("a") == 0.0
    for _ in range(10):  # hammering while refused does not push the wait further out
        assert limiter.try_acquire("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.try_acquire("a") == 0.0


def test_check_raises_resource_exhausted_with_retry_hint() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=4.0, burst=1, clock=clock, setting="--edit-rate")
    limiter.check("alice")
    with pytest.raises(ResourceExhausted) as error:
        limiter.check("alice")
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--edit-rate" in str(error.value) and "retry in 0.25 s" in str(error.value)
    assert error.value.retry_after_s == pytest.approx(0.25)


def test_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1.0, burst=1, max_keys=100, clock=clock)
    for user in range(10_000):
        limiter.try_acquire(f"user{user}")
    assert len(limiter) == 100
    assert limiter.try_acquire("user9999") == pytest.approx(1.0)  # recent users keep their state


def test_bad_parameters_and_size_options() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=1, burst=0.5)
    assert dict(message_size_options(1024)) == {
        "grpc.max_receive_message_length": 1024,
        "grpc.max_send_message_length": GRPC_DEFAULT_MESSAGE_BYTES,  # responses keep grpc's default at least
    }
    assert dict(message_size_options(8 << 20))["grpc.max_send_message_length"] == 8 << 20
    config = ServingConfig(max_history=100, max_edits=2)
    assert max_request_bytes(config.security) == largest_request_bytes(100, 2)  # the default: derived
    assert max_request_bytes(dataclasses.replace(config, max_message_bytes=5000).security) == 5000


def test_concurrency_limit_sheds_with_a_retry_hint() -> None:
    limit = ConcurrencyLimit(2)
    limit.enter()
    limit.enter()
    with pytest.raises(ResourceExhausted, match="--max-concurrent-rpcs") as shed:
        limit.enter()
    assert shed.value.retry_after_s >= ConcurrencyLimit.MIN_RETRY_S and limit.active == 2  # a shed call holds no slot
    limit.leave(0.2)
    limit.enter()  # a freed slot is taken again
    before = limit.mean_s
    limit.leave(1.0)
    limit.leave(1.0)
    assert limit.active == 0 and limit.mean_s > before  # the hint follows how long calls take
    with pytest.raises(ValueError):
        ConcurrencyLimit(0)
