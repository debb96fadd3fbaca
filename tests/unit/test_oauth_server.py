"""The development OAuth2 server: client credentials (RFC 6749) and introspection (RFC 7662 and
the diode plugin's Bearer form), in process through httpx's ASGI transport and a fake clock."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from streams.dev.oauth_server import Client, clients_from_env, create_app

TOKEN = "/diode/auth/token"
INTROSPECT = "/diode/auth/introspect"
SECRET = "s3cret-value"


class AppClient:
    """Synchronous calls into the app (Starlette's own AppClient warns about httpx)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://oauth.test") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(call())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(clock: Clock) -> AppClient:
    clients = {
        "streams": Client("streams", SECRET),
        "reader": Client("reader", "r", frozenset({"netbox:read"})),
    }
    return AppClient(create_app(clients, token_lifetime=3600, clock=clock))


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def _token(client: AppClient, **form: str) -> str:
    response = client.post(TOKEN, data={"grant_type": "client_credentials", "client_id": "streams",
                                        "client_secret": SECRET, **form})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_client_credentials_in_the_form(client: AppClient) -> None:
    response = client.post(TOKEN, data={"grant_type": "client_credentials", "client_id": "streams",
                                        "client_secret": SECRET, "scope": "netbox:read netbox:write"})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "netbox:read netbox:write"
    assert len(body["access_token"]) >= 32
    assert response.headers["cache-control"] == "no-store"


def test_client_credentials_with_basic_auth_and_default_scope(client: AppClient) -> None:
    response = client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=_basic("streams", SECRET))
    assert response.status_code == 200
    assert set(response.json()["scope"].split()) == {"netbox:read", "netbox:write"}


def test_basic_credentials_are_form_urlencoded_first(clock: Clock) -> None:
    client = AppClient(create_app({"a b": Client("a b", "p:w%d")}, clock=clock))
    response = client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=_basic("a+b", "p%3Aw%25d"))
    assert response.status_code == 200


@pytest.mark.parametrize("client_id, secret", [("streams", "wrong"), ("nobody", SECRET), ("streams", "")])
def test_wrong_credentials_are_invalid_client(client: AppClient, client_id: str, secret: str) -> None:
    response = client.post(TOKEN, data={"grant_type": "client_credentials", "client_id": client_id,
                                        "client_secret": secret})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    basic = client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=_basic(client_id, secret))
    assert basic.status_code == 401
    assert "Basic" in basic.headers["www-authenticate"]
    assert client.get("/_admin/stats").json()["token_requests_refused"] == 2


def test_no_credentials_are_invalid_client(client: AppClient) -> None:
    response = client.post(TOKEN, data={"grant_type": "client_credentials"})
    assert response.status_code == 401


def test_unsupported_and_missing_grant(client: AppClient) -> None:
    response = client.post(TOKEN, data={"grant_type": "password", "client_id": "streams",
                                        "client_secret": SECRET})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"
    missing = client.post(TOKEN, data={"client_id": "streams", "client_secret": SECRET})
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"


def test_json_body_is_not_a_token_request(client: AppClient) -> None:
    response = client.post(TOKEN, content=json.dumps({"grant_type": "client_credentials"}),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400


def test_scope_is_restricted_to_the_clients_scopes(client: AppClient) -> None:
    narrowed = client.post(TOKEN, data={"grant_type": "client_credentials", "scope": "netbox:read netbox:write"},
                           headers=_basic("reader", "r"))
    assert narrowed.json()["scope"] == "netbox:read"
    refused = client.post(TOKEN, data={"grant_type": "client_credentials", "scope": "netbox:write"},
                          headers=_basic("reader", "r"))
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_scope"


def test_introspection_plugin_style_bearer(client: AppClient, clock: Clock) -> None:
    token = _token(client, scope="netbox:read netbox:write")
    response = client.post(INTROSPECT, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    body = response.json()
    assert body["active"] is True
    assert body["scope"] == "netbox:read netbox:write"
    assert body["client_id"] == body["sub"] == "streams"
    assert body["iat"] == int(clock.now)
    assert body["exp"] - body["iat"] == 3600


def test_introspection_rfc7662_needs_client_authentication(client: AppClient) -> None:
    token = _token(client)
    unauthenticated = client.post(INTROSPECT, data={"token": token})
    assert unauthenticated.status_code == 401
    response = client.post(INTROSPECT, data={"token": token}, headers=_basic("reader", "r"))
    assert response.status_code == 200
    assert response.json()["active"] is True
    assert response.json()["client_id"] == "streams"


def test_introspection_of_expired_and_unknown_tokens(client: AppClient, clock: Clock) -> None:
    token = _token(client)
    clock.now += 3599
    assert client.post(INTROSPECT, headers={"Authorization": f"Bearer {token}"}).json()["active"] is True
    clock.now += 1
    assert client.post(INTROSPECT, headers={"Authorization": f"Bearer {token}"}).json() == {"active": False}
    assert client.post(INTROSPECT, headers={"Authorization": "Bearer not-a-token"}).json() == {"active": False}
    unknown = client.post(INTROSPECT, data={"token": "nope"}, headers=_basic("streams", SECRET))
    assert unknown.json() == {"active": False}


def test_introspection_without_a_token_is_a_bad_request(client: AppClient) -> None:
    assert client.post(INTROSPECT).status_code == 400
    assert client.post(INTROSPECT, headers={"Authorization": "Bearer "}).status_code == 400


def test_token_lifetime_changes_live_and_stats_count(client: AppClient, clock: Clock) -> None:
    assert client.get("/_admin/config").json() == {"token_lifetime": 3600}
    assert client.put("/_admin/config", json={"token_lifetime": 2}).json() == {"token_lifetime": 2}
    token = _token(client)
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.post(INTROSPECT, headers=bearer).json()["exp"] == int(clock.now) + 2
    clock.now += 2
    assert client.post(INTROSPECT, headers=bearer).json()["active"] is False
    _token(client)  # issuing purges the expired token
    stats = client.get("/_admin/stats").json()
    assert stats["tokens_issued"] == 2
    assert stats["introspections"] == 2
    assert stats["introspections_active"] == 1
    assert stats["tokens_live"] == 1
    assert client.put("/_admin/config", json={"token_lifetime": 0}).status_code == 400
    assert client.put("/_admin/config", content=b"nope").status_code == 400


def test_health(client: AppClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_clients_from_the_environment() -> None:
    clients_json = json.dumps({"streams": {"secret": "hush-42"}, "r": {"secret": "y", "scope": "a b"}})
    env = {"STREAMS_OAUTH_CLIENTS": clients_json}
    clients = clients_from_env(env)
    assert clients["streams"].scope == frozenset({"netbox:read", "netbox:write"})
    assert clients["r"].scope == frozenset({"a", "b"})
    assert clients["streams"].secret == "hush-42"
    assert "hush-42" not in repr(clients["streams"])
    with pytest.raises(SystemExit):
        clients_from_env({})
    with pytest.raises(SystemExit):
        clients_from_env({"STREAMS_OAUTH_CLIENTS": "[1]"})
