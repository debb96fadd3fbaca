"""The worker's HTTP endpoints on STREAMS_WORKER_PORT (faust's ASGI hook):

    /health/live   200 while the worker's event loop answers: restart it only when this fails
    /health/ready  200 when Kafka, Postgres and the target can all take work, else 503
    /health        the three checks, each with its detail, and the same status code as ready
    /metrics       Prometheus text format

The checks are separate because their cures are: a target that is down is waited out by the
circuit breaker (restarting workers does not help), Postgres or Kafka down stops everything.
The target check reads the gates the breaker holds (no request is made for it); Kafka and
Postgres are asked, with short timeouts, at most once per CACHE_SECONDS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streams import metrics
from streams.gates import GATES, Gates
from streams.kafka.reader import Reader
from streams.kafka.topics import topic_names
from streams.resources import Resources
from streams.settings import Settings
from streams.target.calls import TARGET_SCOPE

CACHE_SECONDS = 2.0
KAFKA_CHECK_TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str
    since: float | None = None

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"ok": self.ok, "detail": self.detail}
        if self.since is not None:
            found["since"] = self.since
        return found


class KafkaCheck:
    """Can this worker reach the broker: the metadata of the ingest topic, read by one reader
    kept for the purpose (a metadata request, no group, nothing consumed) for the life of the
    process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._reader: Reader | None = None

    def __call__(self) -> Check:
        topic = topic_names(self.settings).ingest
        try:
            if self._reader is None:
                self._reader = Reader(self.settings)
                self._reader.timeout = min(self.settings.kafka_timeout, KAFKA_CHECK_TIMEOUT)
            count = len(self._reader.partitions(topic))
        except Exception as exc:  # noqa: BLE001 - any failure to answer is the finding
            return Check(False, f"{type(exc).__name__}: {str(exc)[:200]}")
        return Check(True, f"{count} partitions of the ingest topic visible")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def target_check(gates: Gates = GATES) -> Check:
    held = [gate for gate in gates.snapshot() if gate.scope == TARGET_SCOPE]
    if not held:
        return Check(True, "circuit breaker closed")
    first = min(held, key=lambda gate: gate.since)
    return Check(False, f"{first.name.value}: {first.reason}", first.since)


class Health:
    def __init__(self, postgres: Callable[[], Awaitable[bool]], kafka: Callable[[], Check],
                 target: Callable[[], Check] = target_check) -> None:
        self._postgres, self._kafka, self._target = postgres, kafka, target
        self._lock = asyncio.Lock()
        self._cached: tuple[float, dict[str, Check]] | None = None

    async def checks(self) -> dict[str, Check]:
        async with self._lock:  # one probe at a time, however often we are asked
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > CACHE_SECONDS:
                postgres_ok, kafka = await asyncio.gather(self._postgres(), asyncio.to_thread(self._kafka))
                postgres = Check(True, "answers") if postgres_ok else Check(False, "does not answer")
                self._cached = (now, {"kafka": kafka, "postgres": postgres})
            found = dict(self._cached[1])
        found["target"] = self._target()  # in memory: always current
        metrics.HEALTHY.set(1 if all(check.ok for check in found.values()) else 0)
        return found


def health_app(settings: Settings, resources: Resources, *, with_target: bool = True,
               kafka: Callable[[], Check] | None = None) -> Starlette:
    health = Health(resources.db.healthy, kafka or KafkaCheck(settings),
                    target_check if with_target else (lambda: Check(True, "no target in this topology")))

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        checks = await health.checks()
        ok = all(check.ok for check in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable",
                             "failing": sorted(name for name, check in checks.items() if not check.ok)},
                            status_code=200 if ok else 503)

    async def full(_: Request) -> Response:
        checks = await health.checks()
        ok = all(check.ok for check in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "live": True, "ready": ok,
                             "checks": {name: check.as_dict() for name, check in checks.items()}},
                            status_code=200 if ok else 503)

    async def metrics_page(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/health", full), Route("/health/live", live), Route("/health/ready", ready),
                             Route("/metrics", metrics_page)])
