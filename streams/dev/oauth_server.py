"""A small OAuth2 server for development: the part diode-auth plays in production.

The NetBox diode plugin accepts a request only when the OAuth2 server named by its
`diode_target` setting says the request's bearer token is active with scope `netbox:write`.
This server issues opaque tokens to configured clients by the client-credentials grant
(RFC 6749 §4.4) and answers introspection (RFC 7662) in two forms: the standard one (the
token in the form body, the caller authenticated as a client) and the plugin's own (the token
as the request's Bearer header, an empty body).

    POST {base}/token        grant_type=client_credentials, client id/secret in the form or Basic
    POST {base}/introspect   {"active": true, "scope", "client_id", "exp", "iat", "sub"} or {"active": false}
    GET  /health
    GET  /_admin/stats       tokens issued, introspections: tests assert refreshes with these
    GET|PUT /_admin/config   {"token_lifetime": seconds}: tests make tokens expire mid-run

base is /diode/auth, matching the plugin's derivation from `grpc://host:port/diode`. Tokens
live in memory only (a restart revokes them all, as an expiry would); they are kept by their
SHA-256, and neither tokens nor secrets are ever logged. Clients come from the environment
(STREAMS_OAUTH_CLIENTS, JSON `{"client_id": {"secret": "…", "scope": "…"}}`), never argv.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote_plus

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

BASE_PATH = "/diode/auth"
CLIENTS_ENV = "STREAMS_OAUTH_CLIENTS"
DEFAULT_SCOPE = "netbox:read netbox:write"
DEFAULT_LIFETIME = 3600
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Client:
    client_id: str
    secret: str = field(repr=False)
    scope: frozenset[str] = frozenset(DEFAULT_SCOPE.split())


@dataclass(frozen=True)
class Grant:
    client_id: str
    scope: str
    iat: int
    exp: int
    expires_at: float  # exact: `exp` is whole seconds, and a 2 s token must live 2 s


@dataclass
class Stats:
    tokens_issued: int = 0
    token_requests_refused: int = 0
    introspections: int = 0
    introspections_active: int = 0


def clients_from_env(environ: dict[str, str] | None = None) -> dict[str, Client]:
    raw = (environ if environ is not None else os.environ).get(CLIENTS_ENV, "")
    if not raw:
        raise SystemExit(f"{CLIENTS_ENV} is not set: no OAuth2 client is configured")
    try:
        entries = json.loads(raw)
        return {
            client_id: Client(client_id, str(entry["secret"]),
                              frozenset(str(entry.get("scope", DEFAULT_SCOPE)).split()))
            for client_id, entry in entries.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        example = '{"client_id": {"secret": "…", "scope": "…"}}'
        raise SystemExit(f"{CLIENTS_ENV} must be JSON like {example}") from None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Opaque bearer tokens with an expiry, kept by digest; expired ones are purged as we go."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._grants: dict[str, Grant] = {}

    def issue(self, client: Client, scope: str, lifetime: int) -> tuple[str, Grant]:
        self._purge()
        token = secrets.token_urlsafe(32)
        now = self._clock()
        grant = Grant(client.client_id, scope, int(now), int(now) + lifetime, now + lifetime)
        self._grants[_digest(token)] = grant
        return token, grant

    def lookup(self, token: str) -> Grant | None:
        grant = self._grants.get(_digest(token))
        if grant is None or grant.expires_at <= self._clock():
            return None
        return grant

    def _purge(self) -> None:
        now = self._clock()
        for key in [key for key, grant in self._grants.items() if grant.expires_at <= now]:
            del self._grants[key]

    def __len__(self) -> int:
        return len(self._grants)


def _error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={**_NO_STORE, **(headers or {})})


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    client_id, _, secret = decoded.partition(":")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote_plus(client_id), unquote_plus(secret)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return None
    return header[7:].strip() or None


async def _form(request: Request) -> dict[str, str] | None:
    """The urlencoded body as a dict (first value of each key); None when it is not a form.

    Parsed here rather than with `request.form()`, which needs python-multipart for this too.
    """
    body = await request.body()
    if len(body) > _MAX_BODY:
        return None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if body and content_type != "application/x-www-form-urlencoded":
        return None
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


class OAuthServer:
    def __init__(self, clients: dict[str, Client], *, token_lifetime: int = DEFAULT_LIFETIME,
                 clock: Callable[[], float] = time.time) -> None:
        self.clients = clients
        self.token_lifetime = token_lifetime
        self.tokens = TokenStore(clock)
        self.stats = Stats()

    def authenticate(self, request: Request, form: dict[str, str]) -> Client | None:
        """The client named by Basic auth or by client_id/client_secret in the form, if its secret matches."""
        credentials = _basic_credentials(request)
        if credentials is None and form.get("client_id"):
            credentials = (form["client_id"], form.get("client_secret", ""))
        if credentials is None:
            return None
        client = self.clients.get(credentials[0])
        if client is None or not hmac.compare_digest(client.secret.encode(), credentials[1].encode()):
            return None
        return client

    async def token(self, request: Request) -> Response:
        form = await _form(request)
        if form is None:
            return _error(400, "invalid_request", "expected an application/x-www-form-urlencoded body")
        grant_type = form.get("grant_type")
        if not grant_type:
            return _error(400, "invalid_request", "grant_type is required")
        client = self.authenticate(request, form)
        if client is None:
            self.stats.token_requests_refused += 1
            log.info("token refused: unknown client or wrong secret")
            challenge = {"WWW-Authenticate": 'Basic realm="streams-dev-oauth"'}
            return _error(401, "invalid_client", "client authentication failed", challenge)
        if grant_type != "client_credentials":
            return _error(400, "unsupported_grant_type", "only client_credentials is supported")
        asked = form.get("scope", "").split()
        # The scope asked for, restricted to the client's; all of the client's when none is asked for.
        granted = [s for s in dict.fromkeys(asked) if s in client.scope] if asked else sorted(client.scope)
        scope = " ".join(granted)
        if not scope:
            return _error(400, "invalid_scope", "none of the requested scopes is allowed for this client")
        token, grant = self.tokens.issue(client, scope, self.token_lifetime)
        self.stats.tokens_issued += 1
        log.info("token issued to client %s, scope %r, lifetime %ds",
                 client.client_id, scope, self.token_lifetime)
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": grant.exp - grant.iat, "scope": scope}, headers=_NO_STORE)

    async def introspect(self, request: Request) -> Response:
        form = await _form(request)
        if form is None:
            return _error(400, "invalid_request", "expected an application/x-www-form-urlencoded body")
        token: str | None = form.get("token")
        if token:
            # RFC 7662: the caller is a protected resource and authenticates as a client.
            if self.authenticate(request, form) is None:
                return _error(401, "invalid_client", "introspection needs client authentication",
                              {"WWW-Authenticate": 'Basic realm="streams-dev-oauth"'})
        else:
            # The diode plugin's form: the token to check is the request's own Bearer token.
            token = _bearer(request)
            if token is None:
                return _error(400, "invalid_request", "no token: send it as `token` or as the Bearer header")
        self.stats.introspections += 1
        grant = self.tokens.lookup(token)
        if grant is None:
            return JSONResponse({"active": False}, headers=_NO_STORE)
        self.stats.introspections_active += 1
        return JSONResponse({"active": True, "scope": grant.scope, "client_id": grant.client_id,
                             "sub": grant.client_id, "token_type": "Bearer",
                             "exp": grant.exp, "iat": grant.iat}, headers=_NO_STORE)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats_view(self, request: Request) -> Response:
        return JSONResponse({**vars(self.stats), "tokens_live": len(self.tokens)})

    async def config(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                body = json.loads(await request.body() or b"{}")
                lifetime = int(body["token_lifetime"]) if "token_lifetime" in body else self.token_lifetime
            except (ValueError, TypeError, KeyError):
                return _error(400, "invalid_request", 'expected {"token_lifetime": seconds}')
            if lifetime < 1:
                return _error(400, "invalid_request", "token_lifetime must be at least 1 second")
            self.token_lifetime = lifetime
            log.info("token lifetime set to %ds", lifetime)
        return JSONResponse({"token_lifetime": self.token_lifetime})


def create_app(clients: dict[str, Client], *, token_lifetime: int = DEFAULT_LIFETIME,
               clock: Callable[[], float] = time.time) -> Starlette:
    server = OAuthServer(clients, token_lifetime=token_lifetime, clock=clock)
    app = Starlette(routes=[
        Route(f"{BASE_PATH}/token", server.token, methods=["POST"]),
        Route(f"{BASE_PATH}/introspect", server.introspect, methods=["POST"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/_admin/stats", server.stats_view, methods=["GET"]),
        Route("/_admin/config", server.config, methods=["GET", "PUT"]),
    ])
    app.state.oauth = server
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m streams.dev.oauth_server",
                                     description="A small OAuth2 server for development.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-lifetime", type=int, default=DEFAULT_LIFETIME, help="seconds (default 3600)")
    # Not read: names the service home on the command line so `streams dev` can tell its own
    # process from an unrelated one that reuses the pid (see streams.dev.processes).
    parser.add_argument("--home", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import uvicorn

    app = create_app(clients_from_env(), token_lifetime=args.token_lifetime)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
