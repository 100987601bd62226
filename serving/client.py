"""A small synchronous Python client of `apron.v1.Recommender`, for scripts and people trying it.

    with ApronClient("127.0.0.1:50051", token=...) as client:
        client.recommend("alice", history=["track-0001", "track-0002"], k=10)
        client.edit("alice", scale={"jazz": 0.0})
        client.recommend("alice", k=10)      # the stored edit applies
        client.edit("alice", reset=True)

Errors arrive as `grpc.RpcError` (`.code()`, `.details()`), exactly as the server sent them, after
the retries that are safe (`retry_delay`): UNAVAILABLE (a replica draining or starting, Triton or
Redis down for a moment), ABORTED (an EditProfile that lost to other writes to the same user again
and again, storing nothing), RESOURCE_EXHAUSTED only when the server says when to come back
(trailer `retry-after-ms`: a call shed by admission, a rate limit or a full batch queue did no
work), and CANCELLED only when the server says it cut the call while draining (trailer
`apron-draining`, serving/drain.py); at most RETRY_ATTEMPTS attempts within the one
`timeout_s`, with exponential backoff and jitter, or after the server's `retry-after-ms` when it
sends one. Once a server has answered the client, a retry waits, within `timeout_s`, for a
connection (a replica replaced, or restarting, on the same address): if none comes, the call ends
DEADLINE_EXCEEDED. Retrying is safe for every RPC: Recommend, GetProfile and ListPrototypes read,
and an EditProfile *sets* each named prototype's scale or share (and `reset` deletes first), so
storing the same request twice leaves the same stored edits as storing it once; an edit is never applied
twice. The one thing a retry can do is what any late write does: land after another client's edit
of the same prototype (last writer wins).

Works against a degraded gateway: while Redis is down the gateway stays ready (serving/health.py)
and Recommend with a history answers; EditProfile / GetProfile answer UNAVAILABLE once the retries
are spent.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

from serving import auth
from serving.drain import DRAINING_KEY
from serving.errors import RETRY_AFTER_KEY
from serving.proto_gen.apron.v1 import admin_pb2 as admin_pb
from serving.proto_gen.apron.v1 import admin_pb2_grpc as admin_grpc
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
# RecommendRequest.profile_view by the names `apron client recommend --profile-view` takes
PROFILE_VIEWS = {"all": pb.PROFILE_VIEW_ALL, "top": pb.PROFILE_VIEW_TOP, "none": pb.PROFILE_VIEW_NONE}
# Retries (ApronClient's own loop, and grpc's for other clients through SERVICE_CONFIG)
RETRY_ATTEMPTS = 5  # attempts in all, the first included
INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
BACKOFF_MULTIPLIER = 2.0
# How clients call the gateway (gRPC service config): spread over every address of the target
# (e.g. "ipv4:10.0.0.1:50051,10.0.0.2:50051" or a DNS name with several records), skip replicas whose
# overall health ("": readiness, serving/health.py) says NOT_SERVING (draining, or its inference
# backend down; not Redis: a Redis-less gateway still answers Recommend), and retry UNAVAILABLE and
# ABORTED (nothing was stored) with backoff: every RPC is idempotent (an edit sets values; storing it
# twice changes nothing).
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [
        {
            "name": [{"service": "apron.v1.Recommender"}],
            "retryPolicy": {
                "maxAttempts": RETRY_ATTEMPTS,
                "initialBackoff": f"{INITIAL_BACKOFF_S}s",
                "maxBackoff": f"{MAX_BACKOFF_S}s",
                "backoffMultiplier": BACKOFF_MULTIPLIER,
                "retryableStatusCodes": ["UNAVAILABLE", "ABORTED"],
            },
        }
    ],
}


def channel_options(retries: bool = True) -> list[tuple[str, object]]:
    """grpc channel options carrying SERVICE_CONFIG (for any client of the gateway); `retries`
    False: without its retry policy, for a client that retries itself (ApronClient: grpc's policy
    cannot honour `retry-after-ms` nor tell a draining server's CANCELLED from another)."""
    config = SERVICE_CONFIG if retries else {**SERVICE_CONFIG, "methodConfig": []}
    return [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]


def retry_delay(code: grpc.StatusCode, trailers: Mapping[str, str], attempt: int, jitter: float) -> float | None:
    """Seconds to wait before retrying a call whose attempt number `attempt` (1: the first) failed
    with `code` and `trailers`, or None: not safe to retry, or the attempts are spent. `jitter` in
    [0, 1) scales the exponential backoff (full jitter: replicas' clients do not retry in step);
    the server's `retry-after-ms` replaces it when present, and a RESOURCE_EXHAUSTED is retried only
    with it. Pure."""
    if attempt >= RETRY_ATTEMPTS:
        return None
    try:
        retry_after_ms = float(trailers.get(RETRY_AFTER_KEY, ""))
    except ValueError:
        retry_after_ms = -1.0
    if code is grpc.StatusCode.CANCELLED:
        if trailers.get(DRAINING_KEY) != "1":
            return None  # cancelled by the caller, or by grpc with no word from the server: maybe done
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        # shed (admission, a rate limit, a full batch queue) before any work, the server says when
        # to come back; without its word (a message over the size limit) it would fail again
        return retry_after_ms / 1000.0 if retry_after_ms >= 0 else None
    elif code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED):
        return None
    if retry_after_ms >= 0:  # (NaN compares False)
        return retry_after_ms / 1000.0
    return jitter * min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * BACKOFF_MULTIPLIER ** (attempt - 1))


