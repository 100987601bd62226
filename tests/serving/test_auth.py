"""serving/auth.py: the token rules (pure) and the interceptor on a real grpc.aio server.

The interceptor is tested on a two-method toy service (raw bytes, no proto) so these tests do not
depend on the gateway; tests/reliability/test_gateway_access.py checks the same rules end to end."""

from __future__ import annotations

import base64
import hmac
import json
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving import auth
from serving.auth import AccessDenied, AuthError, Principal, Role, TokenVerifier
from serving.config import ServingConfig
from serving.errors import ApronError
from tests.polling import wait_until

SECRET = b"s" * 32


def verifier(issuer: str = "apron") -> TokenVerifier:
    return TokenVerifier(auth.secret_key(SECRET), issuer=issuer)


# ----------------------------------------------------------------------------- remembered tokens


def counting_decode(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every full JWT decode (the check the cache saves)."""
    calls: list[str] = []
    decode = jwt.decode

    def counted(token: str, *args: object, **kwargs: object) -> object:
        calls.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counted)
    return calls


def test_a_verified_token_is_remembered_until_its_exp_then_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    strict = TokenVerifier(auth.secret_key(SECRET), leeway_s=0.0)
    token = auth.mint_token(SECRET, "alice", "user", ttl_s=2)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    decodes = counting_decode(monkeypatch)
    assert strict.verify(token) == strict.verify(token) == Principal("alice", Role.USER)
    assert len(decodes) == 1 and strict.cached == 1  # the second call was answered from memory
    wait_until(lambda: time.time() > exp, "the token's exp has passed")
    for _ in range(2):  # refused as without the cache, and never remembered again
        with pytest.raises(AuthError, match="has expired"):
            strict.verify(token)
    assert strict.cached == 0 and len(decodes) == 3


def test_tokens_that_fail_are_never_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = counting_decode(monkeypatch)
    checker = verifier()
    bad = [
        auth.mint_token(b"k" * 32, "alice", "user"),  # another key's signature
        auth.mint_token(SECRET, "alice", "user", ttl_s=-3600),  # expired
        auth.mint_token(SECRET, "alice", "user", issuer="someone-else"),
        jwt.encode({"sub": "alice", "role": "admin", "iss": "apron", "iat": int(time.time()), "exp": int(time.time()) + 60},
                   SECRET, algorithm="HS256"),  # no such role
        auth.mint_token(SECRET, "alice", "user", ttl_s=10 * auth.DEFAULT_MAX_LIFETIME_S),  # lives too long
    ]
    for token in bad:
        for _ in range(2):
            with pytest.raises(AuthError):
                checker.verify(token)
    assert checker.cached == 0 and len(decodes) == 2 * len(bad)  # each refusal was a full check
    other = TokenVerifier(auth.secret_key(b"k" * 32))  # a token one verifier remembers means nothing to another
    good = auth.mint_token(SECRET, "alice", "user")
    assert checker.verify(good).subject == "alice"
    with pytest.raises(AuthError, match="invalid bearer token"):
        other.verify(good)


def test_remembered_tokens_are_bounded_and_checked_again_after_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = counting_decode(monkeypatch)
    now = [time.time()]
    checker = TokenVerifier(auth.secret_key(SECRET), cache_size=2, cache_s=60.0, clock=lambda: now[0])
    tokens = [auth.mint_token(SECRET, f"user-{i}", "user") for i in range(3)]
    for token in tokens:
        checker.verify(token)
    assert checker.cached == 2  # the least recently used one was dropped
    checker.verify(tokens[2])
    assert len(decodes) == 3
    checker.verify(tokens[0])  # dropped: checked in full again
    assert len(decodes) == 4
    now[0] += 61.0  # past the cap, still before exp
    assert checker.verify(tokens[0]).subject == "user-0" and len(decodes) == 5


# ----------------------------------------------------------------------------- authorize


@pytest.mark.parametrize("method", ["GetProfile", "EditProfile", "Recommend"])
def test_user_may_only_touch_own_profile(method: str) -> None:
    alice = Principal("alice", Role.USER)
    auth.authorize(alice, method, "alice")
    with pytest.raises(AccessDenied, match="another user's profile"):
        auth.authorize(alice, method, "bob")
    with pytest.raises(AccessDenied):
        auth.authorize(alice, method, "")  # an empty id is not "mine" either


def test_service_may_call_for_anyone_and_lists_need_no_match() -> None:
    auth.authorize(Principal("batch", Role.SERVICE), "EditProfile", "bob")
    auth.authorize(Principal("alice", Role.USER), "ListPrototypes", "")
    auth.authorize(auth.ANONYMOUS, "EditProfile", "bob")  # what the boundary runs as with --no-auth


@pytest.mark.parametrize("method", ["GetProfile", "EditProfile", "Recommend", "ListPrototypes"])
def test_no_principal_fails_closed(method: str) -> None:
    with pytest.raises(AccessDenied, match="no verified caller"):
        auth.authorize(None, method, "bob")


# ----------------------------------------------------------------------------- tokens


def test_round_trip_hs256() -> None:
    token = auth.mint_token(SECRET, "alice", "user")
    assert verifier().verify(token) == Principal("alice", Role.USER)


@pytest.mark.parametrize(
    ("make_token", "message"),
    [
        (lambda: auth.mint_token(SECRET, "alice", "user", ttl_s=-120), "expired"),
        (lambda: auth.mint_token(SECRET, "alice", "user", issuer="mallory"), "not issued by"),
        (lambda: auth.mint_token(b"x" * 32, "alice", "user"), "Signature verification failed"),
        (lambda: auth.mint_token(SECRET, "alice", "admin"), None),  # mint refuses unknown roles
        (
            lambda: jwt.encode({"sub": "a", "iss": "apron", "iat": time.time(), "exp": time.time() + 60, "role": "root"}, SECRET),
            "role",
        ),
        (lambda: jwt.encode({"sub": "a", "iss": "apron", "iat": time.time(), "exp": time.time() + 60}, SECRET), "role"),
        (lambda: jwt.encode({"sub": "a", "iss": "apron", "exp": time.time() + 60, "role": "user"}, SECRET), "iat"),
        (  # an issue time in the future (beyond the leeway)
            lambda: jwt.encode({"sub": "a", "iss": "apron", "iat": time.time() + 600, "exp": time.time() + 900, "role": "user"}, SECRET),
            "iat",
        ),
        # a token for 35 years (exp in 2061): over the maximum lifetime however valid its signature
        (lambda: auth.mint_token(SECRET, "alice", "service", ttl_s=35 * 365 * 86400), "at most 720 h"),
        (lambda: jwt.encode({"sub": "a", "iss": "apron", "iat": time.time(), "role": "user"}, SECRET), "exp"),
        (
            lambda: jwt.encode({"sub": "", "iss": "apron", "iat": time.time(), "exp": time.time() + 60, "role": "user"}, SECRET),
            "(?i)sub",
        ),
        (
            lambda: jwt.encode({"sub": 7, "iss": "apron", "iat": time.time(), "exp": time.time() + 60, "role": "user"}, SECRET),
            "(?i)sub",
        ),
        # alg=none must never pass, whatever the payload says
        (
            lambda: jwt.encode(
                {"sub": "a", "iss": "apron", "exp": time.time() + 60, "role": "service"},
                None,
                algorithm="none",
            ),
            "not allowed",
        ),
        (lambda: "not.a.jwt", "invalid bearer token"),
    ],
)
def test_bad_tokens_are_rejected(make_token, message: str | None) -> None:
    if message is None:
        with pytest.raises(ValueError):
            make_token()
        return
    with pytest.raises(AuthError, match=message):
        verifier().verify(make_token())


def signed_claims(**changes: object) -> str:
    """A correctly signed token whose claims are a valid user token's with `changes` (any JSON
    value: PyJWT's encode refuses some of them, so the payload is signed as raw JSON)."""
    now = time.time()
    claims = {"sub": "alice", "iss": "apron", "iat": int(now), "exp": int(now) + 600, "role": "user", **changes}
    return jwt.api_jws.PyJWS().encode(json.dumps(claims).encode(), SECRET, "HS256")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"role": ["user"]}, "role"),
        ({"role": {"user": 1}}, "role"),
        ({"role": 1}, "role"),
        ({"iat": str(int(time.time()))}, "`iat` must be a NumericDate"),  # int("...") passes PyJWT
        ({"exp": str(int(time.time()) + 600)}, "`exp` must be a NumericDate"),
        ({"nbf": str(int(time.time()))}, "`nbf` must be a NumericDate"),
        ({"iat": True}, "`iat` must be a NumericDate"),
        ({"exp": [1]}, "exp"),
        ({"iat": 1e308}, "iat"),
        ({"exp": 1e308}, "at most 720 h"),
        ({"iss": ["apron"]}, "not issued by"),
        ({"sub": ["alice"]}, "(?i)sub"),
        ({"nbf": int(time.time()) + 3600}, "`nbf` is in the future"),  # not "iat"
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 4000}, "`iat` is in the future"),
    ],
)
def test_malformed_claims_in_a_signed_token_are_unauthenticated(changes: dict, message: str) -> None:
    """A good signature over claims of the wrong JSON type is an AuthError (UNAUTHENTICATED) that
    names the claim, never a TypeError (which the gateway would answer INTERNAL)."""
    with pytest.raises(AuthError, match=message):
        verifier().verify(signed_claims(**changes))
    assert verifier().verify(signed_claims(nbf=int(time.time()) - 10)).subject == "alice"  # a valid nbf passes


