"""The `ingest.completions` topic: RunCompleted records written by the run tracker, read by anyone.

    for completed in read_completions(settings, timeout=60):      # every completion, as it arrives
        print(completed.run_id, completed.revision, completed.status)

    completed = wait_for_completion(settings, "dc1-sweep", timeout=300)   # one run's completion

Every completion of a run goes to one partition, chosen with murmur2 like the Java client and
faust, so finding or awaiting one run's completions reads one partition. The tracker writes
with an idempotent producer and looks for an earlier copy of a completion before sending it
(see streams.runs.tracker), so a reader sees each (run_id, revision) once; readers need no
`read_committed` isolation and no dedup of their own.

All calls here block (confluent-kafka); the tracker runs them in a thread.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from aiokafka.partitioner import murmur2
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from pydantic import ValidationError

from streams.errors import StreamsError, TopicError
from streams.kafka.config import confluent_config
from streams.models import RunCompleted
from streams.settings import Settings
from streams.kafka.topics import topic_names

log = logging.getLogger(__name__)

# librdkafka reports every record's fate within this time; waiting for that report before
# anything else is what lets the tracker look for the record afterwards without a race.
DELIVERY_TIMEOUT_MS = 30_000
_POLL = 0.2


class CompletionTimeout(StreamsError, TimeoutError):
    """The awaited completion did not arrive in time."""


class CompletionsUnavailable(StreamsError, ConnectionError):
    """The completions topic cannot be read or written now (broker down, topic missing)."""


def partition_for(run_id: str, partitions: int) -> int:
    """The partition of a run's completions: murmur2 of the key, as the Java client does."""
    return (murmur2(run_id.encode()) & 0x7FFFFFFF) % partitions


def decode(message: Message) -> RunCompleted | None:
    try:
        return RunCompleted.model_validate_json(message.value() or b"")
    except ValidationError:
        log.warning("not a RunCompleted record; skipped", extra={
            "topic": message.topic(), "partition": message.partition(), "offset": message.offset()})
        return None


def encode(completed: RunCompleted) -> bytes:
    return completed.model_dump_json().encode()


def _consumer(settings: Settings, **extra: Any) -> Consumer:
    # No group: readers assign partitions themselves and never commit.
    return Consumer(confluent_config(settings, **{
        "group.id": f"streams-completions-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
        "fetch.wait.max.ms": 100, **extra}))


def _partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        raise CompletionsUnavailable(f"cannot read the metadata of {topic}: {exc.args[0]}") from exc
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise TopicError(f"topic {topic!r} does not exist: run `streams topics create` first")
    return sorted(metadata.partitions)


def _messages(consumer: Consumer, deadline: float) -> Iterator[Message]:
    """Records from the assigned partitions until `deadline` (monotonic)."""
    while (left := deadline - time.monotonic()) > 0:
        for message in consumer.consume(500, timeout=min(_POLL, left)):
            error = message.error()
            if error is None:
                yield message
            elif error.code() != KafkaError._PARTITION_EOF and (error.fatal() or not error.retriable()):
                raise CompletionsUnavailable(f"cannot read completions: {error.str()}")


# --- readers -------------------------------------------------------------------------------


def read_completions(settings: Settings, *, from_beginning: bool = True,
                     timeout: float | None = None) -> Iterator[RunCompleted]:
    """Every RunCompleted on the topic (from its start, or only new ones), as they arrive.

    Ends after `timeout` seconds in all (None: never); break out of the loop to stop sooner.
    """
    topic = topic_names(settings).completions
    consumer = _consumer(settings)
    try:
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start)
                         for p in _partitions(consumer, topic, settings.kafka_timeout)])
        deadline = time.monotonic() + timeout if timeout is not None else float("inf")
        for message in _messages(consumer, deadline):
            completed = decode(message)
            if completed is not None:
                yield completed
    finally:
        consumer.close()


