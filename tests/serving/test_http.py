"""HTTP/JSON beside gRPC (serving/http.py) on a real gateway (ONNX Runtime, real Redis): the same
request over both gives the same answer, every error the gRPC status's HTTP mapping with the very
same message, and the OpenAPI document describes what the server answers."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import logging
import re
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from serving import auth, limits
from serving.config import ServingConfig
from serving.drain import DRAINING_KEY, DRAINING_MESSAGE
from serving.http import HTTP_STATUS, OPENAPI_PATH, SERVICE, TIMEOUT_HEADER, to_json
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.server import create_server
from tests.polling import eventually
from tests.reliability.conftest import Tokens, tokens  # noqa: F401  (pytest finds fixtures by name)
from tests.serving.certs import make_pki
from tests.serving.conftest import Gateway, gateway_config, hold_scores, liked_history, running_gateway

Code = grpc.StatusCode
METHODS = [method.name for method in SERVICE.methods]


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON


def _post(url: str, body: bytes, headers: dict[str, str], method: str) -> HttpAnswer:
    request = urllib.request.Request(url, data=body if method == "POST" else None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return HttpAnswer(response.status, dict(response.headers.items()), json.loads(response.read()))
    except urllib.error.HTTPError as error:
        return HttpAnswer(error.code, dict(error.headers.items()), json.loads(error.read()))


def declare_huge_body(port: int, path: str, headers: Iterable[tuple[str, str]] = ()) -> tuple[int, Any]:
    """A request that announces a 1 GB body and sends none of it: the answer comes first."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest("POST", path)
        connection.putheader("content-type", "application/json")
        for key, value in headers:
            connection.putheader(key, value)
        connection.putheader("content-length", str(10**9))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


async def fetch_json(port: int, path: str, body: bytes | str = b"", headers: Iterable[tuple[str, str]] = (), method: str = "POST") -> HttpAnswer:
    data = body.encode() if isinstance(body, str) else body
    return await asyncio.to_thread(_post, f"http://127.0.0.1:{port}{path}", data, {"content-type": "application/json", **dict(headers)}, method)


async def call_http(gateway: Gateway, method: str, request: Message, metadata: Iterable[tuple[str, str]] = ()) -> HttpAnswer:
    return await fetch_json(gateway.server.http_port, f"/apron.v1.Recommender/{method}", to_json(request), metadata)


async def call_grpc(gateway: Gateway, method: str, request: Message, metadata: Iterable[tuple[str, str]] | None = None) -> tuple[Code, str, Message | None]:
    try:
        response = await getattr(gateway.stub, method)(request, metadata=metadata, timeout=60)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details(), None
    return Code.OK, "", response


async def assert_same_error(gateway: Gateway, method: str, request: Message, metadata: tuple[tuple[str, str], ...] = (), *, normalize: str = "") -> Code:
    """Both transports refuse `request` alike: the mapped HTTP status, the same message."""
    code, details, _ = await call_grpc(gateway, method, request, metadata or None)
    answer = await call_http(gateway, method, request, metadata)
    assert code is not Code.OK, f"{method} {request} was accepted"
    assert answer.status == HTTP_STATUS[code], (code, answer)
    assert answer.body["code"] == code.name.lower()
    if normalize:  # a figure that depends on the moment of the call (a rate limit's wait)
        details, answer.body["message"] = (re.sub(normalize, "#", text) for text in (details, answer.body["message"]))
    assert answer.body["message"] == details
    return code


@pytest.fixture
async def http_gateway(ort_config: ServingConfig) -> AsyncIterator[Gateway]:
    async with running_gateway(dataclasses.replace(ort_config, http_port=0)) as running:
        yield running


