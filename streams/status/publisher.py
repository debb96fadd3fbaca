"""The worker side of `streams status`: publish this worker's report every status_interval
(and a tombstone when it stops cleanly), through the faust app's own producer.

A report that cannot be sent is skipped, never waited for: the status of a worker must not
hold up its work, and the next interval tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import faust
import mode

from streams.gates import GATES
from streams.settings import Settings
from streams.status.report import WorkerReport, worker_id

log = logging.getLogger(__name__)

# Extra partitions a worker holds outside faust's consumer (the retry tiers' own group).
Assigned = Callable[[], Iterable[tuple[str, int]]]


class StatusPublisher:
    def __init__(self, app: faust.App, settings: Settings, topic: faust.TopicT,
                 extra_assigned: Assigned | None = None) -> None:
        self.app, self.settings, self.topic = app, settings, topic
        self.worker = worker_id(settings)
        self.started_at = time.time()
        self._extra = extra_assigned

    def report(self) -> WorkerReport:
        assigned: dict[str, list[int]] = {}
        partitions: list[tuple[str, int]] = []
        with contextlib.suppress(Exception):  # no consumer yet (starting): nothing assigned
            partitions += [(tp.topic, tp.partition) for tp in self.app.consumer.assignment()]
        if self._extra is not None:
            partitions += list(self._extra())
        for topic, partition in sorted(set(partitions)):
            assigned.setdefault(topic, []).append(partition)
        try:
            leader = bool(self.app.is_leader())
        except Exception:  # noqa: BLE001 - before the first assignment
            leader = False
        return WorkerReport(self.worker, self.started_at, time.time(), self.settings.status_interval,
                            assigned, tuple(GATES.snapshot()), leader)

    async def publish(self, value: bytes | None) -> None:
        try:
            await asyncio.wait_for(self.topic.send(key=self.worker.encode(), value=value),
                                   timeout=self.settings.kafka_timeout)
        except Exception as exc:  # noqa: BLE001 - status is best effort; work goes on
            log.warning("worker status not published", extra={"error": type(exc).__name__})


def status_service(publisher: StatusPublisher) -> type[mode.Service]:
    class WorkerStatus(mode.Service):
        @mode.Service.task
        async def _publish(self) -> None:
            while not self.should_stop:
                await publisher.publish(publisher.report().encode())
                await self.sleep(publisher.settings.status_interval)

        async def on_stop(self) -> None:
            await publisher.publish(None)  # a tombstone: stopped cleanly, not silent

    return WorkerStatus
