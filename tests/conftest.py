"""What every test shares: grpc core held initialised for the whole run."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest


@pytest.fixture(scope="session", autouse=True)
def grpc_core_held() -> Iterator[None]:
    """grpc core stays initialised from the first test to the last.

    Every grpc object takes a reference to core (`grpc_init`) and gives it back when it goes
    (`grpc_shutdown`); the last one to go shuts core down, and the next object starts it again.
    A gateway or a client holds its channel or server for its whole life, so that never happens
    there, but this one process runs hundreds of tests, each with its own event loop and its own
    channels: without this, core was shut down and started again between tests and inside them
    (every health poll of `loadtests.gateway_process.wait_serving` is a new channel), hundreds of
    times a run, while threads of the last incarnation could still be finishing. The pytest
    process died of a segmentation fault once in CI (2026-12-05), in a thread of no Python code,
    in the test that starts two gateways that way; no gateway or client cycles core like that, so
    the tests should not either. A channel that is never used never connects: this one only
    holds the reference."""
    holder = grpc.insecure_channel("127.0.0.1:9")  # the discard port: nothing is ever sent
    try:
        yield
    finally:
        holder.close()
