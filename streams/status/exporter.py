"""The backlog as Prometheus metrics: what `streams status` reads (lag, tiers, dead letters, rows,
open runs), read every STREAMS_METRICS_INTERVAL by the group's leader and set as gauges.

Only the leader exports it, so summing a gauge over every worker counts the backlog once;
a worker that loses the leadership clears its gauges. The reading is `collect()` itself, run in
a thread (it uses the sync confluent and psycopg clients) and bounded by their timeouts: the
numbers an operator sees on a dashboard are the numbers `streams status` prints.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import mode

from streams import metrics
from streams.kafka.topics import TopicNames, topic_names
from streams.pipeline.outcomes import ErrorClass
from streams.settings import Settings
from streams.status.collect import Status, collect

log = logging.getLogger(__name__)

_GAUGES_WITH_LABELS = (metrics.CONSUMER_LAG, metrics.TIER_DEPTH, metrics.TIER_NEXT_DUE, metrics.TIER_PAUSED,
                       metrics.ROWS, metrics.ROWS_ERRORED)
_GAUGES = (metrics.DLQ_RECORDS, metrics.OPEN_RUNS, metrics.OLDEST_OPEN_RUN)
_ERROR_CLASSES = {kind.value for kind in ErrorClass}


def topic_roles(names: TopicNames) -> dict[str, str]:
    """A bounded label for every topic the group consumes: its role, never its (prefixed) name."""
    roles = {names.ingest: "ingest", names.work: "work", names.dlq: "dlq", names.run_events: "run-events"}
    roles.update({topic: f"retry-{index}" for index, topic in enumerate(names.retry, start=1)})
    return roles


def export(status: Status, names: TopicNames) -> None:
    """Set the backlog gauges from one reading. A source the reading could not reach keeps its
    gauges unset (absent) rather than showing a stale or a zero value."""
    clear()
    roles = topic_roles(names)
    lag: dict[str, int] = {}
    for group in status.groups:
        role = roles.get(group.topic)
        if role is not None:
            lag[role] = lag.get(role, 0) + group.total
    for role, total in lag.items():
        metrics.CONSUMER_LAG.labels(topic=role).set(total)
    for tier in status.tiers:
        label = roles.get(tier.topic, "retry-?")
        metrics.TIER_DEPTH.labels(tier=label).set(tier.depth)
        metrics.TIER_NEXT_DUE.labels(tier=label).set(tier.next_due or 0)
        metrics.TIER_PAUSED.labels(tier=label).set(tier.paused)
    if status.dlq_records is not None:
        metrics.DLQ_RECORDS.set(status.dlq_records)
    database = status.database
    if database is not None:
        for count in database.rows:
            metrics.ROWS.labels(state=count.key).set(count.count)
        errored: dict[str, int] = {}
        for count in database.errored_by_class:
            kind = count.key if count.key in _ERROR_CLASSES else "other"
            errored[kind] = errored.get(kind, 0) + count.count
        for kind, total in errored.items():
            metrics.ROWS_ERRORED.labels(error_class=kind).set(total)
        metrics.OPEN_RUNS.set(database.open_run_count)
        oldest = min((run.first_seen_at for run in database.open_runs), default=None)
        metrics.OLDEST_OPEN_RUN.set(oldest.timestamp() if oldest else 0)


def clear() -> None:
    for gauge in _GAUGES_WITH_LABELS:
        gauge.clear()
    for plain in _GAUGES:
        plain.set(0)


class BacklogExporter:
    def __init__(self, settings: Settings, is_leader: Callable[[], bool],
                 read: Callable[[Settings], Status] = collect) -> None:
        self.settings, self._is_leader, self._read = settings, is_leader, read
        self.names = topic_names(settings)
        self.passes = 0
        self.exporting = False

    async def once(self) -> None:
        if not self._leader():
            if self.exporting:
                clear()
                self.exporting = False
            return
        started = time.monotonic()
        try:
            status = await asyncio.to_thread(self._read, self.settings)
        except Exception as exc:  # noqa: BLE001 - a reading that fails is counted and tried next time
            metrics.BACKLOG_PASSES.labels(outcome="error").inc()
            log.warning("backlog not read", extra={"error": type(exc).__name__})
            return
        export(status, self.names)
        self.exporting = True
        self.passes += 1
        metrics.BACKLOG_PASSES.labels(outcome="problems" if status.problems else "ok").inc()
        log.debug("backlog read", extra={"seconds": round(time.monotonic() - started, 3)})

    def _leader(self) -> bool:
        try:
            return bool(self._is_leader())
        except Exception:  # noqa: BLE001 - faust raises before the first assignment
            return False


def backlog_service(exporter: BacklogExporter) -> type[mode.Service]:
    class Backlog(mode.Service):
        @mode.Service.task
        async def _run(self) -> None:
            while not self.should_stop:
                await exporter.once()
                await self.sleep(exporter.settings.metrics_interval)

    return Backlog
