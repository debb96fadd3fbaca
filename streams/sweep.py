"""The sweep: one maintenance loop per deployment that finds rows nobody will touch again and
sends work for them through the normal claim protocol.

A row waits for a record: QUEUED for a work record, APPLYING for the record that claimed it to
finish, PENDING_RETRY for its retry record, FAILED for its dead letter. Records can still go
missing (a crash between a commit and a send, a record dropped by the consumer before any
guard saw it, a dead letter written as an excerpt). A row in such a state for longer than
STREAMS_SWEEP_AFTER (PENDING_RETRY: that long past its due time) is stuck, and the sweep sends
its record again:

    QUEUED         a work record of those rows to ingest.work (rows stay QUEUED: whichever
                   record claims them first applies them; the other finds nothing to claim)
    APPLYING       a work record to ingest.work, the rows claimed by it in the same
                   transaction, so the lost record could not take them back if it came
    PENDING_RETRY  a retry record to its tier, due now, the rows claimed by it
    FAILED         the dead letter again (same id: the tracker counts it once)

Nothing is applied twice: every record claims before it applies. Shaped like River's
maintenance services: named defaults validated in the settings, a jittered interval, work in
bounded batches, exponential backoff on error (logged each time, never a hot loop, never
silently dead), one log line only when a pass changed something, and `passes`, a counter and
an event tests can wait on. It runs on the group's leader only (faust's leader assignor), so a
deployment has one, and it moves with the leadership.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import mode

from streams import metrics
from streams.db.sweep_store import StuckRow, SweepStore
from streams.kafka import headers
from streams.kafka.checkpoint import Checkpoint
from streams.kafka.config import work_record_budget
from streams.pipeline.outcomes import ErrorClass, State
from streams.records import WorkItem, WorkRecord, fit
from streams.resources import Resources
from streams.settings import Settings

log = logging.getLogger(__name__)

JITTER = 0.2
MAX_BACKOFF = 300.0
STUCK_STATES = (State.QUEUED, State.APPLYING, State.PENDING_RETRY, State.FAILED)


@dataclass(frozen=True)
class SweepTopics:
    work: faust.TopicT
    retry: tuple[faust.TopicT, ...]
    dlq: faust.TopicT


@dataclass
class SweepResult:
    """What one pass did: rows sent again by state, and the records that carried them."""

    rows: Counter[str] = field(default_factory=Counter)
    records: int = 0

    @property
    def changed(self) -> bool:
        return self.records > 0


class Sweeper:
    def __init__(self, app: faust.App, settings: Settings, topics: SweepTopics, resources: Resources) -> None:
        self.app, self.settings, self.topics = app, settings, topics
        self.store = SweepStore(resources.db)
        self.passes = 0
        self.passed = asyncio.Event()  # set after every pass, for tests

    async def run(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self._pause(failures))
            if not self.app.is_leader():
                continue
            try:
                result = await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged, backed off, tried again: never dead
                failures += 1
                metrics.SWEEP_PASSES.labels(outcome="error").inc()
                log.error("sweep pass failed; trying again later", extra={
                    "error": type(exc).__name__, "detail": str(exc)[:300], "failures": failures})
                continue
            failures = 0
            metrics.SWEEP_PASSES.labels(outcome="ok").inc()
            if result.changed:
                log.warning("sweep sent work again for stuck rows", extra={
                    "records": result.records, **{f"rows_{state}": n for state, n in result.rows.items()}})
            self.passes += 1
            self.passed.set()
            self.passed = asyncio.Event()

    def _pause(self, failures: int) -> float:
        interval = self.settings.sweep_interval
        jittered = random.uniform(1 - JITTER, 1 + JITTER)
        if not failures:
            return interval * jittered
        # Back off after failures, never below the normal pause and never past the ceiling.
        ceiling = max(MAX_BACKOFF, interval)
        return min(ceiling, interval * 2.0 ** min(failures, 8) * jittered)

    async def sweep(self) -> SweepResult:
        """One pass: count the stuck rows (a metric), then send work for up to a batch per state."""
        result = SweepResult()
        counts = await self.store.stuck(self.settings.sweep_after)
        for state in STUCK_STATES:
            metrics.ROWS_STUCK.labels(state=state.name.lower()).set(counts.get(state, 0))
        for state in STUCK_STATES:
            if counts.get(state):
                await self._take(state, result)
        return result

    async def _take(self, state: State, result: SweepResult) -> None:
        out = Checkpoint(_nothing_to_ack)
        taking = self.store.takeover(state, after=self.settings.sweep_after, limit=self.settings.sweep_batch)
        async with taking as stuck:
            records = self._records(state, stuck.rows)
            await stuck.claim([(item.id, record.work_id) for record, _ in records for item in record.items])
            for record, (topic, hdrs) in records:
                await out.send(topic, key=f"{record.run_id}:{record.batch}".encode(), value=record.encode(),
                               headers=hdrs)
        # After the commit: a crash before the flush leaves claims whose records never left;
        # their rows are stuck again after STREAMS_SWEEP_AFTER, and taken over again.
        await out.commit([])
        result.rows[state.name.lower()] += len(stuck.rows)
        result.records += len(records)
        metrics.ROWS_SWEPT.labels(state=state.name.lower()).inc(len(stuck.rows))

    def _records(self, state: State, rows: Sequence[StuckRow]
                 ) -> list[tuple[WorkRecord, tuple[faust.TopicT, list[tuple[str, bytes]] | None]]]:
        """The records that send `rows` again, each with its topic and headers."""
        groups: dict[tuple[str, int, str | None], list[StuckRow]] = defaultdict(list)
        for row in rows:
            groups[(row.run_id, row.batch, row.claimed_by)].append(row)
        made: list[tuple[WorkRecord, tuple[faust.TopicT, list[tuple[str, bytes]] | None]]] = []
        now_ms = _now_ms()
        for (run_id, batch, claim), members in groups.items():
            items = tuple(WorkItem(r.id, r.object_type, r.entity) for r in members)
            errors = {r.id: r.last_error for r in members if r.last_error}
            attempt = max(r.attempts for r in members)
            if state is State.FAILED:
                # The dead letter again, under its own id: its rows hold that claim already (a
                # row without one, from before claims existed, is taken by any dead letter).
                record = WorkRecord(run_id, batch, items, attempt, errors=errors,
                                    id=claim or f"{run_id}/{batch}/{attempt}+s{uuid.uuid4().hex[:8]}")
                made += [(part, (self.topics.dlq, _dead_headers(part, members, now_ms)))
                         for part in fit(record, work_record_budget(self.settings))]
                continue
            swept = f"+s{uuid.uuid4().hex[:8]}"
            base = claim or f"{run_id}/{batch}/{attempt}"
            if state is State.PENDING_RETRY:
                record = WorkRecord(run_id, batch, items, attempt + 1, errors=errors, id=base + swept)
                tier = min(max(r.retry_tier or 0 for r in members), len(self.topics.retry) - 1)
                made += [(part, (self.topics.retry[tier], _retry_headers(part, tier, now_ms)))
                         for part in fit(record, work_record_budget(self.settings))]
            else:  # QUEUED, APPLYING: a work record, as ingest or a redelivery would send it
                record = WorkRecord(run_id, batch, items, max(attempt, 1), id=base + swept)
                made += [(part, (self.topics.work, None)) for part in fit(record, work_record_budget(self.settings))]
        return made


async def _nothing_to_ack(_: Sequence[Any]) -> None:
    """The sweep reads no topic: its checkpoint only flushes what it sent."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _origin() -> headers.Origin:
    return headers.Origin("sweep", -1, -1)


