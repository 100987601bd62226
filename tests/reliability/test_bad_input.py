"""Property-based bad input (hypothesis) against a real `apron serve` subprocess: random unicode
ids, huge and negative numbers, NaN / inf, duplicate and unknown prototypes, empty and oversized
fields, garbage tokens. A client's mistake must never get INTERNAL or UNKNOWN (nor UNAVAILABLE or a
deadline: the server must not fall over), every OK answer must be well-formed, and afterwards the
server is healthy, answers a good request and has logged no unhandled error.

With a valid token the statuses are exact: never UNAUTHENTICATED or PERMISSION_DENIED, and
RESOURCE_EXHAUSTED exactly when the request is over the message size (the rate limits are set out of
reach). Valid requests, drawn apart, must get OK."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from loadtests.gateway_process import run_gateway
from serving.auth import bearer_metadata
from serving.catalog import ServedModel
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from tests.reliability.conftest import Tokens

pytestmark = pytest.mark.timeout(600)

MAX_HISTORY, MAX_EDITS, MAX_MESSAGE_BYTES = 64, 8, 64 * 1024
# what a request's content may earn from a caller whose token is valid for it
CLIENT_MISTAKES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.fixture(scope="module")
def served(python_repository: Path, redis_server, tokens: Tokens, tmp_path_factory: pytest.TempPathFactory):
    args = [
        "--repository", str(python_repository), "--no-build-demo", "--redis-url", redis_server.url,
        "--jwt-secret-file", str(tokens.path), "--max-history", str(MAX_HISTORY), "--max-edits", str(MAX_EDITS),
        "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--edit-rate", "1000", "--edit-burst", "1000",
    ]  # fmt: skip
    with (
        run_gateway(args, tmp_path_factory.mktemp("fuzz-gateway")) as gateway,
        grpc.insecure_channel(gateway.target) as channel,
    ):
        yield gateway, pb_grpc.RecommenderStub(channel), ServedModel.load(python_repository)


# ----------------------------------------------------------------------------- strategies

# Any unicode a client can encode (protobuf strings are UTF-8: no lone surrogates), including
# control characters, combining marks, right-to-left text and emoji.
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
numbers = st.one_of(
    st.floats(0.0, 3.0),  # valid scales, so that some edit sets pass and reach the model
    st.floats(0.0, 0.3),  # valid shares
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e-300, -1.0, 1e308, math.nan, math.inf, -math.inf]),
    st.integers(-(10**18), 10**18).map(float),
)
int32 = st.integers(-(2**31), 2**31 - 1)


# Plain ids most of the time, so that the other fields get exercised too; the rest are hostile.
plain_ids = st.from_regex(r"fuzz-[a-z0-9]{1,8}", fullmatch=True)
special_ids = st.sampled_from(["", " ", "\x00", "a\nb", "a" * 256, "a" * 257, "é" * 200, "x" * 100_000, "}", "}fuzz", "{}", "{fuzz}"])


def user_ids() -> st.SearchStrategy[str]:
    return st.one_of(plain_ids, plain_ids, plain_ids, text, special_ids)


@st.composite
def edits(draw: st.DrawFn, tags: list[str]) -> list[pb.Edit]:
    out = []
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3, MAX_EDITS, MAX_EDITS + 1]))):
        edit = pb.Edit(prototype=draw(st.one_of(st.sampled_from(tags), text)))  # duplicates happen often
        kind = draw(st.sampled_from(["scale", "weight", None]))
        if kind:
            setattr(edit, kind, draw(numbers))
        out.append(edit)
    return out


@st.composite
def recommend_requests(draw: st.DrawFn, model: ServedModel) -> pb.RecommendRequest:
    catalog = st.sampled_from(model.metadata.item_ids)
    size = draw(st.sampled_from([0, 1, 5, 10, 20, 20, MAX_HISTORY, MAX_HISTORY + 1, 300]))
    return pb.RecommendRequest(
        user_id=draw(user_ids()),
        history=draw(st.lists(st.one_of(catalog, catalog, catalog, text), min_size=min(size, 20), max_size=size)),
        k=draw(st.one_of(st.integers(1, model.k_max), st.integers(1, model.k_max), int32, st.integers(-2, model.k_max + 2))),
        edits=draw(edits(model.metadata.tag_names)),
        include_heard=draw(st.booleans()),
    )


# ----------------------------------------------------------------------------- checks


def status_of(call, request, metadata) -> tuple[grpc.StatusCode, object]:
    try:
        return grpc.StatusCode.OK, call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        return error.code(), error.details()


def check_profile(profile: pb.Profile, model: ServedModel) -> None:
    shares = [w.weight for w in profile.weights]
    assert [w.prototype for w in profile.weights] == model.metadata.tag_names
    assert all(0.0 <= s <= 1.0 + 1e-6 and math.isfinite(s) for s in shares), shares
    assert math.isclose(sum(shares), 1.0, abs_tol=1e-4), sum(shares)


def check(code: grpc.StatusCode, detail: object, model: ServedModel, request: object) -> None:
    """`request` was sent with a token valid for it."""
    event(code.name)  # `pytest --hypothesis-show-statistics` shows how often each status came back
    oversized = hasattr(request, "ByteSize") and request.ByteSize() > MAX_MESSAGE_BYTES
    if oversized:  # grpc's own limit, before any handler (its message is grpc's)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{code.name} for a request over the size limit"
        return
    assert code == grpc.StatusCode.OK or code in CLIENT_MISTAKES, f"{code.name}: {detail}\nrequest: {request!r:.500}"
    if code != grpc.StatusCode.OK:
        assert isinstance(detail, str) and detail, "an error must say what was wrong"
    if code == grpc.StatusCode.OK and isinstance(request, pb.RecommendRequest):
        items, k = detail.items, request.k
        assert 1 <= k <= model.k_max and len(items) <= k
        scores = [item.score for item in items]
        assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)
        assert {item.item_id for item in items} <= set(model.metadata.item_ids)
        check_profile(detail.profile, model)
    if code == grpc.StatusCode.OK and isinstance(request, pb.EditProfileRequest) and detail.HasField("profile"):
        check_profile(detail.profile, model)


# ----------------------------------------------------------------------------- properties


@FUZZ
@given(data=st.data())
def test_recommend_never_fails_internally(served, tokens: Tokens, data: st.DataObject) -> None:
    gateway, stub, model = served
    request = data.draw(recommend_requests(model))
    code, detail = status_of(stub.Recommend, request, tokens.service())
    check(code, detail, model, request)


@FUZZ
@given(data=st.data())
def test_edit_profile_never_fails_internally(served, tokens: Tokens, data: st.DataObject) -> None:
    gateway, stub, model = served
    user = data.draw(st.one_of(user_ids(), st.just("fuzz-known")))
    if user == "fuzz-known":  # a user with a cached profile, so edits are checked against it
        history = model.metadata.item_ids[:10]
        stub.Recommend(pb.RecommendRequest(user_id=user, history=history, k=1), metadata=tokens.service(), timeout=30)
    request = pb.EditProfileRequest(
        user_id=user, edits=data.draw(edits(model.metadata.tag_names)), reset=data.draw(st.booleans())
    )
    code, detail = status_of(stub.EditProfile, request, tokens.service())
    check(code, detail, model, request)


@FUZZ
@given(user=user_ids(), token=st.one_of(st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E))))
def test_get_profile_and_tokens_never_fail_internally(served, tokens: Tokens, user: str, token: str | None) -> None:
    gateway, stub, model = served
    request = pb.GetProfileRequest(user_id=user)
    for metadata in (tokens.service(), tokens.user(user or "someone")):  # valid for this user
        code, detail = status_of(stub.GetProfile, request, metadata)
        check(code, detail, model, request)
    for call, garbage in [(stub.GetProfile, request), (stub.ListPrototypes, pb.ListPrototypesRequest())]:
        code, detail = status_of(call, garbage, bearer_metadata(token) if token else None)
        # refused before its body is read: an oversized body too is UNAUTHENTICATED, not grpc's size error
        assert code == grpc.StatusCode.UNAUTHENTICATED, (code, detail)


# ----------------------------------------------------------------------------- valid input gets OK

valid_ids = st.from_regex(r"valid-[a-z0-9]{1,8}", fullmatch=True)  # never edited by the fuzzing above


@st.composite
def valid_edits(draw: st.DrawFn, tags: list[str]) -> list[pb.Edit]:
    """Scales of distinct prototypes, none 0: they can never leave a head without weight."""
    chosen = draw(st.lists(st.sampled_from(tags), max_size=MAX_EDITS, unique=True))
    return [pb.Edit(prototype=tag, scale=draw(st.floats(0.1, 3.0))) for tag in chosen]


@FUZZ
@given(data=st.data())
def test_valid_requests_get_ok(served, tokens: Tokens, data: st.DataObject) -> None:
    gateway, stub, model = served
    catalog, tags = model.metadata.item_ids, model.metadata.tag_names
    user = data.draw(valid_ids)
    metadata = data.draw(st.sampled_from([tokens.service(), tokens.user(user)]))
    recommend = pb.RecommendRequest(
        user_id=user,
        history=data.draw(st.lists(st.sampled_from(catalog), min_size=1, max_size=MAX_HISTORY)),
        k=data.draw(st.integers(1, model.k_max)),
        edits=data.draw(valid_edits(tags)),
        include_heard=data.draw(st.booleans()),
    )
    edit = pb.EditProfileRequest(user_id=user, edits=data.draw(valid_edits(tags)), reset=data.draw(st.booleans()))
    if not edit.edits:
        edit.reset = True  # an EditProfile needs an edit or a reset
    for call, request in [
        (stub.Recommend, recommend),
        (stub.EditProfile, edit),
        (stub.GetProfile, pb.GetProfileRequest(user_id=user)),
        (stub.Recommend, pb.RecommendRequest(user_id=user, k=recommend.k)),  # the cached profile
        (stub.ListPrototypes, pb.ListPrototypesRequest()),
    ]:
        code, detail = status_of(call, request, metadata)
        assert code == grpc.StatusCode.OK, f"{code.name}: {detail}\nrequest: {request!r:.500}"
        check(code, detail, model, request)


def test_server_is_healthy_after_the_fuzzing(served, tokens: Tokens) -> None:
    """Runs after the properties above (file order): the same process still serves correctly."""
    gateway, stub, model = served
    assert gateway.process.poll() is None
    assert gateway.health() == health_pb2.HealthCheckResponse.SERVING
    request = pb.RecommendRequest(user_id="after-fuzz", history=model.metadata.item_ids[:10], k=5)
    response = stub.Recommend(request, metadata=tokens.service(), timeout=30)
    assert len(response.items) == 5
    log = gateway.log()
    assert "unhandled error" not in log and "Traceback" not in log, gateway.log_tail(80)
