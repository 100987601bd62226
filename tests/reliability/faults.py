"""Helpers of the fault tests: polling instead of sleeping, and a status-recording call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

# Generous on purpose: the suite runs on a loaded 2-core machine. Polls end as soon as they succeed.
RECOVERY_TIMEOUT_S = 60.0


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = RECOVERY_TIMEOUT_S, what: str = "") -> float:
    """Poll `check` until it returns True; the seconds it took. Fails with `what` after `timeout`."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


@dataclass
class Outcome:
    code: grpc.StatusCode
    seconds: float
    response: Any = None
    details: str = ""


async def call(method: Any, request: Any, timeout: float = 10.0, **kwargs: Any) -> Outcome:
    """The call's status, duration and response, whatever happened (never raises for a status)."""
    start = time.monotonic()
    try:
        response = await method(request, timeout=timeout, **kwargs)
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), time.monotonic() - start, None, error.details() or "")
    return Outcome(grpc.StatusCode.OK, time.monotonic() - start, response)
