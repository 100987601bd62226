"""serving/limits.py: the per-user token bucket (with a fake clock) and the count checks."""

from __future__ import annotations

import dataclasses
import json

import grpc
import pytest

from serving.config import ServingConfig
from serving.errors import ResourceExhausted
from serving.limits import (
    GRPC_DEFAULT_MESSAGE_BYTES,
    NO_LIMIT,
    PROBE_INTERVAL_S,
    ConcurrencyLimit,
    QueueDelay,
    RateLimiter,
    ShedProbability,
    concurrency_limit,
    max_json_request_bytes,
    max_request_bytes,
    message_size_options,
    pie_step,
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


def test_a_refund_gives_back_what_was_taken_up_to_the_burst() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=2, clock=FakeClock())
    assert [limiter.try_acquire("a") for _ in range(2)] == [0.0, 0.0]
    limiter.refund("a")
    assert limiter.try_acquire("a") == 0.0 and limiter.try_acquire("a") == pytest.approx(1.0)
    for _ in range(5):  # never beyond the burst
        limiter.refund("a")
    assert [limiter.try_acquire("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    limiter.refund("never-seen")  # no bucket: full anyway, nothing to give back
    assert len(limiter) == 1


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


def test_queue_delay_is_the_last_probe_or_the_one_still_waiting() -> None:
    clock = FakeClock()
    delay = QueueDelay(clock)
    assert delay.estimate() == 0.0
    delay.sent()
    clock.now += 0.03
    assert delay.estimate() == pytest.approx(0.03)  # on its way: at least its age
    delay.arrived()
    assert delay.last_s == pytest.approx(0.03) and delay.estimate() == pytest.approx(0.03)
    delay.sent()
    clock.now += 0.5  # a queue grows: seen before the probe gets through it
    assert delay.estimate() == pytest.approx(0.5)
    delay.arrived()
    delay.sent()
    clock.now += 0.001
    delay.arrived()
    assert delay.estimate() == pytest.approx(0.001)  # drained
    delay.sent()
    delay.forget()  # a failed probe: no guess
    clock.now += 10
    assert delay.estimate() == 0.0


def test_with_several_queues_the_delay_is_the_longest_of_their_last_waits() -> None:
    clock = FakeClock()
    delay = QueueDelay(clock)
    delay.track(2)  # two gRPC servers, probed in turn

    def probe(wait_s: float) -> None:
        delay.sent()
        clock.now += wait_s
        delay.arrived()

    probe(0.4)  # server 0: a long queue
    probe(0.002)  # server 1: none; server 0's wait is still the last one seen there
    assert delay.estimate() == pytest.approx(0.4)
    probe(0.003)  # server 0 again, drained
    assert delay.estimate() == pytest.approx(0.003)
    delay.forget()
    assert delay.estimate() == 0.0 and delay.last_s == 0.0


def test_admission_sheds_while_calls_wait_too_long_to_be_taken_up() -> None:
    clock = FakeClock()
    delay = QueueDelay(clock)
    draws = [0.5]
    limit = ConcurrencyLimit(10, delay, max_queue_delay_s=0.1, draw=lambda: draws[0])
    limit.enter()
    delay.sent()
    clock.now += 0.25
    for draw in (0.0, 0.5, 0.99):  # every call shed while the queue is over its limit
        draws[0] = draw
        with pytest.raises(ResourceExhausted, match="--max-queue-delay-ms") as shed:
            limit.enter()
        assert shed.value.retry_after_s == pytest.approx(0.25 * (0.5 + draw))  # the queue's delay, jittered
    assert limit.active == 1
    delay.arrived()
    delay.sent()
    delay.arrived()  # the next probe passed at once
    limit.enter()
    assert limit.active == 2
    off = ConcurrencyLimit(10, delay, max_queue_delay_s=0.0)  # --max-queue-delay-ms 0
    delay.sent()
    clock.now += 100
    off.enter()


def test_pie_raises_the_share_while_the_wait_is_over_its_target_and_lowers_it_below() -> None:
    """RFC 8033's update: in proportion to the delay over the target and to its growth, in small
    steps while the probability is small, at most 0.02 at a time from 0.1 up, decaying when empty."""
    target = 0.125
    assert pie_step(0.0, 0.1, 0.1, target) == 0.0  # under the target: nothing to shed
    p = 0.0
    history = []
    for _ in range(200):  # a standing queue of twice the target
        p = pie_step(p, 0.25, 0.25, target)
        history.append(p)
    assert all(b >= a for a, b in zip(history, history[1:], strict=False)) and p == 1.0
    assert 0 < history[0] < 1e-4  # the first step is tiny (auto-tuning), so a short excess sheds little
    grown = [b - a for a, b in zip(history, history[1:], strict=False) if a >= 0.1]
    assert grown and max(grown) <= 0.02 + 1e-12
    assert pie_step(0.5, 0.05, 0.06, target) < 0.5  # under the target and shrinking: shed less
    assert pie_step(0.5, 0.0, 0.0, target) < pie_step(0.5, 0.0, 0.0, 0.0) + 1e-12  # an empty queue decays
    assert pie_step(0.3, 0.0, 0.0, 0.0) == pytest.approx(0.3 * 0.98)
    assert pie_step(0.05, 2.0, 0.0, target) > pie_step(
        0.05, 2.0, 2.0, target
    )  # a growing queue pushes harder


def test_shedding_holds_a_share_of_calls_and_never_a_short_queue() -> None:
    clock = FakeClock()
    queue = QueueDelay(clock)
    draws = [0.5]
    shed = ShedProbability(0.125, queue, draw=lambda: draws[0])
    queue.sent()
    clock.now += 0.1  # a wait under half the target... (the probe still on its way: its age)
    for _ in range(20):
        clock.now += PROBE_INTERVAL_S
        queue.sent()  # ...held there
        clock.now += 0.05
        assert not shed.shed(queue.estimate())
    assert shed.p == 0.0
    for _ in range(400):  # a standing queue over the target: the share rises, one update per interval
        queue.sent()
        clock.now += 0.3
        if shed.update() > 0.5:
            break
    assert 0.5 < shed.p < 0.9
    draws[0] = shed.p - 0.01
    assert shed.shed(queue.estimate())  # a draw under the share: shed
    draws[0] = min(0.999, shed.p + 0.01)
    assert not shed.shed(queue.estimate())  # over it: admitted
    queue.arrived()
    queue.sent()
    queue.arrived()  # drained
    p = shed.p
    clock.now += 10 * PROBE_INTERVAL_S
    assert shed.update() < p  # below the target the share falls back


def test_admission_sheds_a_share_below_the_limit_with_a_retry_after() -> None:
    clock = FakeClock()
    delay = QueueDelay(clock)
    draws = [0.0]
    limit = ConcurrencyLimit(10, delay, max_queue_delay_s=0.5, draw=lambda: draws[0])
    assert limit.shedding is not None and limit.shedding.target_s == pytest.approx(0.25)
    limit.shedding.p = 0.5  # a share already reached
    delay.sent()
    clock.now += 0.3  # over the target, under the limit
    limit.shedding._updated_at = clock.now  # no update due
    with pytest.raises(ResourceExhausted, match="shedding 50% of new calls") as shed:
        limit.enter()
    assert shed.value.retry_after_s == pytest.approx(
        0.3 / (1 - 0.5) * 0.5
    )  # the wait x expected attempts, jittered
    draws[0] = 0.9
    limit.enter()  # a draw over the share: admitted
    assert limit.active == 1


def test_admission_from_the_configuration() -> None:
    queue = QueueDelay()
    assert concurrency_limit(ServingConfig(max_concurrent_rpcs=0).server, queue) is None  # the queue delay: off by default
    only_delay = concurrency_limit(ServingConfig(max_concurrent_rpcs=0, max_queue_delay_ms=250).server, queue)
    assert only_delay is not None and only_delay.limit == NO_LIMIT and only_delay.max_queue_delay_s == pytest.approx(0.25)
    assert concurrency_limit(ServingConfig(max_queue_delay_ms=250).server, None).queue is None  # no probe: the count alone


def test_the_json_limit_holds_the_largest_request_in_compact_json() -> None:
    """serving/http.py's body limit: the largest valid request, every string character escaped."""
    from google.protobuf import json_format

    from serving.proto_gen.apron.v1 import recommender_pb2 as pb
    from serving.validation import MAX_ITEM_ID_BYTES, MAX_PROTOTYPE_NAME_BYTES, MAX_USER_ID_BYTES

    config = ServingConfig(max_history=50, max_edits=8)
    edits = [pb.Edit(prototype="\x01" * MAX_PROTOTYPE_NAME_BYTES, scale=-1.2345678901234567e-308) for _ in range(8)]
    largest = pb.RecommendRequest(
        user_id="u" * MAX_USER_ID_BYTES, history=["\x01" * MAX_ITEM_ID_BYTES] * 50, k=-(2**31), edits=edits,
        include_heard=True, profile_view=3, profile_top_n=-(2**31),
    )  # fmt: skip
    compact = json.dumps(json_format.MessageToDict(largest), separators=(",", ":"))
    assert "\\u0001" in compact and len(compact) <= max_json_request_bytes(config.security)