def wait_for_completion(settings: Settings, run_id: str, *, timeout: float,
                        revision: int | None = None) -> RunCompleted:
    """The RunCompleted of `run_id`: of `revision` if given, else the latest one on the topic
    (or, when there is none yet, the first to arrive). Raises CompletionTimeout."""
    topic = topic_names(settings).completions
    key = run_id.encode()
    deadline = time.monotonic() + timeout
    consumer = _consumer(settings)
    try:
        partition = partition_for(run_id, len(_partitions(consumer, topic, settings.kafka_timeout)))
        _, caught_up_at = _watermarks(consumer, topic, partition, settings.kafka_timeout)
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        latest: RunCompleted | None = None
        for message in _messages(consumer, deadline):
            completed = decode(message) if message.key() == key else None
            if completed is not None:
                if revision is not None and completed.revision == revision:
                    return completed
                if revision is None and (latest is None or completed.revision > latest.revision):
                    latest = completed
            # The records that were there when we started are read: the latest of them is the answer.
            if revision is None and latest is not None and message.offset() + 1 >= caught_up_at:
                return latest
    finally:
        consumer.close()
    what = f"revision {revision} of run {run_id!r}" if revision is not None else f"run {run_id!r}"
    raise CompletionTimeout(f"no completion of {what} on {topic} within {timeout:g}s")


def _watermarks(consumer: Consumer, topic: str, partition: int, timeout: float) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout,
                                                   cached=False)
    except KafkaException as exc:
        raise CompletionsUnavailable(f"cannot read the offsets of {topic}: {exc.args[0]}") from exc
    return low, high


# --- the tracker's side ----------------------------------------------------------------------


class CompletionLog:
    """What the run tracker needs of the topic: find a completion, send one. Not thread-safe;
    the tracker makes one call at a time."""

    def __init__(self, settings: Settings) -> None:
        self.topic = topic_names(settings).completions
        self._settings = settings
        self._timeout = settings.kafka_timeout
        self._partition_count: int | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    def partition(self, run_id: str) -> int:
        if self._partition_count is None:
            self._partition_count = len(_partitions(self._reader(), self.topic, self._timeout))
        return partition_for(run_id, self._partition_count)

    def find(self, run_id: str, revision: int, *, since_ms: int) -> RunCompleted | None:
        """The completion (run_id, revision) if it is on the topic at or after `since_ms`."""
        consumer = self._reader()
        partition = self.partition(run_id)
        try:
            [start] = consumer.offsets_for_times(
                [TopicPartition(self.topic, partition, max(0, since_ms))], timeout=self._timeout)
        except KafkaException as exc:
            raise CompletionsUnavailable(f"cannot look up offsets of {self.topic}: {exc.args[0]}") from exc
        _, end = _watermarks(consumer, self.topic, partition, self._timeout)
        if start.offset < 0 or start.offset >= end:
            return None  # nothing written since then
        key = run_id.encode()
        consumer.assign([TopicPartition(self.topic, partition, start.offset)])
        try:
            for message in _messages(consumer, time.monotonic() + self._timeout * 3):
                if message.key() == key and (completed := decode(message)) and completed.revision == revision:
                    return completed
                if message.offset() + 1 >= end:
                    return None
        finally:
            consumer.unassign()
        raise CompletionsUnavailable(f"reading {self.topic} partition {partition} up to {end} timed out")

    def send(self, completed: RunCompleted) -> None:
        """Write `completed` and wait until the broker has it; raise if it could not.

        Waits for the delivery report even on failure, so that nothing of ours is still on its
        way to the broker when the caller looks for the record again.
        """
        producer = self._writer()
        errors: list[KafkaError] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(error)

        try:
            producer.produce(self.topic, key=completed.run_id.encode(), value=encode(completed),
                             partition=self.partition(completed.run_id), on_delivery=delivered)
        except (KafkaException, BufferError) as exc:
            raise CompletionsUnavailable(f"cannot send a completion to {self.topic}: {exc}") from exc
        remaining = producer.flush(DELIVERY_TIMEOUT_MS / 1000 + 10)
        if remaining or errors:
            if any(e.fatal() for e in errors):
                self._close_writer()  # an idempotent producer in a fatal state only fails from now on
            reason = errors[0].str() if errors else "no delivery report"
            raise CompletionsUnavailable(f"completion of {completed.run_id!r} not written: {reason}")

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._close_writer()

    def _reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = _consumer(self._settings, **{"enable.partition.eof": False})
        return self._consumer

    def _writer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(confluent_config(self._settings, **{
                "enable.idempotence": True, "acks": "all", "linger.ms": 0,
                "message.timeout.ms": DELIVERY_TIMEOUT_MS}))
        return self._producer

    def _close_writer(self) -> None:
        if self._producer is not None:
            self._producer.flush(1)
            self._producer = None