def _retry_headers(record: WorkRecord, tier: int, now_ms: int) -> list[tuple[str, bytes]]:
    return headers.failure_headers({}, origin=_origin(), attempt=record.attempt - 1, error_class=ErrorClass.TRANSIENT,
                                   error=f"retry record sent again by the sweep (tier {tier})", now_ms=now_ms,
                                   run_id=record.run_id, due_at_ms=now_ms)


def _dead_headers(record: WorkRecord, rows: Sequence[StuckRow], now_ms: int) -> list[tuple[str, bytes]]:
    first = next((r.last_error for r in rows if r.last_error), None) or {}
    try:
        error_class = ErrorClass(first.get("class", "permanent"))
    except ValueError:
        error_class = ErrorClass.PERMANENT
    return headers.failure_headers({}, origin=_origin(), attempt=record.attempt, error_class=error_class,
                                   error=str(first.get("message", "dead letter sent again by the sweep")),
                                   now_ms=now_ms, run_id=record.run_id, http_status=first.get("http_status"))


def sweep_service(sweeper: Sweeper) -> type[mode.Service]:
    """A mode service that runs `sweeper` for as long as the faust app runs."""

    class Sweep(mode.Service):
        @mode.Service.task
        async def _run(self) -> None:
            await sweeper.run()

    return Sweep

