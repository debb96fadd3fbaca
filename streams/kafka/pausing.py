"""A group consumer whose partitions pause, seek and resume one at a time: the seam the retry
tiers wait through (a faust agent can only wait by sleeping, which stalls all its partitions).

Every librdkafka call runs on one dedicated thread (a Consumer is not thread-safe) and is
awaited from the event loop. Records leave as `Received`, typed and with bytes headers, so the
scheduler above never touches a confluent Message. Rebalances are queued by the callbacks that
librdkafka runs inside consume() and handed out with the next batch of records.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar, cast

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streams.kafka.config import confluent_config
from streams.kafka.headers import Origin
from streams.settings import Settings

log = logging.getLogger(__name__)

TP = tuple[str, int]
R = TypeVar("R")


@dataclass(frozen=True)
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)

    @property
    def origin(self) -> Origin:
        return Origin(self.topic, self.partition, self.offset)

    def header(self, name: str) -> bytes | None:
        """The last value of header `name` (as headers.decode picks it)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


@dataclass(frozen=True)
class Rebalance:
    kind: Literal["assign", "revoke"]
    partitions: tuple[TP, ...]


def received(message: Message) -> Received:
    raw = cast(list[tuple[str, bytes | None]] | None, message.headers()) or []
    return Received(
        topic=message.topic() or "", partition=message.partition() or 0, offset=message.offset() or 0,
        key=message.key(), value=message.value(),
        headers=tuple((key, value or b"") for key, value in raw),
    )


class PausingConsumer:
    def __init__(self, settings: Settings, topics: tuple[str, ...], *, group: str,
                 instance_id: str | None = None) -> None:
        self._settings = settings
        self._topics = topics
        self._group = group
        self._instance_id = instance_id
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"streams-{group}")
        self._rebalances: queue.SimpleQueue[Rebalance] = queue.SimpleQueue()
        self._consumer: Consumer | None = None

    async def _call(self, func: Callable[[], R]) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._thread, func)

    def _consumer_now(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("PausingConsumer used before start()")
        return self._consumer

    async def start(self) -> None:
        settings = self._settings
        config = confluent_config(settings, **{
            "group.id": self._group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "max.poll.interval.ms": int(settings.max_poll_interval * 1000),
            "session.timeout.ms": int(min(settings.session_timeout, settings.max_poll_interval) * 1000),
            **({"group.instance.id": self._instance_id} if self._instance_id else {}),
        })

        def make() -> Consumer:
            consumer = Consumer(config)
            consumer.subscribe(
                list(self._topics),
                on_assign=lambda _, parts: self._rebalances.put(Rebalance("assign", _tps(parts))),
                on_revoke=lambda _, parts: self._rebalances.put(Rebalance("revoke", _tps(parts))),
            )
            return consumer

        self._consumer = await self._call(make)

    async def poll(self, max_records: int, wait: float) -> tuple[list[Rebalance], list[Received]]:
        """The rebalances that happened and the records that arrived, in that order; read
        errors are logged and skipped (librdkafka retries them itself)."""
        consumer = self._consumer_now()
        messages = await self._call(lambda: consumer.consume(max_records, wait))
        rebalances = []
        while not self._rebalances.empty():
            rebalances.append(self._rebalances.get_nowait())
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                log.warning("read error", extra={"group": self._group, "error": error.str()})
                continue
            records.append(received(message))
        return rebalances, records

    async def pause(self, tps: list[TP]) -> None:
        consumer = self._consumer_now()
        await self._call(lambda: consumer.pause([TopicPartition(t, p) for t, p in tps]))

    async def resume(self, tps: list[TP]) -> None:
        consumer = self._consumer_now()
        await self._call(lambda: consumer.resume([TopicPartition(t, p) for t, p in tps]))

    async def seek(self, tp: TP, offset: int) -> None:
        consumer = self._consumer_now()
        await self._call(lambda: consumer.seek(TopicPartition(tp[0], tp[1], offset)))

    async def commit(self, tp: TP, next_offset: int) -> bool:
        """Commit synchronously; False (logged) when the broker refused, e.g. after a revoke."""
        consumer = self._consumer_now()
        try:
            await self._call(lambda: consumer.commit(offsets=[TopicPartition(tp[0], tp[1], next_offset)],
                                                     asynchronous=False))
        except KafkaException as exc:
            log.warning("commit failed; the records may be processed again",
                        extra={"topic": tp[0], "partition": tp[1], "error": str(exc.args[0])})
            return False
        return True

    async def close(self) -> None:
        consumer = self._consumer
        try:
            if consumer is not None:
                await self._call(consumer.close)
        finally:
            self._thread.shutdown(wait=False)


def _tps(parts: list[TopicPartition]) -> tuple[TP, ...]:
    return tuple((p.topic, p.partition) for p in parts)
