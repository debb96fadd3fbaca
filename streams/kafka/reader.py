"""The confluent-kafka reader of everything outside the faust agents: the DLQ tooling, the
completions readers and the run tracker's search of them, the agents' look at committed
offsets. A Reader assigns partitions itself: it joins no consumer group, commits nothing, and
leaves the workers' groups untouched (a `group` is only named to read its committed offsets).
Every broker call has a timeout; failures leave as TopicError (the topic is missing) or
KafkaUnavailable (the broker did not answer), never as confluent exceptions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Self

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.errors import StreamsError, TopicError
from streams.kafka.config import confluent_config
from streams.settings import Settings

_BATCH = 500
_POLL = 0.2


class KafkaUnavailable(StreamsError, ConnectionError):
    """The broker could not be reached, or did not answer in time."""


class Reader:
    def __init__(self, settings: Settings, *, group: str | None = None, eof: bool = False, **extra: Any) -> None:
        self.timeout = settings.kafka_timeout
        self._consumer = Consumer(confluent_config(settings, **{
            # librdkafka wants a group id even for assign(); a fresh one that never commits.
            "group.id": group or f"{settings.app_id}-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",  # retention may delete the low watermark while we read
            # The end of a partition may be a transaction marker, not a record: EOF says we are there.
            "enable.partition.eof": eof, "fetch.wait.max.ms": 100, **extra}))

    def partitions(self, topic: str) -> list[int]:
        try:
            metadata = self._consumer.list_topics(topic, timeout=self.timeout).topics.get(topic)
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot read the metadata of {topic!r}: {exc.args[0]}") from exc
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise TopicError(f"topic {topic!r} does not exist: run `streams topics create` first")
        return sorted(metadata.partitions)

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """(low, high): the first offset kept and the next one to be written."""
        try:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                             timeout=self.timeout, cached=False)
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot read the offsets of {topic!r}: {exc.args[0]}") from exc
        return int(low), int(high)

    def offset_for_time(self, topic: str, partition: int, epoch_ms: int) -> int:
        """The first offset written at or after `epoch_ms` (-1: none)."""
        try:
            [found] = self._consumer.offsets_for_times([TopicPartition(topic, partition, max(0, epoch_ms))],
                                                       timeout=self.timeout)
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot look up offsets of {topic!r}: {exc.args[0]}") from exc
        return int(found.offset)

    def committed(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The reader's group's committed offset of each partition; its first offset when none."""
        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
        if not wanted:
            return {}
        try:
            found = self._consumer.committed(wanted, timeout=self.timeout)
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot read committed offsets: {exc.args[0]}") from exc
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else self.watermarks(tp.topic, tp.partition)[0]
                for tp in found}

    def assign(self, positions: Iterable[tuple[str, int, int]]) -> None:
        self._consumer.assign([TopicPartition(topic, partition, offset) for topic, partition, offset in positions])

    def unassign(self) -> None:
        self._consumer.unassign()

    def messages(self, deadline: float) -> Iterator[Message]:
        """Records of the assigned partitions until `deadline` (monotonic); EOFs are skipped."""
        while (left := deadline - time.monotonic()) > 0:
            for message in self._consumer.consume(_BATCH, timeout=min(_POLL, left)):
                error = message.error()
                if error is None:
                    yield message
                elif error.code() != KafkaError._PARTITION_EOF and (error.fatal() or not error.retriable()):
                    raise KafkaUnavailable(f"cannot read {message.topic()}: {error.str()}")

    def to_end(self, topic: str, *, idle_timeout: float) -> Iterator[Message]:
        """Every record of `topic` from its start to its end as it is now (records written while
        we read wait for the next read, so it ends); raises KafkaUnavailable when nothing arrives
        for `idle_timeout` seconds while records are still expected. Needs `eof=True`."""
        ends: dict[int, int] = {}
        starts = []
        for partition in self.partitions(topic):
            low, high = self.watermarks(topic, partition)
            if high > low:
                ends[partition] = high
                starts.append((topic, partition, low))
        if starts:
            self.assign(starts)
        remaining = dict(ends)
        last_progress = time.monotonic()
        while remaining:
            messages = self._consumer.consume(_BATCH, timeout=0.5)
            if not messages and time.monotonic() - last_progress > idle_timeout:
                raise KafkaUnavailable(f"reading {topic!r} stalled: nothing arrived for {idle_timeout:g}s with "
                                       f"{len(remaining)} partitions not yet read to their end")
            for message in messages:
                last_progress = time.monotonic()
                partition = message.partition() or 0  # always set on a consumed record
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.pop(partition, None)
                        continue
                    raise KafkaUnavailable(f"cannot read {topic!r} partition {partition}: {error.str()}")
                end = remaining.get(partition)
                offset = message.offset() or 0
                if end is None or offset >= end:
                    remaining.pop(partition, None)  # past the end we started with
                    continue
                if offset == end - 1:
                    remaining.pop(partition)
                yield message

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
