"""Reading the dead-letter topic from its start to its current end: the tooling's Kafka seam.

The end is the high watermark of each partition when the read starts, so records dead-lettered
while we read wait for the next run instead of making the read endless. Partitions are assigned
directly: no consumer group joins, nothing is committed, and the workers' group is untouched.
Every broker call has a timeout, and a read that stops making progress fails instead of hanging.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from streams.dlq import DlqError
from streams.dlq.letters import DeadLetter, dead_letter
from streams.kafka import headers as h
from streams.kafka.config import confluent_config
from streams.settings import Settings
from streams.kafka.topics import topic_names

log = logging.getLogger(__name__)

_BATCH = 500
_POLL_SECONDS = 0.5


def read_dead_letters(settings: Settings, *, topic: str | None = None,
                      idle_timeout: float | None = None) -> Iterator[DeadLetter]:
    """Every record on the DLQ topic (default: the topology's), partition by partition interleaved.

    Raises DlqError when the topic is missing, the broker does not answer within the timeout,
    or no record arrives for `idle_timeout` seconds (default: 3 × STREAMS_KAFKA_TIMEOUT) while
    some are still expected.
    """
    topic = topic or topic_names(settings).dlq
    timeout = settings.kafka_timeout
    idle_timeout = idle_timeout or 3 * timeout
    consumer = Consumer(confluent_config(settings, **{
        # librdkafka wants a group id even for assign(); a fresh one that never commits.
        "group.id": f"{settings.app_id}-dlq-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # retention may delete the low watermark while we read
        # The end of a partition may be a transaction marker, not a record: EOF says we are there.
        "enable.partition.eof": True,
    }))
    try:
        ends = _assign_to_end(consumer, topic, timeout)
        yield from _drain(consumer, topic, ends, idle_timeout)
    finally:
        consumer.close()


def _assign_to_end(consumer: Consumer, topic: str, timeout: float) -> dict[int, int]:
    """Assign every non-empty partition from its start; return partition → end offset."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise DlqError(f"topic {topic!r} does not exist: run `streams topics create` first")
        ends: dict[int, int] = {}
        starts = []
        for partition in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, low))
    except KafkaException as exc:
        raise DlqError(f"cannot read the offsets of {topic!r}: {exc.args[0]}") from exc
    if starts:
        consumer.assign(starts)
    return ends


def _drain(consumer: Consumer, topic: str, ends: dict[int, int], idle_timeout: float) -> Iterator[DeadLetter]:
    remaining = dict(ends)
    last_progress = time.monotonic()
    while remaining:
        messages = consumer.consume(_BATCH, timeout=_POLL_SECONDS)
        if not messages and time.monotonic() - last_progress > idle_timeout:
            raise DlqError(f"reading {topic!r} stalled: nothing arrived for {idle_timeout:g}s with "
                           f"{len(remaining)} partitions not yet read to their end")
        for message in messages:
            last_progress = time.monotonic()
            partition = message.partition()
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.pop(partition, None)
                    continue
                raise DlqError(f"cannot read {topic!r} partition {partition}: {error.str()}")
            end = remaining.get(partition)
            if end is None or message.offset() >= end:
                remaining.pop(partition, None)  # past the end we started with
                continue
            if message.offset() == end - 1:
                remaining.pop(partition)
            yield _letter(topic, message)
    log.debug("dead letters read", extra={"topic": topic, "partitions": len(ends)})


def _letter(topic: str, message: Message) -> DeadLetter:
    kind, stamp = message.timestamp()
    headers = message.headers()
    if kind == TIMESTAMP_NOT_AVAILABLE:  # fall back to when the first attempt failed
        first = h.decode(headers).get(h.FIRST_FAILED_AT, "0")
        stamp = int(first) if first.isdigit() else 0
    return dead_letter(topic, message.partition(), message.offset(), stamp, message.key(), headers,
                       message.value())
