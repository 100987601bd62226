"""Helper of the fault tests: a status-recording call (polling: tests/polling.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc


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
