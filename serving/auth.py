"""Who may call the gateway: signed bearer tokens (JWT) in gRPC metadata, with two roles.

A call carries `authorization: Bearer <jwt>`. The token is signed with a configured key (HS256 with
a shared secret, or RS256 / ES256 / EdDSA verified with a public key file) and must hold the claims
`sub` (the user id), `iss` (the configured issuer), `exp` and `role`:

- `user`: may read, edit and get recommendations for the profile whose `user_id` equals `sub`;
- `service`: may call for any user (other back ends, batch jobs, the load tests).

Two layers, so the rules stay a pure function that tests can call directly; neither decides a
status code: they raise, and the servicer's one error boundary maps, logs and counts:

1. `AuthInterceptor` (grpc.aio) verifies the token of every call except health checks and
   reflection, and runs the handler with the verified `Principal`, or with the `AuthError` of a
   missing or bad token, in a context variable (then without grpc reading the body: `_unread`);
2. the servicer's boundary calls `current_principal()`, which raises that `AuthError`
   (UNAUTHENTICATED), and its handlers call `authorize(principal, method, user_id)`, which raises
   `AccessDenied` (PERMISSION_DENIED) when a `user` asks for someone else's profile. Both fail
   closed: no verified caller, no access.

Tokens must also carry `iat`, may live at most `--jwt-max-lifetime-s` (exp - iat), and must name
`--jwt-audience` in `aud` when one is configured.

With auth switched off (`--no-auth`, an explicit choice that logs a warning, and refused beyond
loopback without `--insecure-dev`) no interceptor is installed and the boundary runs every call as
`ANONYMOUS`, a service principal.

The embedded default needs no setup: without a configured key, `verification_key()` uses a random
development secret created once at `artifacts/auth/jwt_secret` (mode 0600); `apron serve` prints a
service token for it and `apron token --sub USER --role user` mints more.
"""

from __future__ import annotations

import contextvars
import enum
import inspect
import ipaddress
import logging
import math
import os
import secrets
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from serving import stages
from serving.config import SecurityConfig
from serving.errors import ApronError

log = logging.getLogger(__name__)

METADATA_KEY = "authorization"  # gRPC metadata keys are lower case
DEFAULT_ISSUER = "apron"
DEFAULT_DEV_SECRET = Path("artifacts") / "auth" / "jwt_secret"  # relative to the working directory
DEV_TOKEN_SUBJECT = "apron-dev"
DEV_TOKEN_TTL_S = 7 * 24 * 3600.0  # the printed quick-start token: a week, then `apron token`
DEFAULT_MAX_LIFETIME_S = 30 * 24 * 3600.0  # longest exp - iat accepted unless configured
# Clock skew tolerated between the token's issuer and this server (seconds).
LEEWAY_S = 30.0
# Verified tokens remembered (TokenVerifier): how many, and for at most how long after their check.
TOKEN_CACHE_SIZE = 10_000
TOKEN_CACHE_S = 300.0

# Calls anyone may make without a token: load balancers' health checks and grpcurl's reflection.
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# RPCs that read or change one user's profile: a `user` may call them for its own `sub` only.
USER_SCOPED_METHODS = frozenset({"GetProfile", "EditProfile", "Recommend"})


class Role(enum.StrEnum):
    USER = "user"
    SERVICE = "service"


@dataclass(frozen=True)
class Principal:
    subject: str  # the token's `sub`: a user id, or a service's name
    role: Role


class AuthError(ApronError):
    """A missing, malformed, expired or wrongly signed token (-> UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class AccessDenied(ApronError):
    """A valid caller asking for a profile that is not theirs (-> PERMISSION_DENIED)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class AuthConfigError(ValueError):
    """The key material in the configuration cannot be used (missing file, wrong key type...)."""


# ----------------------------------------------------------------------------- the rule


def authorize(principal: Principal | None, method: str, user_id: str) -> None:
    """Raise AccessDenied unless `principal` may call `method` (short name, e.g. "EditProfile")
    for `user_id`. Fails closed: no principal (no verified caller) may call nothing."""
    if principal is None:
        raise AccessDenied(f"no verified caller for {method}: access is denied")
    if principal.role is Role.SERVICE or method not in USER_SCOPED_METHODS:
        return
    if principal.subject != user_id:
        raise AccessDenied(
            f"a user token for {principal.subject!r} may not call {method} for another user's profile"
        )


# with --no-auth: every call runs as this service principal (an explicit choice, never a default)
ANONYMOUS = Principal("anonymous", Role.SERVICE)

