"""The retry tiers: records wait for their `x-due-at` with only their own partition paused.

A faust agent can only wait by sleeping, which stalls every partition it reads. This scheduler
reads through a PausingConsumer (streams/kafka/pausing.py), whose pause/seek/resume work per
partition:

- a record that is not due yet: pause its partition, seek back to it, resume at its due time;
- due records: pause the partition, process them (the plan-apply code, through the same
  GuardedBatches), commit their offsets, resume;
- the consumer keeps polling all the while (paused partitions return nothing), so waiting an
  hour or processing a slow batch never exceeds max.poll.interval.ms: no rebalance;
- on a rebalance, what was paused or in flight for a revoked partition is forgotten (its
  records come back to the new owner, uncommitted) and newly assigned partitions are resumed,
  so a partition paused before the rebalance can never stay paused after it.

The consumer's calls run on its own thread; the scheduling and processing run on faust's loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import mode

from streams import metrics
from streams.agents.batching import GuardedBatches
from streams.agents.plan_apply import Incoming, PlanApplyAgent
from streams.gates import GATES, GateName
from streams.kafka import headers
from streams.kafka.checkpoint import Watermarks
from streams.kafka.pausing import TP, PausingConsumer, Rebalance, Received
from streams.settings import Settings

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.2
_RECORDS_PER_POLL = 500
_RECORDS_PER_BATCH = 8


def incoming_from_received(record: Received) -> Incoming:
    return Incoming(record.key, record.value, headers.decode(record.headers), record.origin, from_tier=True)


def _describe(record: Incoming) -> dict[str, Any]:
    return {"topic": record.origin.topic, "partition": record.origin.partition, "offset": record.origin.offset}


def due_at(record: Received) -> int:
    """Epoch ms the record may be retried at; 0 (now) when the header is missing or garbled."""
    raw = record.header(headers.DUE_AT)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def split_due(records: list[Received], now_ms: int, limit: int) -> tuple[list[Received], int]:
    """The leading records of one partition that are due (at most `limit`), and when the first
    one that is not due will be (0 when none is waiting). Order is kept: a later record never
    overtakes an earlier one that still waits."""
    due: list[Received] = []
    for record in records:
        at = due_at(record)
        if at > now_ms:
            return due, at
        due.append(record)
        if len(due) == limit:
            break
    return due, 0


class TierScheduler:
    def __init__(self, settings: Settings, topics: tuple[str, ...], plan_apply: PlanApplyAgent) -> None:
        self.settings = settings
        self.topics = topics
        self.tier_of = {name: tier for tier, name in enumerate(topics)}
        self.guard = GuardedBatches("retry", plan_apply.process, plan_apply.dead_letter,
                                    max_records=_RECORDS_PER_BATCH, within=0, describe=_describe)
        self.assigned: set[TP] = set()  # for the worker's status report
        self._waiting: dict[TP, int] = {}  # paused until this epoch ms (0: resume at once)
        self._busy: set[TP] = set()
        self._generation: dict[TP, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Commits are positions: one never goes behind the last on its partition.
        self._watermarks = Watermarks()

    def _consumer(self) -> PausingConsumer:
        instance = self.settings.instance_id
        return PausingConsumer(self.settings, self.topics, group=f"{self.settings.app_id}-retry",
                               instance_id=f"{instance}-retry" if instance else None)

    async def run(self) -> None:
        consumer = self._consumer()
        try:
            await consumer.start()
            while True:
                rebalances, records = await consumer.poll(_RECORDS_PER_POLL, _POLL_SECONDS)
                await self._apply_rebalances(consumer, rebalances)
                await self._schedule(consumer, records)
                await self._resume_due(consumer)
        finally:
            for task in self._tasks:
                task.cancel()
            await consumer.close()

    async def _apply_rebalances(self, consumer: PausingConsumer, rebalances: list[Rebalance]) -> None:
        for change in rebalances:
            self._watermarks.reset()  # a partition's next owner starts from its commit
            for tp in change.partitions:
                self._generation[tp] = self._generation.get(tp, 0) + 1
                self._waiting.pop(tp, None)
                GATES.release(GateName.TIER_WAIT, _scope(tp))
                self._busy.discard(tp)
            if change.kind == "assign":
                self.assigned |= set(change.partitions)
            else:
                self.assigned -= set(change.partitions)
            if change.kind == "assign" and change.partitions:
                await consumer.resume(list(change.partitions))
            log.info("retry tiers rebalanced", extra={"change": change.kind, "partitions": len(change.partitions)})

    async def _schedule(self, consumer: PausingConsumer, records: list[Received]) -> None:
        now_ms = int(time.time() * 1000)
        by_tp: dict[TP, list[Received]] = {}
        for record in records:
            by_tp.setdefault(record.tp, []).append(record)
        for tp, tp_records in by_tp.items():
            if tp in self._waiting or tp in self._busy:
                continue  # fetched before the pause; we seeked back, they will come again
            due, next_due_ms = split_due(tp_records, now_ms, _RECORDS_PER_BATCH)
            resume_from = due[-1].offset + 1 if due else tp_records[0].offset
            await consumer.pause([tp])
            await consumer.seek(tp, resume_from)
            if due:
                self._busy.add(tp)
                task = asyncio.create_task(self._process(consumer, tp, due, self._generation.get(tp, 0)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._waiting[tp] = next_due_ms
                GATES.hold(GateName.TIER_WAIT, _scope(tp), "paused until its next record is due",
                           until=next_due_ms / 1000)

    async def _process(self, consumer: PausingConsumer, tp: TP, records: list[Received], generation: int) -> None:
        now_ms = int(time.time() * 1000)
        tier = str(self.tier_of.get(tp[0], "?"))
        for record in records:
            lateness = max(0, now_ms - due_at(record))
            metrics.RETRY_LATENESS.labels(tier=tier).observe(lateness / 1000)
            attempt = record.header(headers.ATTEMPT)
            log.info("retry record due", extra={"topic": tp[0], "partition": tp[1], "offset": record.offset,
                                                "tier": tier, "lateness_ms": lateness,
                                                "attempt": attempt.decode(errors="replace") if attempt else None})

        async def commit(done: Sequence[Incoming]) -> None:
            if self._generation.get(tp, 0) != generation:
                return  # revoked meanwhile: the new owner processes them again (claims make that safe)
            await consumer.commit(tp, max(record.origin.offset for record in done) + 1)

        await self.guard.settle([incoming_from_received(r) for r in records], commit, self._watermarks)
        self._busy.discard(tp)
        self._waiting[tp] = 0  # resume on the next turn of the loop

    async def _resume_due(self, consumer: PausingConsumer) -> None:
        now_ms = int(time.time() * 1000)
        ready = [tp for tp, at in self._waiting.items() if at <= now_ms]
        if ready:
            await consumer.resume(ready)
            for tp in ready:
                del self._waiting[tp]
                GATES.release(GateName.TIER_WAIT, _scope(tp))


def _scope(tp: TP) -> str:
    return f"{tp[0]}[{tp[1]}]"


def tier_service(scheduler: TierScheduler) -> type[mode.Service]:
    """A mode service that runs `scheduler` for as long as the faust app runs."""

    class RetryTiers(mode.Service):
        @mode.Service.task
        async def _run(self) -> None:
            await scheduler.run()

    return RetryTiers
