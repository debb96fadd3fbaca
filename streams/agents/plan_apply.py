"""The plan-apply step: work records → bulk-plan-apply calls → states, retries, dead letters.

The same code serves `ingest.work` (a faust agent) and the retry tiers (streams.agents.tiers).
Per work record:

1. claim its rows (one short transaction): QUEUED rows, rows routed to this very record, or
   this record's own APPLYING rows after a crash;
2. call the target with at most STREAMS_BATCH_SIZE entities per request, concurrently within
   STREAMS_HTTP_CONCURRENCY; a whole request refused as permanent (4xx) is bisected so the
   healthy entities still apply; the circuit breaker sees every whole-request outcome;
3. route every entity (streams.pipeline.apply.route): applied, to a retry tier (rows
   PENDING_RETRY, claimed by the retry record's work id), or to the DLQ (rows FAILED until the
   dead-letter agent makes them ERRORED); one transaction writes all of it;
4. send the retry and dead-letter records and one run event through the batch's Checkpoint,
   which acks the record only after they are on the broker.

A record delivered again after a crash finds what it already did (routed_by_claim) and sends
the same retry/dead-letter records (same ids) and event again; nothing is applied twice or too
early. Every record has an id of its own (streams.records.WorkRecord): the retry record for
each tier and the dead letter for each error class made from one record are told apart, so
each is claimed and counted on its own.
While the breaker is open, TargetUnavailable leaves the records unacked (their partitions wait)
instead of pushing them down the ladder.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import faust
import orjson

from streams import metrics
from streams.db.apply_store import ApplyStore, Claim, ClaimLost
from streams.errors import InvalidRecord
from streams.kafka import headers
from streams.kafka.checkpoint import Checkpoint
from streams.kafka.config import max_message_bytes, work_record_budget
from streams.kafka.headers import Origin
from streams.pipeline.apply import (
    SUCCESS_NAMES,
    FailedGroup,
    dead_work,
    earlier,
    free_retries,
    is_free_retry,
    leaving,
    retry_work,
    route,
)
from streams.pipeline.breaker import Breaker
from streams.pipeline.outcomes import CallResult, EntityOutcome, ErrorClass, State
from streams.records import WorkItem, WorkRecord, entities_settled
from streams.resources import Resources
from streams.settings import Settings
from streams.target.calls import TargetCalls
from streams.tasks import all_finished

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplyTopics:
    run_events: faust.TopicT
    dlq: faust.TopicT
    retry: tuple[faust.TopicT, ...]


@dataclass(frozen=True)
class Incoming:
    """A record to apply, from faust (ingest.work) or confluent-kafka (retry tiers)."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    origin: Origin
    from_tier: bool


def incoming_from_event(event: faust.types.EventT) -> Incoming:
    message = event.message
    return Incoming(message.key, message.value, headers.decode(message.headers),
                    headers.Origin(message.topic, message.partition, message.offset), from_tier=False)


@dataclass(frozen=True)
class _Outbound:
    topic: faust.TopicT
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class _Step:
    outbound: list[_Outbound] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