def test_audience_is_required_when_configured() -> None:
    strict = TokenVerifier(auth.secret_key(SECRET), audience="apron-gateway")
    assert strict.verify(auth.mint_token(SECRET, "alice", "user", audience="apron-gateway")).subject == "alice"
    with pytest.raises(AuthError, match="audience 'apron-gateway'"):
        strict.verify(auth.mint_token(SECRET, "alice", "user", audience="billing"))
    with pytest.raises(AuthError, match="aud"):
        strict.verify(auth.mint_token(SECRET, "alice", "user"))  # none at all
    # without a configured audience, one in the token is not checked
    assert verifier().verify(auth.mint_token(SECRET, "alice", "user", audience="billing")).subject == "alice"


def test_max_lifetime_is_configurable() -> None:
    short = TokenVerifier(auth.secret_key(SECRET), max_lifetime_s=600)
    assert short.verify(auth.mint_token(SECRET, "alice", "user", ttl_s=600)).subject == "alice"
    with pytest.raises(AuthError, match="--jwt-max-lifetime-s"):
        short.verify(auth.mint_token(SECRET, "alice", "user", ttl_s=601))


def test_public_key_verification_and_no_algorithm_confusion(tmp_path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "rsa.pub").write_bytes(public_pem)
    key = auth.load_public_key(tmp_path / "rsa.pub")
    assert key.algorithms == ("RS256",)
    rs_verifier = TokenVerifier(key)
    token = auth.mint_token(private, "svc", "service", algorithm="RS256")
    assert rs_verifier.verify(token) == Principal("svc", Role.SERVICE)
    # The classic confusion attack: an HS256 token "signed" with the public key's PEM as the secret.
    # (built by hand: PyJWT itself refuses to sign with a PEM as an HMAC secret)
    header, payload = (
        base64.urlsafe_b64encode(part).rstrip(b"=")
        for part in (
            b'{"alg":"HS256","typ":"JWT"}',
            b'{"sub":"svc","iss":"apron","iat":1900000000,"exp":1900000600,"role":"service"}',
        )
    )
    signature = base64.urlsafe_b64encode(hmac.digest(public_pem, header + b"." + payload, "sha256")).rstrip(
        b"="
    )
    forged = b".".join([header, payload, signature]).decode()
    with pytest.raises(AuthError):
        rs_verifier.verify(forged)

    ec_private = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pub").write_bytes(
        ec_private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    ec_key = auth.load_public_key(tmp_path / "ec.pub")
    assert ec_key.algorithms == ("ES256",)
    assert (
        TokenVerifier(ec_key).verify(auth.mint_token(ec_private, "bob", "user", algorithm="ES256")).subject
        == "bob"
    )


