"""`apron.v1.Recommender`: thin handlers over validation -> profile cache -> edits -> scorer -> top-k.

Every handler runs inside `rpc_boundary`, the only place where exceptions become gRPC status codes,
RPC metrics are recorded, deadlines are enforced and the access log is written. It also checks the
caller first (the auth interceptor only records what it found) and counts every rejection (bad
token, another user's profile, a limit) in `apron_rpc_rejections_total`; the log line carries the
reason, never the token.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np
import redis.exceptions
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from serving import auth, limits, stages, tracing
from serving.cache import ProfileRecord, RedisStore, StoredProfile, StoreSkipped, UserLocks, VersionChanged
from serving.config import SecurityConfig, ServerConfig
from serving.edits import (
    EditError,
    EditSpec,
    apply_edits,
    check_applicable,
    check_set_weights,
    mean_shares,
    merge_edits,
    shares,
)
from serving.errors import (
    RETRY_AFTER_KEY,
    Aborted,
    ApronError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from serving.metrics import Metrics
from serving.models import LoadedModel, ModelSet, current_version
from serving.profile_encoding import ALL_PROTOTYPES, EncodedProfile, ProfileSelection, Reply, serialize
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from serving.search import validate_search
from serving.topk import select_top_k
from serving.validation import (
    validate_edits,
    validate_history,
    validate_k,
    validate_profile_view,
    validate_user_id,
)

log = logging.getLogger("apron.gateway")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]
T = TypeVar("T")
# statuses that refuse a caller rather than fail a request: counted apart, an attack or overload shows
REJECTIONS = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# EditProfile / GetProfile after a Redis error: how long to wait for Redis to answer again before
# the one retry (the private redis-server is restarted within this; the call's deadline still applies).
RECONNECT_WAIT_S = 2.0
# EditProfile: how many times its conditional write may lose to other writes to the same user (each
# time checked again against what won) before the call is ABORTED; each loss means another write landed
EDIT_ATTEMPTS = 8


class RawRequest:
    """A request body as grpc received it, not parsed yet (`add_service`'s deserializer): the
    boundary parses it once the caller and the load allow, so a refused call costs no parse, and an
    undecodable body becomes INVALID_ARGUMENT there, logged and counted like any client mistake
    (grpc's own deserializer failing is UNKNOWN "Unexpected DecodeError" with a traceback)."""

    __slots__ = ("data", "message_type")

    def __init__(self, message_type: type[Message], data: bytes):
        self.message_type = message_type
        self.data = data

    def parse(self) -> Message:
        try:
            return self.message_type.FromString(self.data)
        except DecodeError as error:
            name = self.message_type.DESCRIPTOR.full_name
            raise InvalidArgument(
                f"the request body ({len(self.data)} bytes) is not a valid {name}: a truncated or corrupt field, "
                f"or a string field that is not UTF-8 ({error}); send the message serialized from proto/apron/v1/"
            ) from error


def add_service(
    server: grpc.aio.Server, servicer: object, service: ServiceDescriptor
) -> dict[str, grpc.RpcMethodHandler]:
    """Register `servicer`'s methods of `service` (unary, each behind `rpc_boundary`) as the
    generated `add_*Servicer_to_server` does, but with requests handed over unparsed (`RawRequest`).
    Returns the handlers registered with grpc core by fully qualified method, for the deeper intake
    (serving/intake.py) and the queue probe (serving/queue_probe.py), which waits in their queues."""
    handlers = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            raise ValueError(f"{service.full_name}.{method.name} streams; the boundary serves unary methods only")
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=functools.partial(RawRequest, GetMessageClass(method.input_type)),
            response_serializer=serialize,  # a message, or a Reply with its profile already encoded
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    # registered with grpc core one by one: a pending-call queue per method
    server.add_registered_method_handlers(service.full_name, handlers)
    return {f"/{service.full_name}/{name}": handler for name, handler in handlers.items()}


def rpc_boundary(method: str, service: str = tracing.SERVICE, server_limit: bool = True) -> Callable[[Handler], Handler]:
    """The boundary every unary RPC of `service` (its full name: spans name it) goes through: auth's
    verdict, admission, the deadline, the status a failure answers, and the call's metrics, log line
    and trace. `server_limit=False`: only the caller's deadline bounds the call, not the server's
    --request-timeout-s (a model load takes as long as its version needs)."""
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(self: RecommenderServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            version = current_version.set("none")  # the version that answers, once a handler picked it
            code, message = grpc.StatusCode.OK, ""
            series = self.metrics.for_method(method)
            series.in_flight.inc()
            # the interceptor's clock (auth, then gRPC's dispatch up to here); with auth off, one from here
            clock, own_clock = stages.current(), None
            if clock is None:
                clock, own_clock = stages.begin(start)
            else:
                clock.mark(stages.DISPATCH, start)
            # with auth off every call runs as the anonymous service (explicit); with auth on, the
            # interceptor's verdict: its AuthError is raised here (UNAUTHENTICATED)
            as_anonymous = None if self.security.auth else auth.assume(auth.ANONYMOUS)
            admitted = False
            try:
                # refuse before any work: the caller first (a refused call's body is never read), then
                # load (the request is parsed only once admitted)
                if auth.current_principal() is None:  # fail closed: auth on, but no interceptor ran
                    raise auth.AuthError("no verified caller: the gateway checked no token for this call")
                if self.concurrency is not None:  # load shedding: refuse at once rather than queue
                    self.concurrency.enter()
                    admitted = True
                # the client's deadline when it set one (grpc reports none as None or as ~forever),
                # never more than the server's own limit
                remaining = context.time_remaining()
                limit = self.server.request_timeout_s if server_limit else remaining
                async with asyncio.timeout(limit if remaining is None else min(remaining, limit)) as deadline:  # type: ignore[type-var]
                    clock.mark(stages.ADMISSION)
                    if isinstance(request, RawRequest):
                        request = request.parse()
                        clock.mark(stages.DISPATCH)  # reading (grpc) and parsing (here) the request
                    response = await handler(self, request, context)
                if deadline.expired():  # a dependency swallowed the cancellation: the answer is late anyway
                    raise TimeoutError
                clock.mark(stages.RESPONSE)
                return response
            except ResourceExhausted as error:
                code, message = error.code, str(error)
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(math.ceil(error.retry_after_s * 1000))),))
            except ApronError as error:  # AuthError and AccessDenied included
                code, message = error.code, str(error)
            except TimeoutError:
                code, message = grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} did not finish before the deadline"
            except REDIS_ERRORS as error:
                code, message = grpc.StatusCode.UNAVAILABLE, f"the profile store (Redis) is unavailable: {error}"
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the client went away (or the server is stopping)
                raise
            except Exception:
                log.exception("unhandled error in %s", method, extra={"fields": {"method": method}})
                code, message = grpc.StatusCode.INTERNAL, "internal error (logged by the server)"
            finally:
                if as_anonymous is not None:
                    auth.reset(as_anonymous)
                if code is not grpc.StatusCode.OK:
                    clock.mark(stages.ERROR)
                seconds = clock.last - start
                if admitted:
                    self.concurrency.leave(seconds)  # type: ignore[union-attr]
                series.in_flight.dec()
                served_by = current_version.get()
                series.latency(code, served_by).observe(seconds)
                current_version.reset(version)
                if code in REJECTIONS:
                    series.rejections(code).inc()
                self.metrics.worker_rpcs.inc()
                # tracing (serving/tracing.py): the call's span, its stages' spans added at its end
                trace = tracing.start_call(method, context.invocation_metadata(), code.name, served_by, service) if tracing.enabled() else None
                extra: dict[str, Any] | None = None
                if code is not grpc.StatusCode.OK:  # every failure; successes sampled (--access-log-rate)
                    extra = {"error": message}
                elif self.access_log_rate and random.random() < self.access_log_rate:
                    extra = {"sampled": self.access_log_rate}
                if extra is not None:
                    fields = {"method": method, "code": code.name, "ms": round(seconds * 1000, 3), **extra}
                    if (trace_id := tracing.trace_id(trace, context.invocation_metadata())) is not None:
                        fields["trace_id"] = trace_id
                    log.info("rpc", extra={"fields": fields})
                clock.mark(stages.RECORD)
                if trace is not None:
                    tracing.end_call(trace, clock, code.name, message)
                self.metrics.observe_call(method, clock)
                if own_clock is not None:
                    stages.end(own_clock)
            await context.abort(code, message)

        return wrapped

    return decorate