# The caller of the RPC being handled, as the interceptor found it: a Principal, the AuthError of
# its token, or None (no interceptor ran).
_principal: contextvars.ContextVar[Principal | AuthError | None] = contextvars.ContextVar("apron_principal", default=None)


def current_principal() -> Principal | None:
    """The verified caller of the RPC being handled; raises the AuthError of a missing or bad token;
    None when no interceptor ran (auth off, or outside an RPC)."""
    caller = _principal.get()
    if isinstance(caller, AuthError):
        raise AuthError(str(caller))
    return caller


def assume(principal: Principal) -> contextvars.Token:
    """Run the rest of this RPC as `principal` (the boundary, with auth off); `reset` undoes it."""
    return _principal.set(principal)


def reset(token: contextvars.Token) -> None:
    _principal.reset(token)


# ----------------------------------------------------------------------------- keys and tokens


@dataclass(frozen=True)
class VerificationKey:
    key: Any  # bytes (HMAC secret) or a cryptography public key
    algorithms: tuple[str, ...]  # exactly the ones this key may verify: no algorithm confusion


def _algorithms_for(public_key: Any) -> tuple[str, ...]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return ("RS256",)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if public_key.curve.name not in by_curve:
            raise AuthConfigError(f"unsupported EC curve {public_key.curve.name} for JWT")
        return (by_curve[public_key.curve.name],)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return ("EdDSA",)
    raise AuthConfigError(f"unsupported public key type {type(public_key).__name__} for JWT")


def load_public_key(path: str | Path) -> VerificationKey:
    """A PEM public key file (RSA, EC P-256/384/521 or Ed25519) and the one algorithm it verifies."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise AuthConfigError(f"JWT public key {path}: {error.strerror}") from error
    try:
        public_key = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise AuthConfigError(f"JWT public key {path}: not a PEM public key ({error})") from error
    return VerificationKey(public_key, _algorithms_for(public_key))


def secret_key(secret: str | bytes) -> VerificationKey:
    secret = secret.encode() if isinstance(secret, str) else secret
    if len(secret) < 32:  # RFC 7518 §3.2: an HS256 key must have at least 256 bits
        raise AuthConfigError(f"the JWT secret has {len(secret)} bytes; HS256 needs at least 32")
    return VerificationKey(secret, ("HS256",))


def dev_secret(path: str | Path = DEFAULT_DEV_SECRET) -> bytes:
    """The development secret at `path`, created (random, mode 0600) on first use."""
    path = Path(path)
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    # Written to a temp file then linked into place: two processes starting at once agree on one secret.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.write(fd, secret)
        os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process won the race; then read theirs
        except FileExistsError:
            return path.read_bytes().strip()
    finally:
        os.unlink(tmp)
    return secret


def read_secret_file(path: str | Path) -> VerificationKey:
    """A configured HS256 secret (surrounding whitespace ignored); errors name the file."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as error:
        raise AuthConfigError(f"JWT secret file {path}: {error.strerror}") from error
    try:
        return secret_key(data)
    except AuthConfigError as error:
        raise AuthConfigError(f"JWT secret file {path}: {error}") from error


def verification_key(public_key: str = "", secret_file: str = "") -> tuple[VerificationKey, bool]:
    """The key that verifies tokens, and whether it is the development secret: a public key file,
    else a secret file, else the development secret (created when missing)."""
    if public_key and secret_file:
        raise AuthConfigError("configure either a JWT public key or a secret file, not both")
    if public_key:
        return load_public_key(public_key), False
    if secret_file:
        return read_secret_file(secret_file), False
    return secret_key(dev_secret(DEFAULT_DEV_SECRET)), True


