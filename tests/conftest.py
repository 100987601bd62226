"""What every test shares: grpc core held initialised for the whole run."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest


@pytest.fixture(scope="session", autouse=True)
def grpc_core_held() -> Iterator[None]:
    """grpc core, and its default EventEngine, live from the first test to the last.

    Every grpc object takes a reference to core (`grpc_init`) and gives it back when it goes; the
    default EventEngine (a thread pool, a poller and timer threads) is held only by the channels,
    subchannels and endpoints that use it. So whenever the last grpc object of this process went,
    core was shut down and the engine destroyed, and the next object built both again: hundreds of
    times a run here (each test has its own event loop and channels, and each health poll of
    `loadtests.gateway_process.wait_serving` is a new channel), while the old engine's threads could
    still be finishing. A gateway or a client keeps its server or channel for its whole life, so it
    never does that. The pytest process died once in CI (2026-12-05) of a segmentation fault in a
    thread running no Python, in a test that starts two gateways that way. This channel is never
    used, so it never connects: it only holds core and the engine."""
    holder = grpc.insecure_channel("127.0.0.1:9")  # the discard port: nothing is ever sent
    try:
        yield
    finally:
        holder.close()
