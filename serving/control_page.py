"""The control page on the HTTP port (`--http-port`): plain files in serving/page/, no build step.

    GET /                 serving/page/index.html   (pick artists, see the profile as bars, drag or
    GET /page/<file>      its script and style        remove a tag, watch the list change)
    GET /v1/dev-token     a token for the page, only where the quick start has one (below)

The page does nothing the API cannot: it calls SearchItems, Recommend, EditProfile and
ListPrototypes over HTTP/JSON with the caller's bearer token, through the same handlers, limits and
authorization as any client. Its token: one pasted by the person (kept in the tab's sessionStorage),
or, only where `auth.setup` minted the development service token (auth on, the development secret,
the gateway on loopback), a `user` token for `PAGE_USER` from `/v1/dev-token`, which also refuses a
request whose Host is not loopback (a DNS-rebinding page cannot fetch it). With --no-auth the page
needs none.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from serving import auth

PAGE_DIR = Path(__file__).with_name("page")
DEV_TOKEN_PATH = "/v1/dev-token"
PAGE_USER = "apron-page"  # the profile the development token may read and edit (role user)
PAGE_TOKEN_TTL_S = 3600.0
# the page loads only its own files: no CDN, no inline script
SECURITY_HEADERS = {"content-security-policy": "default-src 'self'", "x-content-type-options": "nosniff"}


def page_token(security: auth.AuthSetup, host: str) -> str | None:
    """A `user` token for PAGE_USER where the quick start has a development token (and the request
    came to a loopback host name), else None."""
    verifier = security.verifier
    if security.service_token is None or verifier is None or not auth.is_loopback(host):
        return None
    return auth.mint_token(
        verifier.key.key, PAGE_USER, auth.Role.USER, issuer=verifier.issuer, audience=verifier.audience,
        ttl_s=min(PAGE_TOKEN_TTL_S, verifier.max_lifetime_s),
    )  # fmt: skip


def page_routes(security: auth.AuthSetup) -> list[BaseRoute]:
    async def index(_request: Request) -> Response:
        return FileResponse(PAGE_DIR / "index.html", headers=SECURITY_HEADERS)

    async def dev_token(request: Request) -> Response:
        if security.verifier is None:  # --no-auth: calls need no token
            return JSONResponse({"auth": False, "user_id": PAGE_USER})
        token = page_token(security, request.url.hostname or "")
        if token is None:
            message = (
                "no development token here: this gateway verifies tokens from a configured key (or is not on "
                "loopback); paste a token from your issuer (`apron token --sub USER --secret-file ...`)"
            )
            return JSONResponse({"code": "not_found", "message": message}, 404)
        return JSONResponse({"auth": True, "token": token, "user_id": PAGE_USER})

    return [
        Route("/", index, methods=["GET"]),
        Route(DEV_TOKEN_PATH, dev_token, methods=["GET"]),
        Mount("/page", StaticFiles(directory=PAGE_DIR)),
    ]
