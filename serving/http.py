"""HTTP/JSON beside gRPC: the same calls through the same handlers, on `--http-port` (off by default).

    POST /apron.v1.Recommender/<Method>    body: the request message in proto3 JSON -> the response's
    GET  /v1/openapi.json                  the OpenAPI 3.1 document of those calls (from the proto)

The path is the gRPC method's own path (the shape of the Connect protocol's unary JSON calls), the
body the request message in the proto3 JSON mapping (`google.protobuf.json_format`: field names as in
the .proto or lowerCamelCase, int64 as a string or a number, enums by name); the response uses the
.proto field names and carries every field. There is no second copy of any logic: a request is
parsed into the very message gRPC would deliver and handed to the servicer's method, so it runs
inside the same `rpc_boundary` (serving/servicer.py: validation, limits, load shedding, deadline,
metrics, access log) behind the same token check (`auth.check_caller` and `with_caller`, the interceptor's
verifier and stage clock). `HttpContext` is the part of a grpc.aio ServicerContext those use: the
HTTP headers are the call's metadata (`authorization`, `traceparent`), `Connect-Timeout-Ms` its
deadline, and the boundary's `abort` becomes the HTTP error.

Errors: the gRPC status mapped as google.rpc.Code documents it (`HTTP_STATUS`), the body
`{"code": "<status in lower case>", "message": "<the gRPC status message>"}`; RESOURCE_EXHAUSTED
adds `Retry-After` (whole seconds, rounded up) and `retry-after-ms` (the gRPC trailer's value).
Before any handler, like gRPC's own decoding: a body that is not the request message is 400
(invalid_argument), one over `--max-message-bytes` 413. A caller the token check refuses is answered
without its body being parsed or kept: drained and dropped (`drain_body`). The body's arrival is bounded by the call's deadline
(`Connect-Timeout-Ms`, at most `--request-timeout-s`): past it DEADLINE_EXCEEDED, and a client that
hangs up mid-body CANCELLED, both through the boundary (counted and logged like any call).

The server is uvicorn on the gateway's own event loop (`HttpServer`, started and stopped with the
gRPC server by serving/server.py); with `--workers N` each worker serves it on the shared port
(SO_REUSEPORT), as it does gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import resource
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc
import uvicorn
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving import auth, limits
from serving.config import ServingConfig
from serving.drain import DRAINING_KEY, DRAINING_MESSAGE, Drain
from serving.errors import RETRY_AFTER_KEY, ApronError
from serving.profile_encoding import Reply
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.servicer import RawRequest

SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"]
OPENAPI_PATH = "/v1/openapi.json"
TIMEOUT_HEADER = "connect-timeout-ms"  # the Connect protocol's deadline header (milliseconds)
JSON = "application/json"

# gRPC status -> HTTP status, as google.rpc.Code (googleapis google/rpc/code.proto) maps them
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
TOO_LARGE = 413  # a body over --max-message-bytes (gRPC: RESOURCE_EXHAUSTED, which 429 would make a retry)
UNSUPPORTED_MEDIA_TYPE = 415  # with auth off, a body not sent as JSON (cross_site_refusal)
# A body over this is parsed in a thread: protobuf's JSON parser walks it element by element in
# Python, and a body up to the size limit on the event loop would hold every other call meanwhile
# (validation refuses an over-long history only after the parse)
PARSE_ON_LOOP_BYTES = 64 * 1024


def parse_message(body: bytes, message: Message) -> Message:
    """The request in proto3 JSON (empty: `{}`) into `message`. ParseError unless the top level is an
    object: json_format alone reads `[]` (any list) as `{}`, a body that is no request at all."""
    if body.lstrip()[:1] not in (b"{", b""):
        raise json_format.ParseError("the top level is not a JSON object")
    return json_format.Parse(body or b"{}", message)


Behavior = Callable[[Message | RawRequest | None, Any], Awaitable[Message | Reply]]


def rpc_path(method: pb_descriptor.MethodDescriptor) -> str:
    """`/apron.v1.Recommender/Recommend`: the gRPC method's path, the HTTP path too."""
    return f"/{method.containing_service.full_name}/{method.name}"