def make_edits(scale: Mapping[str, float] | None = None, weight: Mapping[str, float] | None = None) -> list[pb.Edit]:
    """{"jazz": 0.0} scales and {"rock": 0.3} shares -> `Edit` messages."""
    edits = [pb.Edit(prototype=tag, scale=value) for tag, value in (scale or {}).items()]
    edits += [pb.Edit(prototype=tag, weight=value) for tag, value in (weight or {}).items()]
    return edits


def development_token(secret_path: str | Path | None = None, subject: str = "apron-client") -> str | None:
    """A short-lived service token signed with the local development secret, when that secret
    exists (it is created by `apron serve` with default auth settings); None otherwise."""
    path = Path(secret_path or auth.DEFAULT_DEV_SECRET)
    if not path.is_file():
        return None
    return auth.mint_token(auth.read_secret_file(path).key, subject, auth.Role.SERVICE, ttl_s=600.0)


class ApronClient:
    """`credentials` (e.g. `serving.tls.channel_credentials(ca)`) for TLS; plaintext without."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        token: str | None = None,
        timeout_s: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        options = channel_options(retries=False)  # retried by `_call`
        self.channel = (
            grpc.secure_channel(target, credentials, options) if credentials else grpc.insecure_channel(target, options)
        )
        self.stub = pb_grpc.RecommenderStub(self.channel)
        self.admin = admin_grpc.ModelAdminStub(self.channel)
        self.metadata = auth.bearer_metadata(token) if token else ()
        self.timeout_s = timeout_s  # for a call and its retries together
        self.retries = 0  # retried attempts, all calls together
        # a server has answered this client: its retries wait for a connection (`_call`); one that
        # never reached a server fails once its attempts are spent, so a wrong target says so at once
        self.answered = False

    def _call(self, method: str, request: object) -> Any:
        """`method`, retried as `retry_delay` says within `timeout_s` in all."""
        call: Callable[..., Any] = getattr(self.stub, method)
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            # Once a server has answered this client, a retry waits for a connection (within the
            # deadline) instead of failing at once: after a failed connect grpc fails calls while it
            # backs off reconnecting (about 1 s), longer than the attempts take, so they would all be
            # spent while the server's replacement comes up. A replica replaced on the same port
            # (SO_REUSEPORT) can refuse the first reconnect, too: the kernel handed the connection to
            # the old one's listening socket as it closed.
            wait = attempt > 1 and self.answered
            try:
                response = call(request, timeout=max(0.0, deadline - time.monotonic()), metadata=self.metadata, wait_for_ready=wait)
            except grpc.RpcError as error:
                # any status but UNAVAILABLE came from a server (UNAVAILABLE may be grpc's "no connection")
                self.answered = self.answered or error.code() is not grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                trailers = {key: value for key, value in (error.trailing_metadata() or ()) if isinstance(value, str)}  # type: ignore[attr-defined]
                delay = retry_delay(error.code(), trailers, attempt, random.random())  # type: ignore[attr-defined]
                if delay is None or time.monotonic() + delay >= deadline:
                    raise
                self.retries += 1
                time.sleep(delay)
            else:
                self.answered = True
                return response

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        history: Iterable[str] = (),
        edits: Iterable[pb.Edit] = (),
        include_heard: bool = False,
        profile_view: str = "all",
        profile_top_n: int = 0,
    ) -> pb.RecommendResponse:
        """`profile_view`: "all" (every prototype), "top" (the `profile_top_n` largest shares) or "none"."""
        request = pb.RecommendRequest(
            user_id=user_id, k=k, history=list(history), edits=list(edits), include_heard=include_heard,
            profile_view=PROFILE_VIEWS[profile_view], profile_top_n=profile_top_n,
        )  # fmt: skip
        return self._call("Recommend", request)

    def edit(
        self,
        user_id: str,
        scale: Mapping[str, float] | None = None,
        weight: Mapping[str, float] | None = None,
        reset: bool = False,
    ) -> pb.EditProfileResponse:
        request = pb.EditProfileRequest(user_id=user_id, edits=make_edits(scale, weight), reset=reset)
        return self._call("EditProfile", request)

    def profile(self, user_id: str) -> pb.GetProfileResponse:
        return self._call("GetProfile", pb.GetProfileRequest(user_id=user_id))

    def prototypes(self) -> pb.ListPrototypesResponse:
        return self._call("ListPrototypes", pb.ListPrototypesRequest())

    def load_model(self, version: int = 0, pin: bool = False, candidate: int = 0, share: float = 0.0) -> admin_pb.ModelStatus:
        """Roll out `version` (0: the newest), or roll back with `pin`; `candidate` answers `share` of the users."""
        request = admin_pb.LoadModelRequest(version=version, pin=pin, candidate_version=candidate, candidate_share=share)
        return self.admin.LoadModel(request, timeout=max(self.timeout_s, 120.0), metadata=self.metadata)

    def model_status(self) -> admin_pb.ModelStatus:
        return self.admin.GetModelStatus(admin_pb.GetModelStatusRequest(), timeout=self.timeout_s, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ApronClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
