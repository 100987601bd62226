"""Errors the gateway's logic raises, each with the gRPC status code it becomes.

Only the servicer's boundary (`serving/servicer.py`) turns them into statuses; everything below it
raises these plain exceptions, so pure functions stay testable without gRPC.
"""

from __future__ import annotations

import grpc


class ApronError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ApronError):
    """The request itself is wrong (a field's value, size or name)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ApronError):
    """Nothing is known about the user (no history sent, no cached profile)."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ApronError):
    """The request is fine but the stored state does not allow it (e.g. stored edits remove every
    prototype of the profile)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ApronError):
    """A write lost a race with other writes to the same state, again and again; nothing was
    stored and the client may retry."""

    code = grpc.StatusCode.ABORTED


class Unavailable(ApronError):
    """A dependency (Redis, Triton) cannot be reached; the client may retry."""

    code = grpc.StatusCode.UNAVAILABLE


RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata on RESOURCE_EXHAUSTED: when a retry will be accepted


class ResourceExhausted(ApronError):
    """Over a limit (rate, concurrency, queue); the client may retry after `retry_after_s`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s
