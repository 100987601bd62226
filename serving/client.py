"""A small synchronous Python client of `apron.v1.Recommender`, for scripts and people trying it.

    with ApronClient("127.0.0.1:50051", token=...) as client:
        client.recommend("alice", history=["track-0001", "track-0002"], k=10)
        client.edit("alice", scale={"jazz": 0.0})
        client.recommend("alice", k=10)      # the stored edit applies
        client.edit("alice", reset=True)

Errors arrive as `grpc.RpcError` (`.code()`, `.details()`), exactly as the server sent them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc

from serving import auth
from serving.proto_gen.apron.v1 import admin_pb2 as admin_pb
from serving.proto_gen.apron.v1 import admin_pb2_grpc as admin_grpc
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
# RecommendRequest.profile_view by the names `apron client recommend --profile-view` takes
PROFILE_VIEWS = {"all": pb.PROFILE_VIEW_ALL, "top": pb.PROFILE_VIEW_TOP, "none": pb.PROFILE_VIEW_NONE}
# How clients call the gateway (gRPC service config): spread over every address of the target
# (e.g. "ipv4:10.0.0.1:50051,10.0.0.2:50051" or a DNS name with several records), skip replicas whose
# health service says NOT_SERVING (a draining or Redis-less gateway), and retry UNAVAILABLE with
# backoff: every RPC is idempotent (an edit sets values; storing it twice changes nothing).
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [
        {
            "name": [{"service": "apron.v1.Recommender"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def channel_options() -> list[tuple[str, object]]:
    """grpc channel options carrying SERVICE_CONFIG (for any client of the gateway)."""
    return [("grpc.service_config", json.dumps(SERVICE_CONFIG)), ("grpc.enable_retries", 1)]


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
        options = channel_options()
        self.channel = (
            grpc.secure_channel(target, credentials, options) if credentials else grpc.insecure_channel(target, options)
        )
        self.stub = pb_grpc.RecommenderStub(self.channel)
        self.admin = admin_grpc.ModelAdminStub(self.channel)
        self.metadata = auth.bearer_metadata(token) if token else ()
        self.timeout_s = timeout_s

    def _call(self, method: str, request: object) -> object:
        return getattr(self.stub, method)(request, timeout=self.timeout_s, metadata=self.metadata)

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
