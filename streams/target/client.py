"""The HTTP seam to the target's `bulk-plan-apply` endpoint.

One pooled httpx client per worker: connections are reused, every call has a timeout, and a
semaphore bounds in-flight calls (STREAMS_HTTP_CONCURRENCY). Responses and transport errors are
classified here, once (streams.pipeline.outcomes); callers never see httpx exceptions.

Credentials, one per worker:

- OAuth2 client credentials (STREAMS_TARGET_TOKEN_URL, _CLIENT_ID, _CLIENT_SECRET, _SCOPE),
  through authlib's httpx client: a token is fetched before the first call and again before
  it expires; a 401/403 makes this client fetch a new one once and repeat the call (calls
  that fail together refresh once, not once each). A token endpoint that cannot be reached or
  refuses the client is a CREDENTIALS failure: the flow stops until it answers again.
- or a static bearer token (STREAMS_TARGET_TOKEN), for targets that use one.

Tokens and secrets go into headers and nowhere else: they are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from streams import metrics
from streams.errors import SettingsError
from streams.pipeline.outcomes import (
    CallResult,
    ErrorClass,
    Failure,
    RequestFault,
    classify_response,
    classify_transport_error,
    whole,
)
from streams.settings import Settings

log = logging.getLogger(__name__)

ENDPOINT = "/bulk-plan-apply/"
TOKEN_TIMEOUT = 10.0
# Fetch a new token this long before the current one expires (at most a fifth of its life).
MAX_LEEWAY = 60.0


class TokenUnavailable(Exception):
    """The token endpoint did not give us a token (down, or refusing the client)."""


class TargetClient:
    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not settings.target_url:
            raise SettingsError("STREAMS_TARGET_URL: not set; the worker needs the target's base URL")
        limit = settings.http_concurrency
        options: dict[str, Any] = {
            "base_url": settings.target_url,
            "headers": {"content-type": "application/json", "user-agent": "streams"},
            "timeout": httpx.Timeout(settings.target_timeout, connect=min(10.0, settings.target_timeout)),
            "limits": httpx.Limits(max_connections=limit + 1, max_keepalive_connections=limit + 1),
            "transport": transport,
        }
        self._oauth: AsyncOAuth2Client | None = None
        if settings.target_token_url:
            secret = settings.target_client_secret
            self._oauth = AsyncOAuth2Client(
                client_id=settings.target_client_id,
                client_secret=secret.get_secret_value() if secret else None,
                scope=settings.target_scope,
                token_endpoint=settings.target_token_url,
                grant_type="client_credentials",
                update_token=self._token_updated,
                leeway=MAX_LEEWAY,
                **options,
            )
            self._client: httpx.AsyncClient = self._oauth
        else:
            if settings.target_token is not None:
                options["headers"]["authorization"] = f"Bearer {settings.target_token.get_secret_value()}"
            self._client = httpx.AsyncClient(**options)
        self._slots = asyncio.Semaphore(limit)
        self._token_lock = asyncio.Lock()
        self.tokens_fetched = 0

    # --- credentials ----------------------------------------------------------------------------

    async def _token_updated(self, token: dict[str, Any], **_: Any) -> None:
        """authlib fetched a new token by itself (the old one was about to expire)."""
        self._fitted(token)

    def _fitted(self, token: dict[str, Any]) -> None:
        assert self._oauth is not None
        self.tokens_fetched += 1
        metrics.TARGET_TOKENS.inc()
        lifetime = float(token.get("expires_in") or 0) or MAX_LEEWAY * 5
        # A short-lived token is refreshed at four fifths of its life, not after it is gone.
        self._oauth.leeway = int(min(MAX_LEEWAY, max(1.0, lifetime / 5)))
        log.info("target token fetched", extra={"expires_in_s": round(lifetime), "scope": token.get("scope")})

    async def _fetch_token(self, stale: str | None) -> None:
        """A new token, unless another call already replaced `stale` (the token that failed)."""
        assert self._oauth is not None
        async with self._token_lock:
            current = (self._oauth.token or {}).get("access_token")
            if current is not None and current != stale:
                return
            try:
                token = await self._oauth.fetch_token(timeout=TOKEN_TIMEOUT)
            except (httpx.HTTPError, OAuthError, ValueError, KeyError) as exc:
                # The message names the endpoint's answer; never the secret or a token.
                raise TokenUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from None
            self._fitted(token)

    def _current_token(self) -> str | None:
        return (self._oauth.token or {}).get("access_token") if self._oauth is not None else None

    # --- calls ----------------------------------------------------------------------------------

    async def bulk_plan_apply(self, entities: Sequence[dict[str, Any]]) -> CallResult:
        """POST one request of `{"id", "object_type", "entity"}` items; never raises for HTTP."""
        ids = [item["id"] for item in entities]
        body = orjson.dumps({"entities": entities})
        async with self._slots:
            result = await self._post(ids, body)
            failure = result.request_failure
            if self._oauth is not None and failure is not None and failure.request is RequestFault.CREDENTIALS:
                # Expired early, revoked, or the introspection cache lost it: one fresh token.
                result = await self._post(ids, body, refresh=True)
        if result.unknown_ids:
            log.warning("target returned results for ids that were not sent",
                        extra={"unknown": len(result.unknown_ids)})
        return result

    async def _post(self, ids: list[str], body: bytes, *, refresh: bool = False) -> CallResult:
        used = self._current_token()
        try:
            if self._oauth is not None and (refresh or used is None):
                await self._fetch_token(used)
        except TokenUnavailable as exc:
            metrics.TARGET_REQUESTS.labels(status="token_error").inc()
            log.error("target token not available", extra={"error": str(exc)})
            return whole(ids, Failure(ErrorClass.TRANSIENT, f"token endpoint: {exc}", request=RequestFault.CREDENTIALS))
        started = time.perf_counter()
        try:
            response = await self._client.post(ENDPOINT, content=body)
        except OAuthError as exc:  # the automatic refresh before expiry failed
            metrics.TARGET_REQUESTS.labels(status="token_error").inc()
            log.error("target token not refreshed", extra={"error": type(exc).__name__})
            return whole(ids, Failure(ErrorClass.TRANSIENT, f"token endpoint: {exc}", request=RequestFault.CREDENTIALS))
        except httpx.HTTPError as exc:
            metrics.TARGET_REQUESTS.labels(status="error").inc()
            log.warning("target call failed", extra={"error": type(exc).__name__, "count": len(ids)})
            return classify_transport_error(ids, exc)
        finally:
            metrics.TARGET_SECONDS.observe(time.perf_counter() - started)
        metrics.TARGET_REQUESTS.labels(status=str(response.status_code)).inc()
        return classify_response(ids, response.status_code, response.headers, response.content, time.time())

    async def aclose(self) -> None:
        await self._client.aclose()
