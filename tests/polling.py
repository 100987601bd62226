"""Waiting on conditions instead of sleeping: poll a check until it holds, fail after a deadline.

The deadlines are generous on purpose (the suite runs on a loaded 2-core machine); a poll ends as
soon as its check holds, so a generous deadline costs nothing when things work."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

DEADLINE_S = 60.0
INTERVAL_S = 0.05


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = DEADLINE_S, interval: float = INTERVAL_S
) -> float:
    """Poll `check` (sync or async) until it returns True; the seconds it took. AssertionError
    naming `what` after `timeout`."""
    start = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(interval)


def wait_until(check: Callable[[], bool], what: str, timeout: float = DEADLINE_S, interval: float = INTERVAL_S) -> float:
    """`eventually` for synchronous code."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)
    return time.monotonic() - start