def mint_token(
    signing_key: Any,
    subject: str,
    role: Role | str,
    *,
    issuer: str = DEFAULT_ISSUER,
    ttl_s: float = 3600.0,
    algorithm: str = "HS256",
    now: float | None = None,
    audience: str = "",
) -> str:
    """A signed token for `subject` with `role` (HS256 secret, or a private key for RS/ES/EdDSA)."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": subject,
        "role": Role(role).value,
        "iss": issuer,
        "iat": int(issued),
        "exp": int(issued + ttl_s),
    }
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, signing_key, algorithm=algorithm)


def load_private_key(path: str | Path) -> tuple[Any, str]:
    """A PEM private key file (for `apron token` with RS/ES/EdDSA) and the algorithm it signs with."""
    path = Path(path)
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise AuthConfigError(f"JWT private key {path}: {error.strerror}") from error
    except (ValueError, TypeError) as error:
        raise AuthConfigError(f"JWT private key {path}: not an unencrypted PEM private key ({error})") from error
    return private_key, _algorithms_for(private_key.public_key())[0]


def mint_with_configured_key(
    subject: str,
    role: Role | str,
    *,
    secret_file: str = "",
    private_key: str = "",
    issuer: str = DEFAULT_ISSUER,
    ttl_s: float = 3600.0,
    audience: str = "",
) -> str:
    """`apron token`: sign with a private key file, else a secret file, else the development secret
    (the one `apron serve` verifies with when no key is configured; created if missing)."""
    if private_key:
        key, algorithm = load_private_key(private_key)
        return mint_token(key, subject, role, issuer=issuer, ttl_s=ttl_s, algorithm=algorithm, audience=audience)
    secret = (read_secret_file(secret_file) if secret_file else secret_key(dev_secret(DEFAULT_DEV_SECRET))).key
    return mint_token(secret, subject, role, issuer=issuer, ttl_s=ttl_s, audience=audience)


def _numeric_date(claims: dict[str, Any], name: str) -> float:
    """A time claim as seconds since the epoch: a finite JSON number (RFC 7519 NumericDate), else AuthError."""
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthError(
            f"the bearer token's `{name}` must be a NumericDate (a JSON number of seconds since the epoch), "
            f"got the {type(value).__name__} {value!r:.40}"
        )
    return float(value)


class TokenVerifier:
    """Checks a token's signature, issuer, audience (when configured), issue time, expiry, lifetime
    and role; returns the Principal or raises AuthError.

    A client sends the same token on every call, and checking it (a JWT decode and a signature) is
    a large part of a cached Recommend's own cost, so tokens that passed every check are remembered
    (`cache_size` of them, least recently used dropped first) until the earlier of their `exp` and
    `cache_s` after the check. Every answer is the one a full check would give: a token is only
    remembered once it passed, a later check can only fail by expiry (its `iat`, issuer, audience,
    lifetime and role do not change, nor does this verifier's key), and a remembered token is
    checked in full again from its `exp` on. Tokens that fail are never remembered."""

    def __init__(
        self,
        key: VerificationKey,
        issuer: str = DEFAULT_ISSUER,
        leeway_s: float = LEEWAY_S,
        *,
        audience: str = "",
        max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S,
        cache_size: int = TOKEN_CACHE_SIZE,
        cache_s: float = TOKEN_CACHE_S,
        clock: Callable[[], float] = time.time,
    ):
        self.key = key
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.audience = audience
        self.max_lifetime_s = max_lifetime_s
        self.cache_size = cache_size
        self.cache_s = cache_s
        self.clock = clock  # wall-clock seconds, as `exp` is
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()  # token -> (caller, valid until)

    @property
    def cached(self) -> int:
        """How many verified tokens are remembered."""
        return len(self._verified)

    def verify(self, token: str) -> Principal:
        found = self._verified.get(token)
        if found is not None:
            if self.clock() < found[1]:
                self._verified.move_to_end(token)
                return found[0]
            del self._verified[token]  # expired or past the cap: checked in full below
        principal, expires = self._check(token)
        now = self.clock()
        if self.cache_size > 0 and expires > now:  # within the leeway after exp: checked in full every time
            self._verified[token] = (principal, min(expires, now + self.cache_s))
            while len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)
        return principal

    def _check(self, token: str) -> tuple[Principal, float]:
        """The full check: the caller and the token's `exp`."""
        required = ["sub", "iss", "iat", "exp", "role", *(["aud"] if self.audience else [])]
        try:
            claims = jwt.decode(
                token,
                self.key.key,
                algorithms=list(self.key.algorithms),
                issuer=self.issuer,
                audience=self.audience or None,
                leeway=self.leeway_s,
                # without a configured audience a token naming one is still accepted (not ours to judge)
                options={"require": required, "verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthError("the bearer token has expired") from error
        except jwt.InvalidIssuerError as error:
            raise AuthError(f"the bearer token was not issued by {self.issuer!r}") from error
        except jwt.InvalidAudienceError as error:
            raise AuthError(f"the bearer token is not meant for audience {self.audience!r}") from error
        except jwt.ImmatureSignatureError as error:  # PyJWT says which claim: "... not yet valid (nbf)"
            claim = "nbf" if "nbf" in str(error) else "iat"
            raise AuthError(f"the bearer token's `{claim}` is in the future") from error
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid bearer token: {error}") from error
        # PyJWT accepts what int() accepts ("123" included) and never looks at `role`: a signed token
        # can still carry a claim of the wrong JSON type, which must be refused, never a TypeError
        issued, expires = _numeric_date(claims, "iat"), _numeric_date(claims, "exp")
        if "nbf" in claims:
            _numeric_date(claims, "nbf")
        lifetime = expires - issued
        if lifetime > self.max_lifetime_s:
            raise AuthError(
                f"the bearer token lives {lifetime / 3600:.0f} h (exp - iat); at most "
                f"{self.max_lifetime_s / 3600:g} h are accepted (--jwt-max-lifetime-s): mint a shorter one"
            )
        subject, role = claims["sub"], claims["role"]
        if not isinstance(subject, str) or not subject:
            raise AuthError("the bearer token's `sub` must be a non-empty string")
        if not isinstance(role, str) or role not in Role._value2member_map_:
            raise AuthError(f"the bearer token's role {role!r} is not one of {[r.value for r in Role]}")
        return Principal(subject, Role(role)), expires

    def verify_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        values = [value for key, value in (metadata or ()) if key == METADATA_KEY]
        if not values:
            raise AuthError("missing bearer token: send metadata `authorization: Bearer <token>`")
        if len(values) > 1:
            raise AuthError("more than one `authorization` metadata entry")
        value = values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the `authorization` metadata must be `Bearer <token>`")
        return self.verify(token.strip())


# ----------------------------------------------------------------------------- the interceptor


Caller = Principal | AuthError


def _wrap_unary(behavior: Callable, caller: Caller, clock: stages.StageClock) -> Callable:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        reset, reset_clock = _principal.set(caller), stages.attach(clock)
        try:
            result = behavior(request_or_iterator, context)
            return await result if inspect.isawaitable(result) else result
        finally:
            stages.end(reset_clock)
            _principal.reset(reset)

    return handler


def _wrap_streaming(behavior: Callable, caller: Caller, clock: stages.StageClock) -> Callable:
    if not inspect.isasyncgenfunction(behavior):  # a coroutine that writes via context.write
        return _wrap_unary(behavior, caller, clock)

    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        reset = _principal.set(caller)
        try:
            async for response in behavior(request_or_iterator, context):
                yield response
        finally:
            _principal.reset(reset)

    return handler


def _with_behavior(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour replaced by `wrap(behaviour)`, same streaming kind and codecs."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **codecs)
    return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **codecs)


def check_caller(
    verifier: TokenVerifier, metadata: Iterable[tuple[str, str | bytes]] | None
) -> tuple[Caller, stages.StageClock]:
    """The call's verified caller (or the AuthError of its token) and its stage clock, which starts
    with this check: the gRPC interceptor and the HTTP gateway (`serving/http.py`) alike."""
    clock = stages.StageClock(time.perf_counter())
    caller: Caller
    try:
        caller = verifier.verify_metadata(metadata)
    except AuthError as error:
        caller = error
    clock.mark(stages.AUTH)
    return caller, clock


def with_caller(behavior: Callable, caller: Caller, clock: stages.StageClock) -> Callable:
    """`behavior` (a unary handler) run with `check_caller`'s caller, exactly as the interceptor runs
    it: for a call that did not come through gRPC (HTTP/JSON). Its boundary answers an AuthError
    caller UNAUTHENTICATED before it touches the request (which may then be None)."""
    return _wrap_unary(behavior, caller, clock)


def _unread(handler: grpc.RpcMethodHandler, caller: AuthError, clock: stages.StageClock) -> grpc.RpcMethodHandler:
    """The handler of a call whose token failed: its own behaviour, whose boundary answers
    UNAUTHENTICATED (logged, counted, timed) before it touches the request, declared
    request-streaming so that grpc never reads the body, let alone parses it: a caller without a
    token costs no memory for what it sends (the wire protocol is the same for both kinds)."""
    behavior = _wrap_unary(handler.stream_unary if handler.request_streaming else handler.unary_unary, caller, clock)

    async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(None, context)  # never iterated: nothing is read

    return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=handler.response_serializer)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Verifies every call's bearer token (except health and reflection) and runs its handler with
    the verified Principal, or the token's AuthError, as `current_principal()`: the handler's error
    boundary, not this interceptor, answers UNAUTHENTICATED (and logs and counts it). A refused
    call's body is never read (`_unread`)."""

    def __init__(self, verifier: TokenVerifier):
        self.verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler  # unknown methods get UNIMPLEMENTED from grpc itself
        caller, clock = check_caller(self.verifier, handler_call_details.invocation_metadata)
        if isinstance(caller, AuthError) and not handler.response_streaming:
            return _unread(handler, caller, clock)
        wrap = _wrap_streaming if handler.response_streaming else _wrap_unary
        return _with_behavior(handler, lambda behavior: wrap(behavior, caller, clock))


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that carries `token` (for clients: `stub.Method(request, metadata=...)`)."""
    return ((METADATA_KEY, f"Bearer {token}"),)


def warn_auth_disabled() -> None:
    log.warning(
        "authentication is OFF (--no-auth): any caller can read and change every user's profile; "
        "never run like this outside a trusted test network"
    )


class UnsafeExposure(AuthConfigError):
    """Development auth (its secret, or none) on an address other than loopback."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only. Anything else, including
    0.0.0.0 / [::] (every interface) and other host names, is not."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uses_dev_secret(config: SecurityConfig) -> bool:
    return config.auth and not (config.jwt_public_key or config.jwt_secret_file)


def check_exposure(config: SecurityConfig, host: str) -> None:
    """Refuse (UnsafeExposure, naming the fix) to serve beyond loopback with the development secret,
    which anyone with a checkout of the project can sign tokens with, or with auth off, unless
    `insecure_dev` says so explicitly; and in plaintext, where every bearer token crosses the network
    readable, unless TLS ends in front of the gateway (`behind_tls_proxy`) or `insecure_dev`."""
    if is_loopback(host) or config.insecure_dev:
        return
    if not config.auth:
        raise UnsafeExposure(
            f"refusing to serve on {host} with authentication off (--no-auth): anyone who can reach "
            "the port could read and change every profile. Turn auth on with --jwt-secret-file or "
            "--jwt-public-key, bind --host 127.0.0.1, or pass --insecure-dev on a trusted test network"
        )
    if uses_dev_secret(config):
        raise UnsafeExposure(
            f"refusing to serve on {host} with the development secret ({DEFAULT_DEV_SECRET}): tokens "
            "for it can be minted by anyone with this checkout. Configure --jwt-secret-file (e.g. the one "
            "`make deploy-secrets` writes) or --jwt-public-key, bind --host 127.0.0.1, or pass --insecure-dev "
            "on a trusted test network"
        )
    if not config.tls_cert and not config.behind_tls_proxy:
        raise UnsafeExposure(
            f"refusing to serve on {host} without TLS: every caller's bearer token would cross the network in "
            "the clear. Give --tls-cert and --tls-key (e.g. the ones `make deploy-secrets` writes), bind --host "
            "127.0.0.1, pass --behind-tls-proxy when TLS ends in front of the gateway on a private network, or "
            "--insecure-dev on a trusted test network"
        )


@dataclass(frozen=True)
class AuthSetup:
    interceptors: tuple[grpc.aio.ServerInterceptor, ...]
    service_token: str | None  # minted only for the development secret, for the quick start
    verifier: TokenVerifier | None = None  # the interceptor's (None: auth off); the HTTP gateway checks with it too


def setup(config: SecurityConfig, host: str) -> AuthSetup:
    """The gateway's auth from its configuration: the interceptor (none with --no-auth, which logs a
    warning) and, with the development secret on loopback, a service token to print. Raises
    UnsafeExposure for development auth beyond loopback (`check_exposure`)."""
    check_exposure(config, host)
    if not config.auth:
        warn_auth_disabled()
        return AuthSetup((), None)
    key, is_dev = verification_key(config.jwt_public_key, config.jwt_secret_file)
    verifier = TokenVerifier(
        key, config.jwt_issuer, audience=config.jwt_audience, max_lifetime_s=config.jwt_max_lifetime_s
    )
    interceptor = AuthInterceptor(verifier)
    token = None
    if is_dev:
        log.warning(
            "auth uses the development secret %s: configure --jwt-secret-file or --jwt-public-key in production",
            DEFAULT_DEV_SECRET,
        )
    if is_dev and is_loopback(host):  # printed where only this machine's users can see and use it
        token = mint_token(
            key.key, DEV_TOKEN_SUBJECT, Role.SERVICE, issuer=config.jwt_issuer,
            ttl_s=min(DEV_TOKEN_TTL_S, config.jwt_max_lifetime_s), audience=config.jwt_audience,
        )  # fmt: skip
    return AuthSetup((interceptor,), token, verifier)