class HttpAbort(Exception):
    """The boundary's `context.abort(code, message)` for an HTTP call."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class HttpContext:
    """What `rpc_boundary`, the token check and tracing read of a grpc.aio.ServicerContext, for a
    call that came over HTTP: the headers as invocation metadata, the deadline, the trailers (which
    become response headers) and `abort`."""

    def __init__(self, metadata: Sequence[tuple[str, str]], timeout_s: float | None, peer: str):
        self._metadata = tuple(metadata)
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._peer = peer
        self.trailing_metadata: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        self.trailing_metadata = tuple(metadata)

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Iterable[tuple[str, str]] = ()) -> None:
        if trailing_metadata:
            self.trailing_metadata = tuple(trailing_metadata)
        raise HttpAbort(code, details)


def error_response(code: grpc.StatusCode, message: str, trailing: Iterable[tuple[str, str]] = (), status: int = 0) -> Response:
    headers = {}
    for key, value in trailing:
        if key == RETRY_AFTER_KEY:  # HTTP's Retry-After counts whole seconds
            headers["retry-after"] = str(max(1, math.ceil(int(value) / 1000)))
            headers[RETRY_AFTER_KEY] = value
    return JSONResponse({"code": code.name.lower(), "message": message}, status or HTTP_STATUS[code], headers)


def to_json(message: Message | Reply) -> str:
    if isinstance(message, Reply):  # its profile already encoded for gRPC: the whole message
        message = message.message()
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=None
    )


def declared_over(request: Request, limit: int) -> bool:
    """Whether the request's Content-Length announces more than `limit` bytes (then none is read)."""
    declared = request.headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over `limit` bytes (read no further than that)."""
    if declared_over(request, limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


REFUSED_IDLE_S = 1.0  # a refused caller's body: the longest wait for its next chunk while it is drained


async def drain_body(request: Request, limit: int, idle_s: float) -> None:
    """Read the body and drop it, up to `limit` bytes (none when it declares more), until it ends or
    no chunk comes for `idle_s`."""
    if declared_over(request, limit):
        return
    chunks, drained = request.stream().__aiter__(), 0
    while drained <= limit:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await anext(chunks)
        except (StopAsyncIteration, TimeoutError):
            return
        drained += len(chunk)


class ClientGone(ApronError):
    """The client hung up before its whole body arrived: what gRPC reports as a cancelled call."""

    code = grpc.StatusCode.CANCELLED


class Unarrived(RawRequest):
    """A request whose body never fully arrived (its deadline passed, or the client hung up). Handed
    to the servicer's boundary like gRPC's unparsed `RawRequest`, whose parse raises `error` there:
    the call is then answered, counted (apron_rpc_duration_seconds, rejections) and access-logged
    exactly as a gRPC call that hit its deadline (TimeoutError: DEADLINE_EXCEEDED) or was cancelled
    (ClientGone: CANCELLED), with no second copy of that bookkeeping here."""

    __slots__ = ("error",)

    def __init__(self, message_type: type[Message], error: Exception):
        super().__init__(message_type, b"")
        self.error = error

    def parse(self) -> Message:
        raise self.error


def timeout_of(request: Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 10:
        raise ValueError(f"{TIMEOUT_HEADER} must be a whole number of milliseconds (at most 10 digits), got {raw!r}")
    return int(raw) / 1000


class RpcEndpoint:
    """One gRPC method over HTTP: parse, run the servicer's method (its boundary included), answer."""

    def __init__(
        self, method: pb_descriptor.MethodDescriptor, behavior: Behavior, verifier: auth.TokenVerifier | None, max_bytes: int,
        drain: Drain | None = None, request_timeout_s: float | None = None,
    ):
        self.request_class = message_factory.GetMessageClass(method.input_type)
        self.behavior = behavior
        self.verifier = verifier
        self.max_bytes = max_bytes
        self.drain = drain  # the server's: a call still running at the end of the grace answers as gRPC's do
        self.request_timeout_s = request_timeout_s  # --request-timeout-s: caps the body's arrival too

    async def handle(self, request: Request) -> Response:
        if self.drain is None:
            return await self._handle(request)
        return await self.drain.run(lambda: self._handle(request), _cut)

    async def _handle(self, request: Request) -> Response:
        if self.verifier is None and (refused := cross_site_refusal(request)) is not None:
            return refused
        try:
            timeout_s = timeout_of(request)
        except ValueError as error:
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        metadata = [(key.decode("latin-1"), value.decode("latin-1")) for key, value in request.headers.raw]
        client = request.client
        context = HttpContext(metadata, timeout_s, grpc_peer(client.host, client.port) if client else "")
        behavior = self.behavior
        caller: object = None  # no token check: nobody is refused
        if self.verifier is not None:  # auth on: the interceptor's check, on the same verifier
            caller, clock = auth.check_caller(self.verifier, metadata)
            behavior = auth.with_caller(behavior, caller, clock)
        # the body's arrival counts against the call's deadline, as over gRPC (whose deadline runs from
        # the client's send): a client that sends slowly, or declares more than it sends, is cut at it
        bound = min((t for t in (context.time_remaining(), self.request_timeout_s) if t is not None), default=None)
        if isinstance(caller, auth.AuthError):
            # refused before its body is parsed, as over gRPC (auth._unread). The body is drained, not
            # kept (each chunk dropped as it comes): answered with it unread, the connection closes
            # with data in its buffer and the client, still sending, reads a reset instead of this
            # answer (it did, for a 1.2 MB body on a loaded CI machine). Drained within the size limit
            # (one declared over it is not read at all), the call's deadline, and REFUSED_IDLE_S
            # between chunks: a caller that stops sending is answered then, not at the deadline.
            with contextlib.suppress(TimeoutError, ClientDisconnect):
                async with asyncio.timeout(bound):
                    await drain_body(request, self.max_bytes, REFUSED_IDLE_S)
            return await self._answer(behavior, None, context)
        try:
            async with asyncio.timeout(bound):
                body = await read_body(request, self.max_bytes)
        except TimeoutError as error:
            return await self._answer(behavior, Unarrived(self.request_class, error), context)
        except ClientDisconnect:  # uvicorn would log it as an ERROR with a traceback, the call uncounted
            gone = ClientGone("the client closed the connection before its request body arrived")
            return await self._answer(behavior, Unarrived(self.request_class, gone), context)
        if body is None:
            message = f"the request body is larger than the limit of {self.max_bytes} bytes (--max-message-bytes)"
            return error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, message, status=TOO_LARGE)
        try:
            if len(body) > PARSE_ON_LOOP_BYTES:  # long to parse: the loop keeps the other calls going meanwhile
                message_in = await asyncio.to_thread(parse_message, body, self.request_class())
            else:
                message_in = parse_message(body, self.request_class())
        except (ValueError, json_format.ParseError) as error:  # UnicodeDecodeError is a ValueError
            name = self.request_class.DESCRIPTOR.full_name
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, f"the body is not a {name} in JSON: {error}")
        return await self._answer(behavior, message_in, context)

    @staticmethod
    async def _answer(behavior: Behavior, message_in: Message | RawRequest | None, context: HttpContext) -> Response:
        try:
            response = await behavior(message_in, context)
        except HttpAbort as error:
            return error_response(error.code, error.message, context.trailing_metadata)
        return Response(to_json(response), media_type=JSON)


