"""Reading the dead-letter topic from its start to its current end (streams.kafka.reader).

The end is the high watermark of each partition when the read starts, so records dead-lettered
while we read wait for the next run instead of making the read endless. Partitions are assigned
directly: no consumer group joins, nothing is committed, and the workers' group is untouched.
Every broker call has a timeout, and a read that stops making progress fails instead of hanging.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import cast

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from streams.dlq import DlqError
from streams.dlq.letters import DeadLetter, dead_letter
from streams.errors import TopicError
from streams.kafka import headers as h
from streams.kafka.reader import KafkaUnavailable, Reader
from streams.kafka.topics import topic_names
from streams.settings import Settings

log = logging.getLogger(__name__)


def read_dead_letters(settings: Settings, *, topic: str | None = None,
                      idle_timeout: float | None = None) -> Iterator[DeadLetter]:
    """Every record on the DLQ topic (default: the topology's), partition by partition interleaved.

    Raises DlqError when the topic is missing, the broker does not answer within the timeout,
    or no record arrives for `idle_timeout` seconds (default: 3 × STREAMS_KAFKA_TIMEOUT) while
    some are still expected.
    """
    topic = topic or topic_names(settings).dlq
    try:
        with Reader(settings, eof=True) as reader:
            for message in reader.to_end(topic, idle_timeout=idle_timeout or 3 * settings.kafka_timeout):
                yield _letter(topic, message)
    except (TopicError, KafkaUnavailable) as exc:
        raise DlqError(str(exc)) from exc
    log.debug("dead letters read", extra={"topic": topic})


def _letter(topic: str, message: Message) -> DeadLetter:
    kind, stamp = message.timestamp()
    headers = cast(list[tuple[str, bytes]] | None, message.headers())  # we write bytes values only
    if kind == TIMESTAMP_NOT_AVAILABLE:  # fall back to when the first attempt failed
        first = h.decode(headers).get(h.FIRST_FAILED_AT, "0")
        stamp = int(first) if first.isdigit() else 0
    return dead_letter(topic, message.partition() or 0, message.offset() or 0, stamp, message.key(), headers,
                       message.value())
