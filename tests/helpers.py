"""Test helpers: wait on conditions (never fixed sleeps), read topics, query rows."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.client.producer import IngestProducer
from streams.kafka.config import confluent_config, max_message_bytes
from streams.pipeline.outcomes import State
from streams.settings import Settings

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float = 60.0, what: str = "condition",
             alive: Callable[[], bool] = lambda: True) -> T:
    """Poll until `condition()` is truthy; return its value. Fails with `what` on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        if not alive():
            raise AssertionError(f"a process died while waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def rows(settings: Settings, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def state_counts(settings: Settings, run_id: str | None = None) -> dict[int, int]:
    where, params = ("WHERE run_id = %s", (run_id,)) if run_id else ("", None)
    return dict(rows(settings, f"SELECT state, count(*) FROM ingestion_logs {where} GROUP BY state", params))  # noqa: S608 - a fixed clause


def consume_all(settings: Settings, topic: str, *, expect: int, timeout: float = 60.0) -> list[Any]:
    """Read `topic` from the start until `expect` records arrived."""
    consumer = Consumer(confluent_config(settings, **{
        "group.id": f"test-reader-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False}))
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expect and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages


def produce_raw(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = Producer(confluent_config(settings, **{"enable.idempotence": True, "acks": "all",
                                                      "message.max.bytes": max_message_bytes(settings)}))
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def committed(settings: Settings, topic: str) -> int:
    """Sum of the committed offsets of the topology's consumer group on `topic`."""
    consumer = Consumer(confluent_config(settings, **{"group.id": settings.app_id}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def end_offsets(settings: Settings, topic: str) -> int:
    consumer = Consumer(confluent_config(settings, **{"group.id": f"test-watermarks-{uuid.uuid4().hex[:8]}"}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


SETTLED = (State.APPLIED, State.NO_CHANGES, State.ERRORED)


def settled(settings: Settings, run_id: str, expected: int) -> bool:
    """Every row of the run has a final state, and there are `expected` of them."""
    counts = state_counts(settings, run_id)
    return sum(counts.get(s, 0) for s in SETTLED) == expected and sum(counts.values()) == expected


def send_run(settings: Settings, run_id: str, entities: list[dict[str, Any]], batch_size: int = 250) -> None:
    with IngestProducer(settings) as producer:
        producer.send_run(run_id, entities, batch_size=batch_size)
