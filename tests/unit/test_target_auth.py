"""OAuth2 client credentials to the target, through the client's transport seam: a token before
the first call, a new one before it expires and once on a 403, one for the whole worker, and
neither the token nor the secret in a log line."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest

from streams.pipeline.outcomes import CallResult, RequestFault, State
from streams.settings import Settings
from streams.target.client import TargetClient

TOKEN_URL = "http://auth.test/diode/auth/token"
SECRET = "s3cret-client-secret"


class FakeAuth:
    """A token endpoint and a target that accepts only the tokens it issued and did not revoke."""

    def __init__(self, lifetime: int = 3600) -> None:
        self.lifetime = lifetime
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.token_requests: list[dict[str, Any]] = []
        self.token_down = False
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            if self.token_down:
                raise httpx.ConnectError("token endpoint down")
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            basic = request.headers.get("authorization", "")
            self.token_requests.append({**form, "basic": basic})
            if base64.b64decode(basic.removeprefix("Basic ")).decode() != f"streams:{SECRET}":
                return httpx.Response(401, json={"error": "invalid_client"})
            token = f"tok-{len(self.issued)}"
            self.issued.append(token)
            return httpx.Response(200, json={"access_token": token, "token_type": "Bearer",
                                             "expires_in": self.lifetime, "scope": form.get("scope")})
        self.calls += 1
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.issued or token in self.revoked:
            return httpx.Response(403, json={"detail": "Invalid token"})
        ids = [e["id"] for e in orjson.loads(request.content)["entities"]]
        return httpx.Response(200, json={"results": [
            {"id": i, "errors": None, "change_set": {"id": f"cs-{i}", "changes": []}} for i in ids]})


def settings(**extra: Any) -> Settings:
    values: dict[str, Any] = {"target_url": "http://target.test/api/plugins/diode", "target_token_url": TOKEN_URL,
                              "target_client_id": "streams", "target_client_secret": SECRET, **extra}
    return Settings(**values)


def body(n: int = 1) -> list[dict[str, Any]]:
    return [{"id": f"e{i}", "object_type": "dcim.site", "entity": {"site": {"name": f"s{i}"}}} for i in range(n)]


async def _with(auth: FakeAuth, run: Any, **extra: Any) -> Any:
    client = TargetClient(settings(**extra), transport=httpx.MockTransport(auth))
    try:
        return await run(client)
    finally:
        await client.aclose()


def test_a_token_is_fetched_before_the_first_call_and_reused() -> None:
    auth = FakeAuth()

    async def run(client: TargetClient) -> list[CallResult]:
        return [await client.bulk_plan_apply(body()) for _ in range(3)]

    results = asyncio.run(_with(auth, run))
    assert all(r.outcomes[0].state is State.NO_CHANGES for r in results)
    assert auth.issued == ["tok-0"] and auth.calls == 3
    request = auth.token_requests[0]
    assert request["grant_type"] == "client_credentials" and request["scope"] == "netbox:read netbox:write"


def test_a_short_lived_token_is_replaced_before_it_expires() -> None:
    auth = FakeAuth(lifetime=2)

    async def run(client: TargetClient) -> int:
        await client.bulk_plan_apply(body())
        await asyncio.sleep(2.1)
        result = await client.bulk_plan_apply(body())
        assert result.request_failure is None
        return client.tokens_fetched

    assert asyncio.run(_with(auth, run)) == 2
    assert auth.calls == 2  # no 403 was needed to notice


def test_a_403_gets_one_fresh_token_and_the_call_is_repeated() -> None:
    auth = FakeAuth()

    async def run(client: TargetClient) -> CallResult:
        await client.bulk_plan_apply(body())
        auth.revoked.add("tok-0")  # revoked, or forgotten by the introspection cache
        return await client.bulk_plan_apply(body())

    result = asyncio.run(_with(auth, run))
    assert result.request_failure is None
    assert auth.issued == ["tok-0", "tok-1"]


def test_calls_failing_together_refresh_the_token_once() -> None:
    auth = FakeAuth()

    async def run(client: TargetClient) -> list[CallResult]:
        await client.bulk_plan_apply(body())
        auth.revoked.add("tok-0")
        return list(await asyncio.gather(*(client.bulk_plan_apply(body()) for _ in range(4))))

    results = asyncio.run(_with(auth, run, http_concurrency=4))
    assert all(r.request_failure is None for r in results)
    assert auth.issued == ["tok-0", "tok-1"]


def test_a_403_with_a_fresh_token_is_a_credentials_failure() -> None:
    auth = FakeAuth()
    auth.issued.append("never-accepted")

    async def run(client: TargetClient) -> CallResult:
        auth.revoked.update(f"tok-{n}" for n in range(10))
        return await client.bulk_plan_apply(body())

    result = asyncio.run(_with(auth, run))
    assert result.request_failure is not None and result.request_failure.request is RequestFault.CREDENTIALS
    assert len(auth.token_requests) == 2  # the first token, and one fresh one after the 403


@pytest.mark.parametrize("problem", ["down", "wrong secret"])
def test_a_token_endpoint_that_gives_no_token_stops_the_flow(problem: str, caplog: pytest.LogCaptureFixture) -> None:
    auth = FakeAuth()
    auth.token_down = problem == "down"
    extra = {"target_client_secret": "wrong"} if problem == "wrong secret" else {}

    async def run(client: TargetClient) -> CallResult:
        return await client.bulk_plan_apply(body(2))

    with caplog.at_level(logging.DEBUG):
        result = asyncio.run(_with(auth, run, **extra))
    assert result.request_failure is not None and result.request_failure.request is RequestFault.CREDENTIALS
    assert auth.calls == 0
    assert "token endpoint" in result.request_failure.message
    assert SECRET not in caplog.text and "wrong" not in result.request_failure.message


def test_neither_token_nor_secret_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    auth = FakeAuth()

    async def run(client: TargetClient) -> None:
        await client.bulk_plan_apply(body())
        auth.revoked.add("tok-0")
        await client.bulk_plan_apply(body())

    with caplog.at_level(logging.DEBUG):
        asyncio.run(_with(auth, run))
    assert "tok-0" not in caplog.text and "tok-1" not in caplog.text and SECRET not in caplog.text
    assert "target token fetched" in caplog.text


def test_a_static_token_is_sent_as_a_bearer_header() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(403, json={"detail": "no"})

    async def run() -> CallResult:
        client = TargetClient(Settings(target_url="http://t.test", target_token="static-1"),
                              transport=httpx.MockTransport(handler))
        try:
            return await client.bulk_plan_apply(body())
        finally:
            await client.aclose()

    result = asyncio.run(run())
    assert seen == ["Bearer static-1"]  # no refresh to try: one call
    assert result.request_failure is not None and result.request_failure.request is RequestFault.CREDENTIALS
