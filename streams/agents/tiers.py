"""The retry tiers: records wait for their `x-due-at` with only their own partition paused.

A faust agent can only wait by sleeping, which stalls every partition it reads. This scheduler
uses confluent-kafka's Consumer instead, whose pause/seek/resume work per partition:

- a record that is not due yet: pause its partition, seek back to it, resume at its due time;
- due records: pause the partition, process them (the plan-apply code, through the same
  GuardedBatches), commit their offsets, resume;
- the consumer keeps polling all the while (paused partitions return nothing), so waiting an
  hour or processing a slow batch never exceeds max.poll.interval.ms: no rebalance;
- on a rebalance, what was paused or in flight for a revoked partition is forgotten (its
  records come back to the new owner, uncommitted) and newly assigned partitions are resumed,
  so a partition paused before the rebalance can never stay paused after it.

Every consumer call runs on one dedicated thread (the Consumer is not thread-safe); the
processing runs on faust's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mode
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streams import metrics
from streams.agents.batching import GuardedBatches
from streams.agents.plan_apply import Incoming, PlanApplyAgent
from streams.kafka import headers
from streams.kafka.checkpoint import Watermarks
from streams.kafka.config import confluent_config
from streams.settings import Settings

log = logging.getLogger(__name__)

TP = tuple[str, int]
_POLL_SECONDS = 0.2
_RECORDS_PER_BATCH = 8


def incoming_from_message(message: Message) -> Incoming:
    return Incoming(message.key(), message.value(), headers.decode(message.headers()),
                    headers.Origin(message.topic(), message.partition(), message.offset()), from_tier=True)


def _describe(record: Incoming) -> dict[str, Any]:
    return {"topic": record.origin.topic, "partition": record.origin.partition, "offset": record.origin.offset}


class TierScheduler:
    def __init__(self, settings: Settings, topics: tuple[str, ...], plan_apply: PlanApplyAgent) -> None:
        self.settings = settings
        self.topics = topics
        self.tier_of = {name: tier for tier, name in enumerate(topics)}
        self.guard = GuardedBatches("retry", plan_apply.process, plan_apply.dead_letter,
                                    max_records=_RECORDS_PER_BATCH, within=0, describe=_describe)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="streams-tiers")
        self._rebalances: queue.SimpleQueue[tuple[str, list[TP]]] = queue.SimpleQueue()
        self._waiting: dict[TP, int] = {}  # paused until this epoch ms (0: resume at once)
        self._busy: set[TP] = set()
        self._generation: dict[TP, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: Consumer | None = None
        # Commits are positions: one never goes behind the last on its partition.
        self._watermarks = Watermarks()

    async def _call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, lambda: func(*args, **kwargs))

    def _make_consumer(self) -> Consumer:
        config = confluent_config(self.settings, **{
            "group.id": f"{self.settings.app_id}-retry",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "max.poll.interval.ms": int(self.settings.max_poll_interval * 1000),
            "session.timeout.ms": int(min(self.settings.session_timeout, self.settings.max_poll_interval) * 1000),
            **({"group.instance.id": f"{self.settings.instance_id}-retry"} if self.settings.instance_id else {}),
        })
        consumer = Consumer(config)
        # Called from inside consume() on the consumer thread: hand the news to the loop.
        consumer.subscribe(
            list(self.topics),
            on_assign=lambda _, parts: self._rebalances.put(("assign", [(p.topic, p.partition) for p in parts])),
            on_revoke=lambda _, parts: self._rebalances.put(("revoke", [(p.topic, p.partition) for p in parts])),
        )
        return consumer

    async def run(self) -> None:
        self._consumer = consumer = await self._call(self._make_consumer)
        try:
            while True:
                messages = await self._call(consumer.consume, 500, _POLL_SECONDS)
                await self._apply_rebalances(consumer)
                await self._schedule(consumer, messages)
                await self._resume_due(consumer)
        finally:
            for task in self._tasks:
                task.cancel()
            await self._call(consumer.close)
            self._thread.shutdown(wait=False)

    async def _apply_rebalances(self, consumer: Consumer) -> None:
        while not self._rebalances.empty():
            kind, parts = self._rebalances.get_nowait()
            self._watermarks.reset()  # a partition's next owner starts from its commit
            for tp in parts:
                self._generation[tp] = self._generation.get(tp, 0) + 1
                self._waiting.pop(tp, None)
                self._busy.discard(tp)
            if kind == "assign" and parts:
                await self._call(consumer.resume, [TopicPartition(t, p) for t, p in parts])
            log.info("retry tiers rebalanced", extra={"change": kind, "partitions": len(parts)})

    async def _schedule(self, consumer: Consumer, messages: list[Message]) -> None:
        now_ms = int(time.time() * 1000)
        by_tp: dict[TP, list[Message]] = {}
        for message in messages:
            if message.error() is not None:
                log.warning("retry tier read error", extra={"error": str(message.error())})
                continue
            by_tp.setdefault((message.topic(), message.partition()), []).append(message)
        for tp, tp_messages in by_tp.items():
            if tp in self._waiting or tp in self._busy:
                continue  # fetched before the pause; we seeked back, they will come again
            due: list[Message] = []
            next_due_ms = 0
            for message in tp_messages:
                due_at = _due_at(message)
                if due_at > now_ms:
                    next_due_ms = due_at
                    break
                due.append(message)
                if len(due) == _RECORDS_PER_BATCH:
                    break
            resume_from = due[-1].offset() + 1 if due else tp_messages[0].offset()
            await self._call(consumer.pause, [TopicPartition(*tp)])
            await self._call(consumer.seek, TopicPartition(tp[0], tp[1], resume_from))
            if due:
                self._busy.add(tp)
                task = asyncio.create_task(self._process(consumer, tp, due, self._generation.get(tp, 0)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._waiting[tp] = next_due_ms

    async def _process(self, consumer: Consumer, tp: TP, messages: list[Message], generation: int) -> None:
        now_ms = int(time.time() * 1000)
        tier = str(self.tier_of.get(tp[0], "?"))
        for message in messages:
            lateness = max(0, now_ms - _due_at(message))
            metrics.RETRY_LATENESS.labels(tier=tier).observe(lateness / 1000)
            log.info("retry record due", extra={"topic": tp[0], "partition": tp[1], "offset": message.offset(),
                                                "tier": tier, "lateness_ms": lateness,
                                                "attempt": headers.decode(message.headers()).get(headers.ATTEMPT)})
        async def commit(records: Sequence[Incoming]) -> None:
            if self._generation.get(tp, 0) != generation:
                return  # revoked meanwhile: the new owner processes them again (claims make that safe)
            last = max(record.origin.offset for record in records)
            try:
                await self._call(consumer.commit, offsets=[TopicPartition(tp[0], tp[1], last + 1)], asynchronous=False)
            except KafkaException as exc:
                log.warning("retry tier commit failed; the records may be processed again",
                            extra={"topic": tp[0], "partition": tp[1], "error": str(exc.args[0])})

        await self.guard.settle([incoming_from_message(m) for m in messages], commit, self._watermarks)
        self._busy.discard(tp)
        self._waiting[tp] = 0  # resume on the next turn of the loop

    async def _resume_due(self, consumer: Consumer) -> None:
        now_ms = int(time.time() * 1000)
        ready = [tp for tp, at in self._waiting.items() if at <= now_ms]
        if ready:
            await self._call(consumer.resume, [TopicPartition(*tp) for tp in ready])
            for tp in ready:
                del self._waiting[tp]


def _due_at(message: Message) -> int:
    for key, value in message.headers() or ():
        if key == headers.DUE_AT:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
    return 0


def tier_service(scheduler: TierScheduler) -> type[mode.Service]:
    """A mode service that runs `scheduler` for as long as the faust app runs."""

    class RetryTiers(mode.Service):
        @mode.Service.task
        async def _run(self) -> None:
            await scheduler.run()

    return RetryTiers