def _read_only(array: np.ndarray) -> np.ndarray:
    """A memoized array, shared by every call that asks for it: nobody may change it."""
    array.setflags(write=False)
    return array


def edit_to_proto(edit: EditSpec) -> pb.Edit:
    return pb.Edit(prototype=edit.prototype, **{edit.kind: edit.value})


def edits_from_proto(edits: Any) -> list[tuple[str, str | None, float]]:
    """Repeated `Edit` -> (prototype, "scale" | "weight" | None, value) for validation."""
    triples = []
    for edit in edits:
        kind = edit.WhichOneof("change")
        triples.append((edit.prototype, kind, getattr(edit, kind) if kind else math.nan))
    return triples


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """Each call takes the model version that answers its user once (`models.use`) and keeps it to
    its end: a rollout meanwhile never mixes two versions in one answer."""

    def __init__(
        self,
        server: ServerConfig,
        security: SecurityConfig,
        models: ModelSet,
        store: RedisStore,
        metrics: Metrics,
        queue: limits.QueueDelay | None = None,
    ):
        self.server = server  # rpc_boundary: the deadline limit, the access-log rate
        self.security = security  # auth on or off; request size limits
        self.models = models
        self.store = store
        self.metrics = metrics
        self.access_log_rate = server.access_log_rate
        self.edit_limiter = limits.edit_limiter(security)  # reliability: per-user EditProfile rate (None: off)
        self.recommend_limiter = limits.recommend_limiter(security)  # per-user Recommend rate (None: off)
        self.concurrency = limits.concurrency_limit(server, queue)  # calls at once, queue delay (None: no limit)
        self.edit_locks = UserLocks()  # one EditProfile of a user at a time in this process

    # ------------------------------------------------------------------------------ helpers

    @classmethod
    def _edited(
        cls, served: LoadedModel, record: ProfileRecord, stored: Mapping[str, EditSpec], one_off: Mapping[str, EditSpec]
    ) -> np.ndarray:
        """(H, K) shares after the edits; a stored set that alone empties the profile is the
        server's state (FAILED_PRECONDITION), a one-off edit that does it is the request's fault.
        Without one-off edits: computed once per kept profile copy and stored edits (`ProfileRecord.memo`)."""
        if not one_off:
            key = ("edited", served.model.version, frozenset(stored.values()))
            return record.memoized(key, lambda: _read_only(cls._apply_edits(served, record, stored, one_off)))
        return cls._apply_edits(served, record, stored, one_off)

    @staticmethod
    def _apply_edits(
        served: LoadedModel, record: ProfileRecord, stored: Mapping[str, EditSpec], one_off: Mapping[str, EditSpec]
    ) -> np.ndarray:
        tag_index = served.model.tag_index
        try:
            return apply_edits(record.weights, merge_edits(stored, one_off), tag_index)
        except EditError as error:
            if one_off:
                try:
                    apply_edits(record.weights, stored, tag_index)
                except EditError:
                    pass
                else:
                    raise InvalidArgument(f"edits: {error}") from error
            raise FailedPrecondition(
                f"the stored edits cannot apply to this profile ({error}); change them or reset with EditProfile"
            ) from error

    @staticmethod
    def _profile(
        served: LoadedModel,
        record: ProfileRecord,
        edited: np.ndarray,
        edits: Mapping[str, EditSpec],
        view: ProfileSelection = ALL_PROTOTYPES,
    ) -> EncodedProfile | None:
        """The response's profile; `edited` follows from `record` and `edits`, so it is built and
        encoded once per kept profile copy, edits and view (`ProfileRecord.memo`: shared, never
        changed; a `Reply` sends its bytes)."""
        if not view.shown:
            return None

        def build() -> EncodedProfile:
            weight = mean_shares(edited)  # (K,)
            base = mean_shares(shares(record.weights)) if edits else weight  # unedited: the same shares
            shown = {tag: edit_to_proto(edit) for tag, edit in edits.items() if tag in served.model.tag_index}
            return EncodedProfile(served.encoder.encode(weight, base, record.history_length, shown, view.top_n))

        return record.memoized(("profile", served.model.version, frozenset(edits.values()), view.top_n), build)

    @staticmethod
    def _unapplied(served: LoadedModel, stored: Mapping[str, EditSpec]) -> list[str]:
        """Stored edits of prototypes this version lacks (kept in Redis, reported, not applied)."""
        return sorted(tag for tag in stored if tag not in served.model.tag_index)

    @staticmethod
    def _stored_list(served: LoadedModel, stored: Mapping[str, EditSpec]) -> list[pb.Edit]:
        """Stored edits in prototype order; edits of tags this model lacks at the end."""
        order = served.model.tag_index
        ranked = sorted(stored.values(), key=lambda e: (order.get(e.prototype, len(order)), e.prototype))
        return [edit_to_proto(e) for e in ranked]

    async def _after_reconnect(self, operation: Callable[[], Awaitable[T]]) -> T:
        """`operation`, retried once when its connection to Redis broke and Redis answers again
        within RECONNECT_WAIT_S (a restarted or failed-over Redis). Not when Redis was already known
        down (skipped: UNAVAILABLE at once) or did not answer in time (its time is spent). Only for
        idempotent operations: a stored edit sets values, so storing it twice leaves the same state."""
        try:
            return await operation()
        except REDIS_ERRORS as error:
            if isinstance(error, StoreSkipped | redis.exceptions.TimeoutError):
                raise
            if not await self.store.reachable(RECONNECT_WAIT_S):
                raise
        return await operation()

    def _count_edits(self, edits: Mapping[str, EditSpec], scope: str) -> None:
        for edit in edits.values():
            self.metrics.edits.labels(edit.kind, scope).inc()

    # ------------------------------------------------------------------------------ RPCs

    @rpc_boundary("Recommend")
    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> Reply:
        user = validate_user_id(request.user_id)
        auth.authorize(auth.current_principal(), "Recommend", user)
        with self.models.use(user) as served:
            return await self._recommend(served, user, request)

    async def _recommend(self, served: LoadedModel, user: str, request: pb.RecommendRequest) -> Reply:
        model = served.model
        k = validate_k(request.k, model.k_max)
        validate_history(request.history, self.security.max_history)
        one_off = validate_edits(edits_from_proto(request.edits), model.tag_index, self.security.max_edits)
        view = validate_profile_view(request.profile_view, request.profile_top_n)

        history, ignored, digest = None, 0, None
        if request.history:
            history, ignored, digest = model.history(request.history)
            if history.size == 0:
                raise InvalidArgument(
                    f"none of the {len(request.history)} history ids is in the catalog of model version "
                    f"{model.version}; send ids from the catalog (e.g. a prototype's item_id in ListPrototypes)"
                )
        if self.recommend_limiter is not None:  # charged after validation: a rejected request costs nothing
            self.recommend_limiter.check(user)
        stages.mark(stages.VALIDATE)
        held = served.profiles.held(user, digest)
        edited = self._edited_or_none(served, held, one_off) if held is not None else None
        if held is None or edited is None:
            record, from_cache, stored = await served.profiles.resolve(user, history, digest)  # stored: {} while Redis is down
            edited = self._edited(served, record, stored, one_off)  # (H, K)
            ids, scores = await self._score(served, record, edited, request.include_heard, k)
        else:
            record, from_cache, stored, edited, ids, scores = await self._score_while_confirming(
                served, user, history, digest, held, edited, one_off, request.include_heard, k
            )
        self._count_edits(one_off, "one_off")
        ids, scores = select_top_k(ids, scores, k)
        meta = model.metadata
        head = pb.RecommendResponse(
            items=[
                pb.ScoredItem(item_id=meta.item_ids[i], score=float(s), name=meta.item_names[i])
                for i, s in zip(ids.tolist(), scores.tolist(), strict=True)
            ],
            model_version=model.version,
            profile_from_cache=from_cache,
            ignored_history_items=ignored,
            unapplied_edits=self._unapplied(served, stored),
        )
        return Reply(head, self._profile(served, record, edited, merge_edits(stored, one_off), view))

    @staticmethod
    async def _score(
        served: LoadedModel, record: ProfileRecord, edited: np.ndarray, include_heard: bool, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The scorer's top k for the edited shares, the history excluded unless `include_heard`."""
        exclude = np.zeros(0, np.int64) if include_heard else record.history_ids
        shares32 = edited.astype(np.float32)
        stages.mark(stages.EDITS)
        ids, scores = await served.scorer.top_k(shares32, exclude, k)
        stages.mark(stages.SCORER)
        return ids, scores

    @classmethod
    def _edited_or_none(cls, served: LoadedModel, held: StoredProfile, one_off: Mapping[str, EditSpec]) -> np.ndarray | None:
        """The held copy's edited shares, or None when its edits do not apply: whether that is the
        request's fault or the stored state's is for the confirmed state to say, not a copy."""
        try:
            return cls._edited(served, held.record, held.edits, one_off)  # type: ignore[arg-type]  # held: a record
        except (InvalidArgument, FailedPrecondition):
            return None

    async def _score_while_confirming(
        self,
        served: LoadedModel,
        user: str,
        history: np.ndarray | None,
        digest: str | None,
        held: StoredProfile,
        edited: np.ndarray,
        one_off: Mapping[str, EditSpec],
        include_heard: bool,
        k: int,
    ) -> tuple[ProfileRecord, bool, dict[str, EditSpec], np.ndarray, np.ndarray, np.ndarray]:
        """Score the process's copy of the user's state while Redis confirms its version, so a
        cached call pays the longer of the two round trips, not both. The answer stands only when
        `resolve` returns that very copy (an edit acknowledged anywhere changes the version first,
        and this read was sent after the request arrived); otherwise what it returned is scored.
        The read's own stages overlap the scorer's and are not marked; the wait for it after the
        scorer is `redis_read`."""
        check = served.profiles.confirm(user, held, history, digest)
        try:
            ids, scores = await self._score(served, held.record, edited, include_heard, k)  # type: ignore[arg-type]
        except BaseException:  # the scorer failed, or the call was cancelled: the read is not wanted
            check.cancel()
            raise
        record, from_cache, stored = await check.result()  # a cancelled call cancels the read with it
        stages.mark(stages.REDIS_READ)
        if record is not held.record or stored is not held.edits:  # changed meanwhile: score what Redis holds
            edited = self._edited(served, record, stored, one_off)
            ids, scores = await self._score(served, record, edited, include_heard, k)
        return record, from_cache, stored, edited, ids, scores

    @rpc_boundary("EditProfile")
    async def EditProfile(self, request: pb.EditProfileRequest, context: grpc.aio.ServicerContext) -> Reply:
        user = validate_user_id(request.user_id)
        auth.authorize(auth.current_principal(), "EditProfile", user)
        with self.models.use(user) as served:
            edits = validate_edits(edits_from_proto(request.edits), served.model.tag_index, self.security.max_edits)
            if not edits and not request.reset:
                raise InvalidArgument("EditProfile needs at least one edit, or reset: true")
            if self.edit_limiter is not None:  # charged after validation: a rejected request costs nothing
                self.edit_limiter.check(user)
            stages.mark(stages.VALIDATE)
            try:
                async with self.edit_locks.hold(user):
                    return await self._after_reconnect(lambda: self._edit_profile(served, user, edits, request.reset))
            except BaseException:
                # nor does one refused against the stored edits, or one Redis did not take (a write
                # whose reply was lost may have landed: one edit over the rate, never one lost)
                if self.edit_limiter is not None:
                    self.edit_limiter.refund(user)
                raise

    async def _edit_profile(self, served: LoadedModel, user: str, edits: dict[str, EditSpec], reset: bool) -> Reply:
        """Edits are checked against the state they join and stored only if it is still that state
        (its version): two EditProfiles at once cannot each pass against the old edits and together
        store a set that fails every later call. The loser checks again against the winner's edits.
        This process's own EditProfiles of the user wait for each other (`edit_locks`), so only
        other processes' writes can make it lose."""
        for _ in range(EDIT_ATTEMPTS):
            state = await served.profiles.state(user)
            record, merged = state.record, merge_edits({} if reset else state.edits, edits)
            try:  # refuse, before storing anything, edits that would empty the profile
                # set shares over every stored edit, those of prototypes this version lacks too: a
                # rollback (or the other arm of a split) applies them all again
                check_set_weights(merged.values())
                if record is not None:
                    apply_edits(record.weights, merged, served.model.tag_index)
                else:  # no profile to try them on: refuse a set that no profile could take
                    check_applicable(merged, served.model.tag_index)
            except EditError as error:
                raise InvalidArgument(f"edits: {error}; nothing was stored") from error
            stages.mark(stages.EDITS)
            try:
                stored = await self.store.store_edits(user, edits, reset=reset, expected=state.version)
                break
            except VersionChanged:
                stages.mark(stages.REDIS_WRITE)
        else:
            raise Aborted(
                f"the profile of user {user!r} changed during each of {EDIT_ATTEMPTS} attempts to store these edits "
                "(other writes to it at the same time); nothing was stored: send the request again"
            )
        stages.mark(stages.REDIS_WRITE)
        if reset:
            self.metrics.edits.labels("reset", "stored").inc()
        self._count_edits(edits, "stored")
        head = pb.EditProfileResponse(
            stored_edits=self._stored_list(served, stored),
            model_version=served.model.version,
            unapplied_edits=self._unapplied(served, stored),
        )
        profile = None if record is None else self._profile(served, record, self._edited(served, record, stored, {}), stored)
        return Reply(head, profile)

    @rpc_boundary("GetProfile")
    async def GetProfile(self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext) -> Reply:
        user = validate_user_id(request.user_id)
        auth.authorize(auth.current_principal(), "GetProfile", user)
        with self.models.use(user) as served:
            stages.mark(stages.VALIDATE)
            state = await self._after_reconnect(lambda: served.profiles.state(user))
            record, stored = state.record, state.edits
            if record is None:
                raise NotFound(
                    f"no profile for user {user!r} under model version {served.model.version}: "
                    "a Recommend call with the user's history creates it"
                )
            edited = self._edited(served, record, stored, {})
            stages.mark(stages.EDITS)
            head = pb.GetProfileResponse(
                stored_edits=self._stored_list(served, stored),
                model_version=served.model.version,
                unapplied_edits=self._unapplied(served, stored),
            )
            return Reply(head, self._profile(served, record, edited, stored))

    @rpc_boundary("ListPrototypes")
    async def ListPrototypes(
        self, request: pb.ListPrototypesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPrototypesResponse:
        model = self.models.primary.model  # no user: the primary version's (an A/B candidate's users see theirs in their profile)
        current_version.set(str(model.version))
        meta = model.metadata
        return pb.ListPrototypesResponse(
            prototypes=[
                pb.Prototype(name=tag, group=group, item_id=meta.item_ids[item], item_name=meta.item_names[item])
                for tag, group, item in zip(meta.tag_names, meta.tag_groups, meta.prototype_items, strict=True)
            ],
            model_version=model.version,
            k_max=model.k_max,
        )

    @rpc_boundary("SearchItems")
    async def SearchItems(self, request: pb.SearchItemsRequest, context: grpc.aio.ServicerContext) -> pb.SearchItemsResponse:
        model = self.models.primary.model  # no user: the primary version's catalog, as ListPrototypes
        current_version.set(str(model.version))
        query, limit = validate_search(request.query, request.limit)
        stages.mark(stages.VALIDATE)
        meta = model.metadata
        return pb.SearchItemsResponse(
            items=[pb.CatalogItem(item_id=meta.item_ids[i], name=meta.item_names[i]) for i in model.names.search(query, limit)],
            model_version=model.version,
        )