async def _cut() -> Response:
    """A call the draining server cancelled (serving/drain.py): CANCELLED with the same message and
    signal gRPC's get, the signal as a header (uvicorn would answer a plain-text 500 and log a traceback)."""
    response = error_response(grpc.StatusCode.CANCELLED, DRAINING_MESSAGE)
    response.headers[DRAINING_KEY] = "1"
    return response


def cross_site_refusal(request: Request) -> Response | None:
    """With auth off (only ever on loopback: auth.check_exposure) nothing but the transport tells a
    call from this machine's browser, on any web page, from the developer's own: a cross-site form
    or `text/plain` post needs no CORS preflight, and a DNS-rebinding page reaches 127.0.0.1 under
    its own host name. So such a gateway takes only JSON bodies (a cross-site JSON post is preflighted,
    and nothing here answers the preflight) sent to a loopback host name. None: the call may go on."""
    host = request.url.hostname or ""
    if not auth.is_loopback(host):
        message = f"Host {host!r} is not a loopback name: this gateway runs without auth and answers only calls to 127.0.0.1, ::1 or localhost"
        return error_response(grpc.StatusCode.PERMISSION_DENIED, message)
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != JSON:
        message = f"the body must be sent as {JSON} (content-type {media_type or 'missing'}): this gateway runs without auth"
        return error_response(grpc.StatusCode.INVALID_ARGUMENT, message, status=UNSUPPORTED_MEDIA_TYPE)
    return None


