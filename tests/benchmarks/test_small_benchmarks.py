"""benchmarks/tracing_cost.py, benchmarks/overlap_cost.py, benchmarks/cli_startup.py,
benchmarks/reply_encoding.py and benchmarks/redis_fsync.py run and report (how fast is never asserted)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from redis.asyncio import Redis

from benchmarks import cli_startup, overlap_cost, redis_fsync, reply_encoding, tracing_cost
from serving import tracing
from serving.cache import ProfileCache, ProfileRecord, RedisStore, StoredProfile


def test_tracing_cost_reports_off_and_on(capsys: pytest.CaptureFixture[str]) -> None:
    tracing_cost.main(["--calls", "20", "--blocks", "2", "--hook-calls", "50"])
    out = capsys.readouterr().out
    assert re.search(r"hooks per cached Recommend: off [\d.]+ µs, on [\d.]+ µs", out)
    assert re.search(r"gateway p50: off [\d.]+ ms, on [\d.]+ ms", out) and "CPU per call" in out
    assert not tracing.enabled()  # left off


def test_cli_startup_reports_a_median(capsys: pytest.CaptureFixture[str]) -> None:
    cli_startup.main(["--runs", "1"])
    assert re.search(r"apron --help \(.+\): median [\d.]+ s", capsys.readouterr().out)


def test_reply_encoding_compares_two_ways_that_answer_the_same_message(capsys: pytest.CaptureFixture[str]) -> None:
    reply_encoding.main(["--prototypes", "7", "--calls", "20", "--rounds", "2"])
    out = capsys.readouterr().out
    assert re.search(r"profile copied into each response: [\d.]+ µs per response", out)
    assert re.search(r"profile sent as kept bytes \(Reply\): [\d.]+ µs per response", out)
    assert re.search(r"difference: -?[\d.]+ µs per response, K = 7 prototypes, k = 10 items", out)
    with pytest.raises(SystemExit):
        reply_encoding.main(["--rounds", "0"])


def test_redis_fsync_measures_each_policy_on_a_server_running_it(capsys: pytest.CaptureFixture[str]) -> None:
    redis_fsync.main(["--calls", "5", "--rounds", "2"])
    out = capsys.readouterr().out
    for policy in ("always \\(the gateway's\\)", "everysec"):
        assert re.search(rf"^\| {policy} \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$", out, re.M), policy
    assert re.search(r"fsync of a small write on the same disk: p50 [\d.]+ ms, p99 [\d.]+ ms", out)


def test_overlap_cost_reports_both_orders(capsys: pytest.CaptureFixture[str]) -> None:
    overlap_cost.main(["--calls", "20", "--blocks", "2"])
    out = capsys.readouterr().out
    assert re.search(r"cached Recommend p50: read, then score [\d.]+ ms, overlapped [\d.]+ ms", out)
    assert re.search(r"overlapped lower in \d of 2 block pairs", out) and "CPU per call" in out


def test_the_sequential_state_offers_no_kept_copy_until_switched_off() -> None:
    """What the benchmark's "read, then score" state changes: the cache's kept copy is not offered to
    score ahead, and it is again once the state is switched off."""
    cache = ProfileCache(RedisStore(Redis(), ttl_s=600), scorer=None, model_version=1, shape=(1, 2))  # type: ignore[arg-type]
    record = ProfileRecord(np.ones((1, 2), np.float32), 2, "digest", np.array([1, 2], np.int64))
    cache._local["user"] = kept = StoredProfile(b"v1", record, {})
    server = SimpleNamespace(models=SimpleNamespace(primary=SimpleNamespace(profiles=cache)))
    assert cache.held("user", None) is kept and cache.held("user", "digest") is kept and cache.held("user", "other") is None
    switch_off = overlap_cost.sequential(server)
    assert cache.held("user", None) is None
    switch_off()
    assert cache.held("user", None) is kept


@pytest.mark.parametrize("main", [overlap_cost.main, tracing_cost.main])
def test_no_blocks_is_refused_with_a_message(main, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        main(["--blocks", "0"])
    assert "--calls and --blocks must be at least 1" in capsys.readouterr().err


def test_time_alternating_runs_between_untimed_before_every_measured_call() -> None:
    """`between` (a cache evictor) precedes each call, warm-up excluded, and is not in its time."""
    from benchmarks.timing import time_alternating

    events: list[str] = []
    timings = time_alternating(
        {"a": lambda: events.append("a"), "b": lambda: events.append("b")},
        batch=1, min_seconds=0.0, min_calls=3, warmup=1, between=lambda: events.append("-"),
    )  # fmt: skip
    assert events == ["a", "b"] + ["-", "a", "-", "b"] * 3
    assert [len(t.latencies_s) for t in timings.values()] == [3, 3]
