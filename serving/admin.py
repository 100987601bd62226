"""`apron.v1.ModelAdmin`: an operator's rollout, rollback and A/B split of model versions.

Service-role tokens only (PERMISSION_DENIED for a user token). Each call changes this gateway's
`ModelSet` (`serving/models.py`): load and warm beside the serving version, then swap; a version that
cannot be loaded leaves the routing as it was and answers FAILED_PRECONDITION with the reason.
"""

from __future__ import annotations

import asyncio

import grpc

from serving import auth, limits
from serving.config import SecurityConfig, ServerConfig
from serving.errors import FailedPrecondition, InvalidArgument
from serving.metrics import Metrics
from serving.models import ModelLoadError, ModelSet, Routing, available_versions
from serving.proto_gen.apron.v1 import admin_pb2 as pb
from serving.proto_gen.apron.v1 import admin_pb2_grpc as pb_grpc
from serving.servicer import rpc_boundary

ADMIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ModelAdmin"].full_name  # "apron.v1.ModelAdmin"


def require_service(method: str) -> None:
    principal = auth.current_principal()
    if principal is None or principal.role is not auth.Role.SERVICE:
        raise auth.AccessDenied(f"{method} changes what every user is served: it needs a token with the service role")


class ModelAdminServicer(pb_grpc.ModelAdminServicer):
    def __init__(
        self,
        server: ServerConfig,
        security: SecurityConfig,
        models: ModelSet,
        metrics: Metrics,
        concurrency: limits.ConcurrencyLimit | None,
    ):
        self.server, self.security = server, security  # rpc_boundary: deadline, access log, auth on/off
        self.models = models
        self.metrics = metrics
        self.concurrency = concurrency
        self.access_log_rate = server.access_log_rate

    async def _status(self) -> pb.ModelStatus:
        routing = self.models.routing
        serving = []
        if routing is not None:
            split = len(routing.versions) == 2
            serving.append(pb.ServedVersion(version=routing.primary, role="primary", share=1.0 - routing.share if split else 1.0))
            if split:
                serving.append(pb.ServedVersion(version=routing.candidate, role="candidate", share=routing.share))
        return pb.ModelStatus(
            serving=serving,
            pinned=bool(routing and routing.pinned),
            available_versions=await asyncio.to_thread(available_versions, self.models.repository),
            last_error=self.models.last_error,
            backend=self.models.backend,
        )

    # a load and warm-up take what the version needs (large catalogs, the torch backend's CUDA graph
    # capture: minutes), not the request path's --request-timeout-s: the caller's deadline bounds it
    # (`ApronClient.load_model`: 120 s or more)
    @rpc_boundary("LoadModel", ADMIN_SERVICE_NAME, server_limit=False)
    async def LoadModel(self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatus:
        require_service("LoadModel")
        available = await asyncio.to_thread(available_versions, self.models.repository)
        wanted = [v for v in (request.version, request.candidate_version) if v]
        missing = [v for v in wanted if v not in available]
        if any(v < 0 for v in (request.version, request.candidate_version)) or missing:
            raise InvalidArgument(
                f"version(s) {missing or wanted} not in the repository {self.models.repository}, which holds {available}; "
                "export the version first, or pass 0 for the newest"
            )
        if not available:
            raise FailedPrecondition(f"the repository {self.models.repository} holds no model version")
        try:
            routing = Routing(
                request.version or available[-1], request.candidate_version, request.candidate_share, pinned=request.pin
            )
        except ValueError as error:
            raise InvalidArgument(str(error)) from error
        try:
            await self.models.apply(routing)
        except ModelLoadError as error:
            raise FailedPrecondition(f"the rollout failed and the gateway still serves what it did: {error}") from error
        return await self._status()

    @rpc_boundary("GetModelStatus", ADMIN_SERVICE_NAME)
    async def GetModelStatus(self, request: pb.GetModelStatusRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatus:
        require_service("GetModelStatus")
        return await self._status()
