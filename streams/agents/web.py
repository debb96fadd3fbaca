"""The worker's HTTP endpoints: `/health` (200 when Postgres answers, else 503) and `/metrics`
(Prometheus text format). Served by faust's ASGI hook on STREAMS_WORKER_PORT."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streams import metrics
from streams.resources import Resources


def health_app(resources: Resources) -> Starlette:
    async def health(_: Request) -> Response:
        ok = await resources.db.healthy()
        metrics.HEALTHY.set(1 if ok else 0)
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    async def metrics_page(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/health", health), Route("/metrics", metrics_page)])
