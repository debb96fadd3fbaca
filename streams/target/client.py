"""The HTTP seam to the target's `bulk-plan-apply` endpoint.

One pooled httpx client per worker: connections are reused, every call has a timeout, and a
semaphore bounds in-flight calls (STREAMS_HTTP_CONCURRENCY). Responses and transport errors are
classified here, once (streams.pipeline.outcomes); callers never see httpx exceptions. The
bearer token goes into a header and nowhere else: it is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from streams import metrics
from streams.errors import SettingsError
from streams.pipeline.outcomes import CallResult, classify_response, classify_transport_error
from streams.settings import Settings

log = logging.getLogger(__name__)

ENDPOINT = "/bulk-plan-apply/"


class TargetClient:
    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not settings.target_url:
            raise SettingsError("STREAMS_TARGET_URL: not set; the worker needs the target's base URL")
        headers = {"content-type": "application/json", "user-agent": "streams"}
        if settings.target_token is not None:
            headers["authorization"] = f"Bearer {settings.target_token.get_secret_value()}"
        limit = settings.http_concurrency
        self._client = httpx.AsyncClient(
            base_url=settings.target_url,
            headers=headers,
            timeout=httpx.Timeout(settings.target_timeout, connect=min(10.0, settings.target_timeout)),
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            transport=transport,
        )
        self._slots = asyncio.Semaphore(limit)

    async def bulk_plan_apply(self, entities: Sequence[dict[str, Any]]) -> CallResult:
        """POST one request of `{"id", "object_type", "entity"}` items; never raises for HTTP."""
        ids = [item["id"] for item in entities]
        body = orjson.dumps({"entities": entities})
        async with self._slots:
            started = time.perf_counter()
            try:
                response = await self._client.post(ENDPOINT, content=body)
            except httpx.HTTPError as exc:
                metrics.TARGET_REQUESTS.labels(status="error").inc()
                log.warning("target call failed", extra={"error": type(exc).__name__, "count": len(ids)})
                return classify_transport_error(ids, exc)
            finally:
                metrics.TARGET_SECONDS.observe(time.perf_counter() - started)
        metrics.TARGET_REQUESTS.labels(status=str(response.status_code)).inc()
        result = classify_response(ids, response.status_code, response.headers, response.content, time.time())
        if result.unknown_ids:
            log.warning("target returned results for ids that were not sent",
                        extra={"unknown": len(result.unknown_ids), "status": response.status_code})
        return result

    async def aclose(self) -> None:
        await self._client.aclose()