class PlanApplyAgent:
    def __init__(self, settings: Settings, topics: ApplyTopics, resources: Resources, breaker: Breaker) -> None:
        self.settings = settings
        self.topics = topics
        self.resources = resources
        self.store = ApplyStore(resources.db)
        self.breaker = breaker
        self.calls = TargetCalls(settings, self._send, breaker)

    async def _send(self, body: Sequence[dict[str, Any]]) -> CallResult:
        return await self.resources.target().bulk_plan_apply(body)

    async def handle(self, events: Sequence[faust.types.EventT], out: Checkpoint) -> None:
        await self.process([incoming_from_event(event) for event in events], out)

    async def process(self, records: Sequence[Incoming], out: Checkpoint) -> None:
        # A record sent twice (by a delivery repeated after a crash) can be read twice in one
        # batch: the first copy does the work, the others are acked with it.
        firsts: dict[str, tuple[Incoming, WorkRecord]] = {}
        for record in records:
            work = _decode(record)
            firsts.setdefault(work.work_id, (record, work))
        works = list(firsts.values())
        self.calls.check()
        # Every step ends before a failure fails the attempt: none may run on into the retry.
        steps = await all_finished([self._step(record, work) for record, work in works])
        for (_, work), step in zip(works, steps, strict=True):
            for outbound in step.outbound:
                await out.send(outbound.topic, key=outbound.key, value=outbound.value, headers=outbound.headers)
            if step.counts:
                event = entities_settled(work, dict(step.counts))
                await out.send(self.topics.run_events, key=work.run_id.encode(), value=event.encode())

    async def _step(self, record: Incoming, work: WorkRecord) -> _Step:
        claim = await self.store.claim(work)
        items = [item for item in work.items if item.id in claim.claimed]
        step = _Step()
        requests = 0
        if items:
            # TargetUnavailable leaves the rows APPLYING under this claim; the record waits and
            # takes them back when the target is up.
            # Entities that already failed on their own (a retry record's) cannot prove an outage.
            suspects = frozenset(work.errors) if record.from_tier else frozenset()
            applied = await self.calls.apply(items, suspects=suspects)
            requests = applied.requests
            try:
                await self._settle(record, work, claim, items, applied.outcomes, step)
            except ClaimLost:
                # Another copy of this record (sent twice, or read by a worker that lost the
                # partition) took the rows over: it settles and reports them, this copy nothing.
                metrics.RECORDS.labels(agent="plan-apply", outcome="superseded").inc()
                log.warning("work record superseded by another delivery of it", extra={
                    "run": work.run_id, "batch": work.batch, "work_id": work.work_id, "topic": record.origin.topic,
                    "partition": record.origin.partition, "offset": record.origin.offset})
                return _Step()
        self._report_earlier(record, work, claim.routed, step)
        if record.from_tier:
            # What this record took from its tier: the rows it claimed now or settled before. A
            # copy of a retry record whose rows another copy already took counts nothing.
            step.counts["retry_out"] += len(items) + len(claim.routed)
        log.info("work record applied", extra={
            "run": work.run_id, "batch": work.batch, "attempt": work.attempt, "work_id": work.work_id,
            "topic": record.origin.topic, "partition": record.origin.partition, "offset": record.origin.offset,
            "claimed": len(items), "earlier": len(claim.routed), "requests": requests, **dict(step.counts)})
        return step

    async def _settle(self, record: Incoming, work: WorkRecord, claim: Claim, items: list[WorkItem],
                      outcomes: list[EntityOutcome], step: _Step) -> None:
        now_ms = int(time.time() * 1000)
        routing = route(outcomes, attempt=work.attempt, tiers=self.settings.retry_tiers, now_ms=now_ms,
                        free_retries=free_retries(work))
        out = leaving(work, items, routing, work_record_budget(self.settings))
        await self.store.settle(work, claim, routing, out.retries, [part for _, part in out.deads], out.again)
        for state in routing.done_states:
            step.counts[SUCCESS_NAMES[State(state)]] += 1
            metrics.ENTITIES.labels(outcome=SUCCESS_NAMES[State(state)]).inc()
        for groups, records in ((routing.retry, out.retries), (routing.again, out.again)):
            for tier, group in groups.items():
                step.outbound += [self._retry_record(record, work, part, tier, group, now_ms) for part in records[tier]]
                step.counts["retry_in"] += len(group.ids)
                metrics.ENTITIES.labels(outcome="retrying").inc(len(group.ids))
        for error_class, part in out.deads:
            step.outbound.append(self._dead_record(record, work, part, error_class, routing.dead[error_class], now_ms))
        for error_class, group in routing.dead.items():
            step.counts["dead_lettered"] += len(group.ids)
            metrics.DEAD_LETTERS.labels(error_class=error_class.value).inc()
        if routing.warnings:
            metrics.TARGET_WARNINGS.inc(sum(len(w) for w in routing.warnings.values()))

    def _retry_record(self, record: Incoming, work: WorkRecord, retry: WorkRecord, tier: int, group: FailedGroup,
                      now_ms: int) -> _Outbound:
        hdrs = headers.failure_headers(
            record.headers, origin=record.origin, attempt=work.attempt, error_class=ErrorClass.TRANSIENT,
            error=group.summary, now_ms=now_ms, run_id=work.run_id, http_status=group.http_status,
            due_at_ms=group.due_at_ms)
        return _Outbound(self.topics.retry[tier], _key(work), retry.encode(), hdrs)

    def _dead_record(self, record: Incoming, work: WorkRecord, dead: WorkRecord, error_class: ErrorClass,
                     group: FailedGroup, now_ms: int) -> _Outbound:
        hdrs = headers.failure_headers(
            record.headers, origin=record.origin, attempt=work.attempt, error_class=error_class,
            error=group.summary, now_ms=now_ms, run_id=work.run_id, http_status=group.http_status)
        return _Outbound(self.topics.dlq, _key(work), dead.encode(), hdrs)

    def _report_earlier(self, record: Incoming, work: WorkRecord, routed: Sequence[Any], step: _Step) -> None:
        """Rows an earlier delivery of this record dealt with: count them again and send their
        retry or dead-letter records again, under the ids they got the first time (the run
        tracker and the claims make repeats harmless)."""
        if not routed:
            return
        found = earlier(routed, len(self.topics.retry))
        step.counts.update(found.counts)
        by_id = {item.id: item for item in work.items}
        now_ms = int(time.time() * 1000)
        for (tier, child_id), group in found.retries.items():
            retry = replace(retry_work(work, tier, group, by_id, free=is_free_retry(child_id)), id=child_id)
            step.outbound.append(self._retry_record(record, work, retry, tier, group, now_ms))
        for (error_class, child_id), group in found.deads.items():
            dead = replace(dead_work(work, error_class, group, by_id), id=child_id)
            step.outbound.append(self._dead_record(record, work, dead, error_class, group, now_ms))

    async def dead_letter(self, event: Any, error: BaseException, out: Checkpoint, *, excerpt: bool = False) -> None:
        """A record that failed every try (not the target: the record itself) goes to the DLQ;
        the dead-letter agent makes its rows ERRORED. `excerpt`: only its first bytes (the whole
        one could not be written); its rows are then left to the sweep."""
        record = event if isinstance(event, Incoming) else incoming_from_event(event)
        error_class = ErrorClass.INVALID if isinstance(error, InvalidRecord) else ErrorClass.PERMANENT
        hdrs = headers.failure_headers(
            record.headers, origin=record.origin, attempt=int(record.headers.get(headers.ATTEMPT, "1")),
            error_class=error_class, error=f"{type(error).__name__}: {error}", now_ms=int(time.time() * 1000),
            run_id=_run_id(record.value))
        value, extra = headers.bounded(record.value, 0 if excerpt else max_message_bytes(self.settings))
        await out.send(self.topics.dlq, key=record.key, value=value, headers=hdrs + extra)
        metrics.DEAD_LETTERS.labels(error_class=error_class.value).inc()
        log.warning("work record dead-lettered", extra={
            "topic": record.origin.topic, "partition": record.origin.partition, "offset": record.origin.offset,
            "error_class": error_class.value, "error": type(error).__name__})


def _decode(record: Incoming) -> WorkRecord:
    try:
        return WorkRecord.decode(record.value or b"")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidRecord(f"not a work record: {type(exc).__name__}") from None


def _key(work: WorkRecord) -> bytes:
    return f"{work.run_id}:{work.batch}".encode()


def _run_id(value: bytes | None) -> str | None:
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return data.get("run_id") if isinstance(data, dict) else None