def grpc_peer(host: str, port: int) -> str:
    """The caller as gRPC's `context.peer()` spells it ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000"),
    so access logs and spans read alike over both transports."""
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


# ----------------------------------------------------------------------------- OpenAPI

_SCALARS: dict[int, dict[str, Any]] = {
    pb_descriptor.FieldDescriptor.TYPE_STRING: {"type": "string"},
    pb_descriptor.FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    pb_descriptor.FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    # proto3 JSON: 64-bit integers are strings (a number is accepted too)
    pb_descriptor.FieldDescriptor.TYPE_INT64: {"type": ["string", "integer"], "format": "int64"},
    pb_descriptor.FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    pb_descriptor.FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
}


def _field_schema(field: pb_descriptor.FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.message_type is not None:
        _message_schema(field.message_type, schemas)
        schema: dict[str, Any] = {"$ref": f"#/components/schemas/{field.message_type.full_name}"}
    elif field.enum_type is not None:
        # proto3 JSON: the server reads an enum by name or by number (and answers by name)
        values = field.enum_type.values
        schema = {"type": ["string", "integer"], "enum": [value.name for value in values] + [value.number for value in values]}
    else:
        schema = dict(_SCALARS[field.type])
    if field.containing_oneof is not None:
        schema["description"] = f"one of {field.containing_oneof.name}: " + ", ".join(f.name for f in field.containing_oneof.fields)
    if field.is_repeated:
        return {"type": "array", "items": schema}
    return schema


def _message_schema(message: pb_descriptor.Descriptor, schemas: dict[str, Any]) -> None:
    if message.full_name in schemas:
        return
    schemas[message.full_name] = {}  # before the fields: a message that refers to itself terminates
    properties = {field.name: _field_schema(field, schemas) for field in message.fields}
    # the properties by their .proto names (as answers carry them); requests are read by the proto3
    # JSON mapping, which also takes each field's lowerCamelCase name and refuses any other name:
    # said in words, as a schema listing both spellings would allow a field twice
    schemas[message.full_name] = {"type": "object", "properties": properties, "description": PROTO3_JSON}


PROTO3_JSON = (
    "proto3 JSON mapping (google.protobuf.json_format): a request field may also be named in lowerCamelCase "
    "(user_id or userId), an int64 be a string or a number, an enum its name or its number; a name that is not "
    "a field is refused (400)"
)
# HTTP statuses answered besides the gRPC statuses' own (HTTP_STATUS): (gRPC code in the body, when)
TRANSPORT_STATUSES: dict[int, tuple[grpc.StatusCode, str]] = {
    404: (grpc.StatusCode.UNIMPLEMENTED, "no such path"),
    405: (grpc.StatusCode.UNIMPLEMENTED, "a method other than POST"),
    TOO_LARGE: (grpc.StatusCode.RESOURCE_EXHAUSTED, "a body over --max-message-bytes (its JSON form)"),
    UNSUPPORTED_MEDIA_TYPE: (grpc.StatusCode.INVALID_ARGUMENT, "auth off: a body not sent as application/json"),
}


def error_statuses() -> dict[int, str]:
    """Each HTTP error status the calls answer, described by every gRPC code that maps to it (several
    share one: 400 is INVALID_ARGUMENT, FAILED_PRECONDITION and OUT_OF_RANGE) and the transport's own."""
    described: dict[int, list[str]] = {}
    for code, status in HTTP_STATUS.items():
        if code is not grpc.StatusCode.OK:
            described.setdefault(status, []).append(code.name)
    for status, (code, when) in TRANSPORT_STATUSES.items():
        described.setdefault(status, []).append(f"{code.name} ({when})")
    return {status: ", ".join(names) for status, names in sorted(described.items())}


def openapi_document(methods: Sequence[pb_descriptor.MethodDescriptor], auth_on: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `methods` over HTTP, built from their descriptors (the .proto is
    the one source: its comments say what each field means)."""
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "the gRPC status name in lower case, e.g. invalid_argument"},
                "message": {"type": "string", "description": "the gRPC status message"},
            },
            "required": ["code", "message"],
        }
    }
    paths: dict[str, Any] = {}
    for method in methods:
        _message_schema(method.input_type, schemas)
        _message_schema(method.output_type, schemas)
        errors = {
            str(status): {"description": codes, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for status, codes in error_statuses().items()
        }
        paths[rpc_path(method)] = {
            "post": {
                "operationId": method.name,
                "summary": f"{method.containing_service.full_name}.{method.name} (see proto/apron/v1/recommender.proto)",
                "requestBody": {"required": False, "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{method.input_type.full_name}"}}}},
                "parameters": [
                    {"name": TIMEOUT_HEADER, "in": "header", "required": False, "schema": {"type": "integer"},
                     "description": "the call's deadline in milliseconds (the server's --request-timeout-s caps it)"},
                ],  # fmt: skip
                "responses": {"200": {"description": "OK", "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{method.output_type.full_name}"}}}}, **errors},
            }
        }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "APRON recommender (HTTP/JSON)", "version": "v1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth_on:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        document["security"] = [{"bearer": []}]
    return document


# ----------------------------------------------------------------------------- the app and its server


def http_methods() -> list[pb_descriptor.MethodDescriptor]:
    """Every method of apron.v1.Recommender (the admin service stays gRPC-only)."""
    return list(SERVICE.methods)


def build_app(
    servicer: object, security: auth.AuthSetup, config: ServingConfig, extra_routes: Sequence[BaseRoute] = (), drain: Drain | None = None
) -> Starlette:
    methods = http_methods()
    document = json.dumps(openapi_document(methods, security.verifier is not None))
    max_bytes = limits.max_json_request_bytes(config.security)
    routes: list[BaseRoute] = [
        Route(rpc_path(method), RpcEndpoint(method, getattr(servicer, method.name), security.verifier, max_bytes, drain, config.request_timeout_s).handle, methods=["POST"])
        for method in methods
    ]

    async def openapi(_request: Request) -> Response:
        return Response(document, media_type=JSON)

    async def no_such_call(request: Request, error: Exception) -> Response:
        """An unknown path (404) or method (405): still the JSON error body, naming what exists."""
        status = error.status_code if isinstance(error, HTTPException) else 404
        message = f"no {request.method} {request.url.path} here: calls are POST /{SERVICE.full_name}/<Method>, described at {OPENAPI_PATH}"
        return error_response(grpc.StatusCode.UNIMPLEMENTED, message, status=status)

    routes.append(Route(OPENAPI_PATH, openapi, methods=["GET"]))
    return Starlette(routes=[*routes, *extra_routes], exception_handlers={404: no_such_call, 405: no_such_call})


def bind_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening-ready TCP socket on `host:port` (0: a free port); SO_REUSEPORT for --workers."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say TCP,
    # and uvicorn writes a response's head and body apart (with Nagle on: ~40 ms per kept-alive call)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bare, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


# What one HTTP connection may hold, and how many there may be. uvicorn bounds neither on its own:
# it accepts every connection and arms no timer until a first response is sent, so a client that
# opens connections and sends half a request head (or nothing) holds a file descriptor each for
# good; a flood of them used up the process's descriptors, and gRPC, in the same process, could then
# accept no connection either. gRPC's own port bounds these with --max-connection-idle-s and core's
# handshake timeouts.
#   - at most a quarter of the process's descriptor limit (RLIMIT_NOFILE, soft) in HTTP connections,
#     at least HTTP_MIN_CONNECTIONS: one over it is closed as accepted, before anything is read, and
#     three quarters stay for gRPC's connections, Redis, the model files and the rest;
#   - a request's head (request line and headers, at most H11_MAX_HEAD_BYTES) must arrive within
#     --request-timeout-s of the connection opening or of the previous answer (at least
#     HEAD_TIMEOUT_FLOOR_S, the round trip of a client on a slow link), else the connection is
#     closed; this also ends the discarding of a body left unread (a refused caller's) however slowly
#     it trickles in. The body itself is bounded by the call's deadline (RpcEndpoint);
#   - uvicorn's limit_concurrency stays off: it counts connections and calls together and answers
#     a plain-text 503; calls are shed by --max-concurrent-rpcs in the servicer, as over gRPC, with
#     the JSON 429 and Retry-After. timeout_keep_alive stays uvicorn's 5 s (an idle kept-alive
#     connection closes then) and backlog its 2048 (the kernel's queue, capped by somaxconn: no
#     descriptors of this process).
HTTP_CONNECTION_SHARE = 4
HTTP_MIN_CONNECTIONS = 64
HEAD_TIMEOUT_FLOOR_S = 5.0
H11_MAX_HEAD_BYTES = 16 * 1024  # uvicorn's default, stated: a bearer JWT and the usual headers fit


def http_connection_cap() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(HTTP_MIN_CONNECTIONS, soft // HTTP_CONNECTION_SHARE)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the two bounds it lacks (see above): `max_connections` open at
    once, and `head_timeout_s` for a request's head to arrive. Set per server (`guarded_protocol`)."""

    max_connections: int = HTTP_MIN_CONNECTIONS
    head_timeout_s: float = HEAD_TIMEOUT_FLOOR_S

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._timed_cycle: object = None
        super().connection_made(transport)  # type: ignore[arg-type]
        if len(self.connections) > self.max_connections:
            transport.abort()  # type: ignore[attr-defined]  # nothing read, its descriptor freed at once
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._timed_cycle:  # a new request's head is in
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next head is timed from this answer (unless a pipelined one already arrived)
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._timed_cycle = self.cycle
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()


def guarded_protocol(max_connections: int, head_timeout_s: float) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"max_connections": max_connections, "head_timeout_s": head_timeout_s})