async def test_same_request_same_answer(http_gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    history = liked_history(main_tags, 0, 1)
    over_grpc, over_http = f"{user_id}-grpc", f"{user_id}-http"
    # the same history, each transport its own user: both profiles computed, neither from the cache
    grpc_answer = (await call_grpc(http_gateway, "Recommend", pb.RecommendRequest(user_id=over_grpc, history=history, k=7)))[2]
    answer = await call_http(http_gateway, "Recommend", pb.RecommendRequest(user_id=over_http, history=history, k=7))
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    by_http = json_format.Parse(json.dumps(answer.body), pb.RecommendResponse())
    assert grpc_answer is not None and len(by_http.items) == 7
    assert list(by_http.items) == list(grpc_answer.items)  # ids, names and float32 scores, exactly
    assert by_http.profile == grpc_answer.profile and by_http.model_version == grpc_answer.model_version
    assert set(answer.body) == {field.name for field in pb.RecommendResponse.DESCRIPTOR.fields}  # every field shown

    # an edit over HTTP is the same stored edit gRPC then reads, and changes the next list alike
    edit = pb.EditProfileRequest(user_id=over_http, edits=[pb.Edit(prototype="tag0", scale=0)])
    edited = await call_http(http_gateway, "EditProfile", edit)
    assert edited.status == 200 and edited.body["stored_edits"] == [{"prototype": "tag0", "scale": 0.0}]
    _, _, profile = await call_grpc(http_gateway, "GetProfile", pb.GetProfileRequest(user_id=over_http))
    assert json_format.Parse(json.dumps(edited.body), pb.EditProfileResponse()).profile == profile.profile
    by_http_get = await call_http(http_gateway, "GetProfile", pb.GetProfileRequest(user_id=over_http))
    assert json_format.Parse(json.dumps(by_http_get.body), pb.GetProfileResponse()) == profile
    after = await call_http(http_gateway, "Recommend", pb.RecommendRequest(user_id=over_http, k=7))
    assert [item["item_id"] for item in after.body["items"]] != [item.item_id for item in grpc_answer.items]

    _, _, prototypes = await call_grpc(http_gateway, "ListPrototypes", pb.ListPrototypesRequest())
    listed = await fetch_json(http_gateway.server.http_port, "/apron.v1.Recommender/ListPrototypes")  # no body at all
    assert json_format.Parse(json.dumps(listed.body), pb.ListPrototypesResponse()) == prototypes
    # proto3 JSON either way: lowerCamelCase names and a string int64 are the same request
    camel = await fetch_json(http_gateway.server.http_port, "/apron.v1.Recommender/Recommend", json.dumps({"userId": over_grpc, "k": "7"}))
    assert [item["item_id"] for item in camel.body["items"]] == [item.item_id for item in grpc_answer.items]
    # SearchItems: names that start with the query first (case-folded), then the others
    search = pb.SearchItemsRequest(query="track 1", limit=4)
    _, _, found = await call_grpc(http_gateway, "SearchItems", search)
    assert [item.name for item in found.items] == ["Track 1", "Track 10", "Track 11", "Track 12"]
    searched = await call_http(http_gateway, "SearchItems", search)
    assert json_format.Parse(json.dumps(searched.body), pb.SearchItemsResponse()) == found
    inner = await call_http(http_gateway, "SearchItems", pb.SearchItemsRequest(query="K 4"))
    assert [item["name"] for item in inner.body["items"]][:3] == ["Track 4", "Track 40", "Track 41"]
    contains = await call_http(http_gateway, "SearchItems", pb.SearchItemsRequest(query="7", limit=3))
    assert [item["name"] for item in contains.body["items"]] == ["Track 7", "Track 17", "Track 27"]
    # asyncio turns Nagle off only for sockets that say TCP: else each kept-alive call waits ~40 ms
    assert http_gateway.server.http.sock.proto == socket.IPPROTO_TCP
    # counted and timed like gRPC calls (one boundary)
    assert http_gateway.metric("apron_rpc_duration_seconds_count", method="EditProfile", code="OK") == 1


async def test_every_client_mistake_maps_with_the_same_message(http_gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    await http_gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
    cases: list[tuple[str, Message, Code]] = [
        ("Recommend", pb.RecommendRequest(user_id="", k=5), Code.INVALID_ARGUMENT),
        ("Recommend", pb.RecommendRequest(user_id=user_id, k=21), Code.INVALID_ARGUMENT),
        ("Recommend", pb.RecommendRequest(user_id=user_id, k=5, edits=[pb.Edit(prototype="polka", scale=0)]), Code.INVALID_ARGUMENT),
        ("Recommend", pb.RecommendRequest(user_id=user_id, k=5, history=["no-such-item"]), Code.INVALID_ARGUMENT),
        ("Recommend", pb.RecommendRequest(user_id="nobody-" + user_id, k=5), Code.NOT_FOUND),
        ("EditProfile", pb.EditProfileRequest(user_id=user_id), Code.INVALID_ARGUMENT),
        ("EditProfile", pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag0", weight=1.5)]), Code.INVALID_ARGUMENT),
        ("GetProfile", pb.GetProfileRequest(user_id="nobody-" + user_id), Code.NOT_FOUND),
        ("SearchItems", pb.SearchItemsRequest(query="  "), Code.INVALID_ARGUMENT),
        ("SearchItems", pb.SearchItemsRequest(query="x" * 257), Code.INVALID_ARGUMENT),
        ("SearchItems", pb.SearchItemsRequest(query="track", limit=101), Code.INVALID_ARGUMENT),
    ]
    for method, request, expected in cases:
        assert await assert_same_error(http_gateway, method, request) == expected


async def test_transport_level_mistakes(http_gateway: Gateway) -> None:
    """What gRPC's own decoding would refuse before any handler: a body that is not the message,
    one over the size limit; and a malformed or spent deadline header."""
    port, path = http_gateway.server.http_port, "/apron.v1.Recommender/Recommend"
    for body in ("{not json", '{"usr_id": "x"}', '{"k": "many"}', b"\xff\xfe", "[]", ' [{"user_id": "x"}]', '"x"', "null"):
        answer = await fetch_json(port, path, body)
        assert answer.status == 400 and answer.body["code"] == "invalid_argument", answer
        assert answer.body["message"].startswith("the body is not a apron.v1.RecommendRequest in JSON")
    status, body = await asyncio.to_thread(declare_huge_body, port, path)  # refused before a byte of it is read
    assert status == 413 and "--max-message-bytes" in body["message"] and body["code"] == "resource_exhausted"
    answer = await fetch_json(port, path, '{"user_id": "x", "k": 5}', [(TIMEOUT_HEADER, "soon")])
    assert answer.status == 400 and TIMEOUT_HEADER in answer.body["message"]
    computed = json.dumps({"user_id": "x", "k": 5, "history": ["track-0001", "track-0002"]})  # waits on the model
    answer = await fetch_json(port, path, computed, [(TIMEOUT_HEADER, "0")])  # no time at all
    assert answer.status == 504 and answer.body == {"code": "deadline_exceeded", "message": "Recommend did not finish before the deadline"}
    answer = await fetch_json(port, path, method="GET")  # only POST calls an RPC
    assert answer.status == 405 and answer.body["code"] == "unimplemented" and "/v1/openapi.json" in answer.body["message"]
    answer = await fetch_json(port, "/apron.v1.Recommender/Recommendations")
    assert answer.status == 404 and answer.body["code"] == "unimplemented"


async def test_server_deadline_and_rate_limit(ort_config: ServingConfig, main_tags: np.ndarray, user_id: str) -> None:
    deadline = dataclasses.replace(ort_config, http_port=0, request_timeout_s=1e-6)  # no call finishes in a microsecond
    async with running_gateway(deadline) as gateway:
        request = pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5)
        assert await assert_same_error(gateway, "Recommend", request) == Code.DEADLINE_EXCEEDED
    limited = dataclasses.replace(ort_config, http_port=0, edit_rate=1e-6, edit_burst=1)  # one edit, then none for days
    async with running_gateway(limited) as gateway:
        edit = pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag0", scale=0.5)])
        assert (await call_grpc(gateway, "EditProfile", edit))[0] is Code.OK
        code = await assert_same_error(gateway, "EditProfile", edit, normalize=r"\d+\.\d+ s")
        assert code is Code.RESOURCE_EXHAUSTED
        answer = await call_http(gateway, "EditProfile", edit)
        assert int(answer.headers["retry-after"]) == pytest.approx(int(answer.headers["retry-after-ms"]) / 1000, abs=1)
        assert int(answer.headers["retry-after"]) > 900_000  # the bucket refills in about 10^6 s


async def test_redis_down_is_unavailable(ort_config: ServingConfig, user_id: str) -> None:
    dead = dataclasses.replace(ort_config, http_port=0, redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    async with running_gateway(dead) as gateway:
        edit = pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag0", scale=0.5)])
        assert await assert_same_error(gateway, "EditProfile", edit) == Code.UNAVAILABLE


async def test_without_auth_only_json_to_a_loopback_name_is_answered(http_gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    """Auth off (loopback only): any web page in the developer's browser could post a form or
    text/plain (no CORS preflight), or reach 127.0.0.1 under its own name (DNS rebinding), and
    edit profiles; such calls are refused before anything is read or stored."""
    await http_gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True))
    await http_gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
    port = http_gateway.server.http_port
    path = "/apron.v1.Recommender/EditProfile"
    edit = json.dumps({"user_id": user_id, "edits": [{"prototype": "tag1", "scale": 0}]})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        answer = await fetch_json(port, path, edit, [("content-type", content_type)])
        assert answer.status == 415 and answer.body["code"] == "invalid_argument", answer
        assert f"content-type {content_type.partition(';')[0]}" in answer.body["message"]
    answer = await fetch_json(port, path, edit, [("host", f"attacker.example:{port}")])
    assert answer.status == 403 and "'attacker.example' is not a loopback name" in answer.body["message"], answer
    stored = await http_gateway.stub.GetProfile(pb.GetProfileRequest(user_id=user_id))
    assert not any(e.prototype == "tag1" for e in stored.stored_edits)  # nothing of it was stored
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        answer = await fetch_json(port, path, edit, [("host", host), ("content-type", "application/json; charset=utf-8")])
        assert answer.status == 200, (host, answer)


async def test_tokens_and_roles(python_repository, redis_server, tokens: Tokens, main_tags: np.ndarray) -> None:  # noqa: F811
    config = gateway_config(python_repository, redis_server.url, auth=True, jwt_secret_file=str(tokens.path), http_port=0)
    async with running_gateway(config) as gateway:
        alice = pb.RecommendRequest(user_id="alice", history=liked_history(main_tags, 0, 1), k=5)
        wrong_key = auth.bearer_metadata(auth.mint_token(b"k" * 32, "alice", "service"))
        expired = auth.bearer_metadata(auth.mint_token(tokens.secret, "alice", "user", ttl_s=-3600))
        for metadata in ((), wrong_key, expired, (("authorization", "alice"),)):
            assert await assert_same_error(gateway, "Recommend", alice, metadata) == Code.UNAUTHENTICATED
        assert await assert_same_error(gateway, "Recommend", alice, tokens.user("bob")) == Code.PERMISSION_DENIED
        answer = await call_http(gateway, "Recommend", alice, tokens.user("alice"))
        assert answer.status == 200 and len(answer.body["items"]) == 5
        answer = await call_http(gateway, "ListPrototypes", pb.ListPrototypesRequest(), tokens.user("bob"))
        assert answer.status == 200
        assert gateway.metric("apron_rpc_rejections_total", method="Recommend", code="UNAUTHENTICATED") == 8  # 4 each way
        # without a valid token the body is never parsed: not JSON, or within the size limit but large
        # (read and dropped, so the answer reaches a client still sending it), the answer is still
        # UNAUTHENTICATED (it was INVALID_ARGUMENT, after the parse); one declared far over the limit
        # is not even read
        path = "/apron.v1.Recommender/Recommend"
        limit = limits.max_json_request_bytes(config.security)
        within = b'{"history": [' + b'"x",' * 300_000 + b'"x"]}'  # 1.2 MB: more than the sockets' buffers hold
        assert len(within) <= limit
        for body in (b"{not json", within):
            answer = await fetch_json(gateway.server.http_port, path, body, wrong_key)
            assert answer.status == 401 and answer.body["code"] == "unauthenticated", answer
        assert (await asyncio.to_thread(declare_huge_body, gateway.server.http_port, path, wrong_key))[0] == 401
        assert gateway.metric("apron_rpc_rejections_total", method="Recommend", code="UNAUTHENTICATED") == 11
        # a valid token's large body is parsed (off the event loop) and answered as usual
        many = pb.RecommendRequest(user_id="alice", history=[*liked_history(main_tags, 0, 1), *(f"unknown-{i}" for i in range(9_000))], k=5)
        answer = await call_http(gateway, "Recommend", many, tokens.user("alice"))
        assert answer.status == 200 and len(answer.body["items"]) == 5 and answer.body["ignored_history_items"] == 9_000
        document = (await fetch_json(gateway.server.http_port, OPENAPI_PATH, method="GET")).body  # public, like reflection
        assert document["security"] == [{"bearer": []}]


async def test_openapi_describes_the_answers(http_gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    answer = await fetch_json(http_gateway.server.http_port, OPENAPI_PATH, method="GET")
    assert answer.status == 200 and answer.body["openapi"].startswith("3.1")
    document = answer.body
    assert set(document["paths"]) == {f"/apron.v1.Recommender/{name}" for name in METHODS}
    schemas = document["components"]["schemas"]

    def refs(node: Any) -> Iterable[str]:
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(document):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref

    def conforms(value: Any, schema: dict[str, Any]) -> None:
        """The JSON the server sent fits the schema (types and property names, recursively)."""
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        python = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
        assert any(isinstance(value, python[kind]) for kind in kinds), (value, schema)
        if isinstance(value, dict):
            assert set(value) <= set(schema["properties"]), (set(value), schema)
            for key, item in value.items():
                conforms(item, schema["properties"][key])
        elif isinstance(value, list):
            for item in value:
                conforms(item, schema["items"])

    recommended = await call_http(http_gateway, "Recommend", pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
    operation = document["paths"]["/apron.v1.Recommender/Recommend"]["post"]
    conforms(recommended.body, operation["responses"]["200"]["content"]["application/json"]["schema"])
    refused = await call_http(http_gateway, "Recommend", pb.RecommendRequest(user_id="", k=5))
    conforms(refused.body, operation["responses"]["400"]["content"]["application/json"]["schema"])
    # every status the server answers is documented, with every gRPC code that maps to it
    port, path = http_gateway.server.http_port, "/apron.v1.Recommender/Recommend"
    answered = {
        (await fetch_json(port, path, method="GET")).status,  # 405
        (await fetch_json(port, path, "{}", [("content-type", "text/plain")])).status,  # 415 (auth off)
        (await asyncio.to_thread(declare_huge_body, port, path))[0],  # 413
        refused.status,
    }
    assert answered == {400, 405, 413, 415}
    for status in answered | set(HTTP_STATUS.values()) - {200}:
        assert str(status) in operation["responses"], status
    for code, status in HTTP_STATUS.items():
        assert code.name in operation["responses"][str(status)]["description"], (code, status)
    assert "INVALID_ARGUMENT" in operation["responses"]["400"]["description"]  # not only OUT_OF_RANGE, the last one mapped
    # the schemas say what the server reads: lowerCamelCase names too (proto3 JSON), no closed property list
    request_schema = schemas["apron.v1.RecommendRequest"]
    assert "additionalProperties" not in request_schema and "lowerCamelCase" in request_schema["description"]
    camel = await fetch_json(port, path, json.dumps({"userId": user_id, "k": 5}))
    assert camel.status == 200
    for schema in schemas.values():  # enums: by name or by number, as json_format reads them
        for field in schema.get("properties", {}).values():
            if "enum" in field:
                assert field["type"] == ["string", "integer"] and any(isinstance(value, int) for value in field["enum"])


def https_status(port: int, context: ssl.SSLContext) -> int:
    request = urllib.request.Request(f"https://127.0.0.1:{port}/apron.v1.Recommender/ListPrototypes", data=b"{}", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60, context=context) as response:
        return response.status


async def test_the_http_port_speaks_the_grpc_ports_tls(ort_config: ServingConfig, tmp_path) -> None:
    pki = make_pki(tmp_path)
    config = dataclasses.replace(
        ort_config, http_port=0, tls_cert=str(pki.server.cert), tls_key=str(pki.server.key), tls_client_ca=str(pki.ca.cert)
    )
    server, _ = await create_server(config)
    await server.start()
    try:
        trusting = ssl.create_default_context(cafile=str(pki.ca.cert))
        # mutual TLS: no client certificate, no answer (TLS 1.3 may refuse in the handshake or just after it)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            await asyncio.to_thread(https_status, server.http_port, trusting)
        trusting.load_cert_chain(str(pki.client.cert), str(pki.client.key))
        assert await asyncio.to_thread(https_status, server.http_port, trusting) == 200
    finally:
        await server.stop(1.0)


async def test_a_call_the_drain_cuts_answers_as_over_grpc(ort_config: ServingConfig, main_tags: np.ndarray, user_id: str) -> None:
    """A call still running at the end of the shutdown grace: HTTP gets what gRPC gets (CANCELLED,
    the drain's message and its signal, here a header), not uvicorn's plain-text 500 and a traceback."""
    config = dataclasses.replace(ort_config, http_port=0, request_timeout_s=600.0)  # only the drain ends the call
    server, _ = await create_server(config)
    await server.start()
    release = hold_scores(server)  # never set before the stop: the drain must cut the call
    request = pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=3)
    try:
        held = asyncio.ensure_future(fetch_json(server.http_port, "/apron.v1.Recommender/Recommend", to_json(request)))
        await eventually(lambda: len(server.drain.in_flight) == 1, "the HTTP call held in the gateway")
        await server.stop(grace=1.0)
        answer = await held
    finally:
        release.set()
    assert answer.status == HTTP_STATUS[grpc.StatusCode.CANCELLED] and answer.body == {"code": "cancelled", "message": DRAINING_MESSAGE}
    assert answer.headers.get(DRAINING_KEY) == "1"


def test_the_http_peer_is_spelled_as_grpc_spells_it() -> None:
    from serving.http import grpc_peer

    assert grpc_peer("127.0.0.1", 5000) == "ipv4:127.0.0.1:5000"
    assert grpc_peer("::1", 5000) == "ipv6:[::1]:5000"  # not "ipv4:::1:5000"


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection (and nothing more) and read until the server answers or
    closes; the socket's timeout only fails a server that does neither."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        received = b""
        try:
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:  # closed by the server
                    break
                received += chunk
        except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset, an answer too
            pass
        except TimeoutError:
            raise AssertionError(f"no answer: {received!r}") from None
        return received


def partial_post(path: str, headers: Iterable[tuple[str, str]] = (), declared: int = 100) -> bytes:
    """A POST whose head is complete, declaring `declared` body bytes, of which it sends 5."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n"
    head += "".join(f"{key}: {value}\r\n" for key, value in headers)
    return (head + "\r\n").encode() + b'{"use'


async def test_a_refused_or_late_body_is_not_waited_for(python_repository, redis_server, tokens: Tokens, main_tags: np.ndarray) -> None:  # noqa: F811
    """A caller the token check refuses whose body stops arriving is answered once no more comes
    (REFUSED_IDLE_S), its body dropped, not kept; a caller's body that does not arrive within the
    call's deadline is DEADLINE_EXCEEDED, counted like any call (it waited for good, on every
    connection it opened: a flood held memory and descriptors)."""
    config = gateway_config(python_repository, redis_server.url, auth=True, jwt_secret_file=str(tokens.path), http_port=0)
    async with running_gateway(config) as gateway:
        port, path = gateway.server.http_port, "/apron.v1.Recommender/Recommend"
        wrong_key = auth.bearer_metadata(auth.mint_token(b"k" * 32, "alice", "service"))
        answer = await asyncio.to_thread(raw_exchange, port, partial_post(path, wrong_key))
        assert answer.startswith(b"HTTP/1.1 401 ") and b'"code":"unauthenticated"' in answer.replace(b" ", b""), answer
        # a valid caller's body that stops arriving: cut at its own deadline
        late = partial_post(path, [*tokens.user("alice"), (TIMEOUT_HEADER, "50")])
        answer = await asyncio.to_thread(raw_exchange, port, late)
        assert answer.startswith(b"HTTP/1.1 504 ") and b"Recommend did not finish before the deadline" in answer, answer
        assert gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code="DEADLINE_EXCEEDED") == 1
    # ... and, without a deadline of its own, at the server's --request-timeout-s
    capped = gateway_config(python_repository, redis_server.url, http_port=0, request_timeout_s=0.05)
    async with running_gateway(capped) as gateway:
        answer = await asyncio.to_thread(raw_exchange, gateway.server.http_port, partial_post(path))
        assert answer.startswith(b"HTTP/1.1 504 ") and b"deadline_exceeded" in answer, answer
        assert gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code="DEADLINE_EXCEEDED") == 1


async def test_idle_and_half_sent_connections_are_bounded(ort_config: ServingConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn alone accepts every connection and times none out until a first answer: a flood of
    connections sending half a head held a descriptor each for good (gRPC, in the same process,
    then could accept none). Here: a head must arrive within --request-timeout-s, and past the cap
    a connection is closed as accepted."""
    from serving import http as http_module

    monkeypatch.setattr(http_module, "HEAD_TIMEOUT_FLOOR_S", 0.0)  # the head timeout is the server's 0.2 s
    monkeypatch.setattr(http_module, "http_connection_cap", lambda: 2)
    async with running_gateway(dataclasses.replace(ort_config, http_port=0, request_timeout_s=0.2)) as gateway:
        port = gateway.server.http_port
        half_head = b"POST /apron.v1.Recommender/Recommend HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        assert await asyncio.to_thread(raw_exchange, port, half_head) == b""  # closed, unanswered
        connections = gateway.server.http.uvicorn.server_state.connections
        await eventually(lambda: not connections, "the half-sent connection closed")
    async with running_gateway(dataclasses.replace(ort_config, http_port=0)) as gateway:
        port = gateway.server.http_port
        connections = gateway.server.http.uvicorn.server_state.connections
        held = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(2)]
        try:
            await eventually(lambda: len(connections) == 2, "both connections accepted")
            assert await asyncio.to_thread(raw_exchange, port, b"GET /v1/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == b""
            held.pop().close()
            await eventually(lambda: len(connections) == 1, "a connection closed")
            answer = await fetch_json(port, OPENAPI_PATH, method="GET")  # room again
            assert answer.status == 200
        finally:
            for sock in held:
                sock.close()


async def test_a_client_that_hangs_up_mid_body_is_a_cancelled_call(http_gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    """As a cancelled gRPC call: CANCELLED in the call metrics and the access log (INFO), not an
    uncounted call and uvicorn's ERROR traceback."""
    caplog.set_level(logging.INFO)
    port = http_gateway.server.http_port
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(partial_post("/apron.v1.Recommender/Recommend"))
        await eventually(lambda: len(http_gateway.server.drain.in_flight) == 1, "the call waiting for its body")
    await eventually(
        lambda: http_gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code="CANCELLED") == 1, "the call counted"
    )
    assert http_gateway.server.drain.in_flight == set()
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text
    logged = [record for record in caplog.records if record.getMessage() == "rpc" and record.fields.get("code") == "CANCELLED"]  # type: ignore[attr-defined]
    assert len(logged) == 1 and logged[0].levelno == logging.INFO