def test_key_configuration_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(auth.AuthConfigError, match="missing.pem"):
        auth.load_public_key(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(auth.AuthConfigError, match="junk.pem: not a PEM public key"):
        auth.load_public_key(tmp_path / "junk.pem")
    with pytest.raises(auth.AuthConfigError, match="at least 32"):
        auth.secret_key("short")


def test_metadata_parsing() -> None:
    token = auth.mint_token(SECRET, "alice", "user")
    assert verifier().verify_metadata(auth.bearer_metadata(token)).subject == "alice"
    assert verifier().verify_metadata([("authorization", f"bearer   {token} ")]).subject == "alice"
    for metadata, message in [
        ([], "missing bearer token"),
        (None, "missing bearer token"),
        ([("authorization", token)], "must be `Bearer <token>`"),
        ([("authorization", "Basic abc")], "must be `Bearer <token>`"),
        ([("authorization", "Bearer ")], "must be `Bearer <token>`"),
        ([*auth.bearer_metadata(token), *auth.bearer_metadata(token)], "more than one"),
    ]:
        with pytest.raises(AuthError, match=message):
            verifier().verify_metadata(metadata)


def test_dev_secret_is_created_once_and_private(tmp_path) -> None:
    path = tmp_path / "auth" / "jwt_secret"
    first = auth.dev_secret(path)
    second = auth.dev_secret(path)
    assert first == second and len(first) >= 32
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert [p.name for p in path.parent.iterdir()] == ["jwt_secret"]  # no temp file left behind
    auth.secret_key(first)  # long enough for HS256


def test_verification_key_resolution(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    key, is_dev = auth.verification_key()
    assert is_dev and key.key == (tmp_path / auth.DEFAULT_DEV_SECRET).read_bytes()
    (tmp_path / "secret").write_text("z" * 40 + "\n")
    key, is_dev = auth.verification_key(secret_file="secret")
    assert not is_dev and key.key == b"z" * 40 and key.algorithms == ("HS256",)
    (tmp_path / "short").write_text("z" * 8)
    with pytest.raises(auth.AuthConfigError, match="secret file short: .*at least 32"):
        auth.verification_key(secret_file="short")
    with pytest.raises(auth.AuthConfigError, match="secret file absent"):
        auth.verification_key(secret_file="absent")
    with pytest.raises(auth.AuthConfigError, match="not both"):
        auth.verification_key(public_key="a.pem", secret_file="secret")


# ----------------------------------------------------------------------------- interceptor


# The toy service's own error boundary, as the servicer's: the interceptor decides no status, the
# handlers raise, and the boundary maps (and records the rejection).
rejected: list[str] = []


def _boundary(name: str, handler):
    async def wrapped(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await handler(request)
        except ApronError as error:
            rejected.append(name)
            await context.abort(error.code, str(error))

    return wrapped


async def _whoami(request: bytes) -> bytes:
    principal = auth.current_principal()
    return f"{principal.subject}/{principal.role.value}".encode() if principal else b"nobody"


async def _whoami_stream(request: bytes, context: grpc.aio.ServicerContext):
    try:
        for _ in range(2):
            yield await _whoami(request)
    except ApronError as error:
        rejected.append("WhoamiStream")
        await context.abort(error.code, str(error))


async def _edit(request: bytes) -> bytes:
    auth.authorize(auth.current_principal(), "EditProfile", request.decode())
    return b"ok"


@pytest.fixture
async def toy_server():
    rejected.clear()
    server = grpc.aio.server(interceptors=[auth.AuthInterceptor(verifier())])
    handlers = {
        "Whoami": grpc.unary_unary_rpc_method_handler(_boundary("Whoami", _whoami)),
        "WhoamiStream": grpc.unary_stream_rpc_method_handler(_whoami_stream),
        "EditProfile": grpc.unary_unary_rpc_method_handler(_boundary("EditProfile", _edit)),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("toy.Toy", handlers)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, rejected
    await server.stop(None)


async def test_interceptor_end_to_end(toy_server) -> None:
    channel, rejected = toy_server
    whoami = channel.unary_unary("/toy.Toy/Whoami")
    stream = channel.unary_stream("/toy.Toy/WhoamiStream")
    edit = channel.unary_unary("/toy.Toy/EditProfile")
    alice = auth.bearer_metadata(auth.mint_token(SECRET, "alice", "user"))
    service = auth.bearer_metadata(auth.mint_token(SECRET, "batch", "service"))

    assert await whoami(b"", metadata=alice, timeout=10) == b"alice/user"
    assert [r async for r in stream(b"", metadata=service, timeout=10)] == [b"batch/service"] * 2
    assert await edit(b"alice", metadata=alice, timeout=10) == b"ok"
    assert await edit(b"bob", metadata=service, timeout=10) == b"ok"
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await edit(b"bob", metadata=alice, timeout=10)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert rejected == ["EditProfile"]
    rejected.clear()

    for metadata in [None, auth.bearer_metadata(auth.mint_token(b"y" * 32, "alice", "service"))]:
        for call in (whoami, edit):
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await call(b"bob", metadata=metadata, timeout=10)
            assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            _ = [r async for r in stream(b"", metadata=metadata, timeout=10)]
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rejected == ["Whoami", "EditProfile", "WhoamiStream"] * 2

    # Health checks need no token. (Nothing asserts here that the principal does not leak from one
    # call into the next: grpc.aio runs each call, its interceptors included, in a task of its own,
    # so even an interceptor that never reset it could not leak it; this test's own context was
    # never the server's.)
    check = health_pb2_grpc.HealthStub(channel).Check
    assert (
        await check(health_pb2.HealthCheckRequest(), timeout=10)
    ).status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert auth.is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", "10.0.0.5", "gateway", "example.com"])
def test_development_auth_is_refused_beyond_loopback(host: str, tmp_path, monkeypatch) -> None:
    from serving.config import ServingConfig

    monkeypatch.chdir(tmp_path)
    assert not auth.is_loopback(host)
    for config, message in [
        (ServingConfig(host=host), "development secret"),
        (ServingConfig(host=host, auth=False), "authentication off"),
    ]:
        with pytest.raises(auth.UnsafeExposure, match=message) as refused:
            auth.setup(config.security, config.host)
        assert "--jwt-secret-file" in str(refused.value) and "--insecure-dev" in str(refused.value)
    # said explicitly: allowed, but the development token is never printed beyond loopback
    assert setup_of(ServingConfig(host=host, insecure_dev=True)).service_token is None
    (tmp_path / "secret").write_bytes(SECRET)
    key = str(tmp_path / "secret")
    # a real key, in plaintext: every bearer token would cross the network readable
    with pytest.raises(auth.UnsafeExposure, match="without TLS") as refused:
        exposure_of(ServingConfig(host=host, jwt_secret_file=key))
    assert all(fix in str(refused.value) for fix in ("--tls-cert", "--behind-tls-proxy", "--insecure-dev"))
    exposure_of(ServingConfig(host=host, jwt_secret_file=key, tls_cert="tls.crt", tls_key="tls.key"))  # a real key, TLS: fine
    exposure_of(ServingConfig(host=host, jwt_secret_file=key, behind_tls_proxy=True))  # TLS ends in front of it: said so
    with pytest.raises(auth.UnsafeExposure, match="development secret"):  # which says nothing of the key
        exposure_of(ServingConfig(host=host, behind_tls_proxy=True))


def test_setup_from_config(tmp_path, monkeypatch, caplog) -> None:
    """The embedded default prints a working service token; --no-auth installs nothing and warns."""
    from serving.config import ServingConfig

    monkeypatch.chdir(tmp_path)
    dev = setup_of(ServingConfig())
    key, is_dev = auth.verification_key()
    assert is_dev and len(dev.interceptors) == 1
    assert TokenVerifier(key).verify(dev.service_token) == Principal(auth.DEV_TOKEN_SUBJECT, Role.SERVICE)

    (tmp_path / "secret").write_bytes(SECRET)
    configured = setup_of(ServingConfig(jwt_secret_file=str(tmp_path / "secret"), jwt_issuer="corp"))
    assert configured.service_token is None  # only the development key gets a printed token
    assert configured.interceptors[0].verifier.verify(auth.mint_token(SECRET, "a", "user", issuer="corp")).subject == "a"

    with caplog.at_level("WARNING"):
        off = setup_of(ServingConfig(auth=False))
    assert off.interceptors == () and off.service_token is None
    assert "authentication is OFF" in caplog.text


def setup_of(config: ServingConfig) -> auth.AuthSetup:
    return auth.setup(config.security, config.host)


def exposure_of(config: ServingConfig) -> None:
    auth.check_exposure(config.security, config.host)
