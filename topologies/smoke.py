"""The smoke pipeline: one agent copies records from `smoke.in` to `smoke.out` in batches.

It proves a deployment's plumbing (faust on the real broker: consume, produce, commit) before
the ingest topology exists, and the demo and the integration tests run it.
"""

from __future__ import annotations

from collections.abc import Callable

import faust

from streams.kafka.faust_app import make_app
from streams.settings import Settings


def topic_names(settings: Settings) -> tuple[str, str]:
    return f"{settings.topic_prefix}smoke.in", f"{settings.topic_prefix}smoke.out"


def build(settings: Settings) -> faust.App:
    app = make_app(settings)
    source_name, sink_name = topic_names(settings)
    source = app.topic(source_name, key_serializer="raw", value_serializer="raw")
    sink = app.topic(sink_name, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="smoke-copy")
    async def copy(stream: faust.StreamT) -> None:
        async for events in stream.take_events(500, within=0.5):  # type: ignore[attr-defined]  # stubs lag
            for event in events:
                await sink.send(key=event.key, value=event.value)

    return app


def check(settings: Settings, count: int = 1000, timeout: float = 60.0,
          alive: Callable[[], bool] = lambda: True) -> dict[str, int]:
    """Send `count` records through a running smoke worker; return what came out and what the
    consumer group committed. The caller starts the worker (see streams.dev.workers)."""
    import time

    from confluent_kafka import Consumer, Producer, TopicPartition

    from streams.kafka.config import confluent_config

    source_name, sink_name = topic_names(settings)
    producer = Producer(confluent_config(settings, **{"enable.idempotence": True, "acks": "all"}))
    for number in range(count):
        producer.produce(source_name, key=str(number).encode(), value=f"record-{number}".encode())
    if producer.flush(timeout) != 0:
        raise TimeoutError("smoke records were not delivered")

    consumer = Consumer(confluent_config(
        settings, **{"group.id": f"{settings.app_id}-smoke-check", "auto.offset.reset": "earliest",
                     "enable.auto.commit": False}))
    consumer.subscribe([sink_name])
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < count and time.monotonic() < deadline and alive():
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    seen.add(message.value() or b"")
    finally:
        consumer.close()

    committed = 0
    watcher = Consumer(confluent_config(settings, **{"group.id": settings.app_id}))
    try:
        # faust commits on an interval: wait until the committed offsets cover every record.
        while time.monotonic() < deadline and alive():
            metadata = watcher.list_topics(source_name, timeout=10).topics[source_name]
            partitions = [TopicPartition(source_name, p) for p in metadata.partitions]
            committed = sum(max(tp.offset, 0) for tp in watcher.committed(partitions, timeout=10))
            if committed >= count:
                break
            time.sleep(0.2)
    finally:
        watcher.close()
    return {"sent": count, "copied": len(seen), "committed": committed}