class HttpServer:
    """uvicorn serving `app` on the gateway's event loop and a socket bound at construction."""

    def __init__(self, app: Starlette, config: ServingConfig):
        self.sock = bind_socket(config.host, config.http_port, config.workers > 1 or config.reuse_port)
        self.port: int = self.sock.getsockname()[1]
        tls: dict[str, Any] = {}
        if config.tls_cert:  # the same certificate (and client CA: mutual TLS) as the gRPC port
            tls = {"ssl_certfile": config.tls_cert, "ssl_keyfile": config.tls_key}
            if config.tls_client_ca:
                tls |= {"ssl_ca_certs": config.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self.uvicorn = uvicorn.Server(
            uvicorn.Config(
                app, lifespan="off", log_config=None, access_log=False, server_header=False,
                timeout_graceful_shutdown=config.shutdown_grace_s, h11_max_incomplete_event_size=H11_MAX_HEAD_BYTES,
                http=guarded_protocol(http_connection_cap(), max(config.request_timeout_s, HEAD_TIMEOUT_FLOOR_S)), **tls,
            )
        )  # fmt: skip
        self._ticks: asyncio.Task | None = None

    async def start(self) -> None:
        self.uvicorn.config.load()
        self.uvicorn.lifespan = self.uvicorn.config.lifespan_class(self.uvicorn.config)  # "off": a no-op
        await self.uvicorn.startup(sockets=[self.sock])
        # uvicorn's once-a-second housekeeping (the Date header), not its signal handling: the
        # gateway's runtime owns the signals
        self._ticks = asyncio.create_task(self.uvicorn.main_loop(), name="apron-http-ticks")

    async def stop(self, grace_s: float) -> None:
        """New connections refused, in-flight requests given `grace_s`, then the socket closed."""
        if self._ticks is None:
            self.sock.close()
            return
        self.uvicorn.should_exit = True
        await self._ticks
        self.uvicorn.config.timeout_graceful_shutdown = grace_s
        await self.uvicorn.shutdown(sockets=[self.sock])
