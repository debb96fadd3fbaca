"""The producer client and `streams produce` write valid runs to the real ingest topic."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import typer
from confluent_kafka import Consumer, Message, TopicPartition
from typer.testing import CliRunner

import streams
from streams.cli import main, produce
from streams.client.generate import generate_entities
from streams.client.producer import DeliveryError, IngestProducer
from streams.kafka.config import confluent_config
from streams.kafka.topics import topic_names
from streams.models import IngestBatch, Seal, parse_ingest_record
from streams.settings import Settings

pytestmark = pytest.mark.integration


def _read_ingest(settings: Settings, expected: int, timeout: float = 30.0) -> list[Message]:
    """Every record on the ingest topic, once `expected` have arrived; checks there are no more."""
    topic = topic_names(settings).ingest
    consumer = Consumer(confluent_config(settings, **{
        "group.id": f"{settings.app_id}-reader", "auto.offset.reset": "earliest", "enable.auto.commit": False,
    }))
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=0.5):
                assert message.error() is None, message.error()
                messages.append(message)
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        on_topic = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                       for p in partitions)
    finally:
        consumer.close()
    assert len(messages) == expected == on_topic
    return messages


def _parse(messages: list[Message]) -> tuple[list[tuple[bytes, IngestBatch]], list[tuple[bytes, Seal]]]:
    batches, seals = [], []
    for message in messages:
        record = parse_ingest_record(orjson.loads(message.value()))
        (batches if isinstance(record, IngestBatch) else seals).append((message.key(), record))
    batches.sort(key=lambda pair: pair[1].batch)
    return batches, seals


def test_a_run_is_sent_as_numbered_batches_and_a_seal(topics: Settings) -> None:
    entities = list(generate_entities(2500, seed=4))
    seen: list[tuple[int, int]] = []
    with IngestProducer(topics) as client:
        summary = client.send_run("it-run-1", iter(entities), batch_size=1000,
                                  on_batch=lambda batch, count: seen.append((batch, count)))
    assert (summary.run_id, summary.batches, summary.entities) == ("it-run-1", 3, 2500)
    assert seen == [(0, 1000), (1, 1000), (2, 500)]

    batches, seals = _parse(_read_ingest(topics, expected=4))
    assert [record.batch for _, record in batches] == [0, 1, 2]
    assert all(record.run_id == "it-run-1" for _, record in batches)
    assert all(key == record.request_id.encode() for key, record in batches)
    assert len({record.request_id for _, record in batches}) == 3
    assert batches[0][1].producer is not None
    default_producer = {"app_name": "streams-produce", "app_version": streams.__version__}
    assert batches[0][1].producer.model_dump() == default_producer
    sent = [entity.model_dump() for _, record in batches for entity in record.entities]
    assert len(sent) == 2500
    assert sent == entities
    assert [(key, record.run_id, record.batches) for key, record in seals] == [(b"it-run-1", "it-run-1", 3)]


def test_send_batch_refuses_bad_batches(settings: Settings) -> None:
    entity = {"object_type": "dcim.site", "entity": {"name": "a", "slug": "a"}}
    with IngestProducer(settings) as client:
        with pytest.raises(ValueError, match="1 to 1000 entities, got 0"):
            client.send_batch("run", 0, [])
        with pytest.raises(ValueError, match="1 to 1000 entities, got 1001"):
            client.send_batch("run", 0, [entity] * 1001)
        with pytest.raises(ValueError, match="run_id"):
            client.send_batch("not a run id", 0, [entity])
        with pytest.raises(ValueError, match="object_type"):
            client.send_batch("run", 0, [{"object_type": "Site", "entity": {}}])
        with pytest.raises(ValueError, match="STREAMS_MAX_RECORD_BYTES"):
            client.send_batch("run", 0, [{"object_type": "dcim.site", "entity": {"x": "y" * 2_000_000}}])


def test_a_batch_too_large_for_one_record_is_split(topics: Settings) -> None:
    small = topics.model_copy(update={"max_record_bytes": 40_000})
    entities = list(generate_entities(1000, seed=9))
    with IngestProducer(small) as client:
        summary = client.send_run("it-split", entities, batch_size=1000)
    assert summary.batches > 1 and summary.entities == 1000
    messages = _read_ingest(topics, expected=summary.batches + 1)
    assert all(len(message.value()) <= 40_000 for message in messages)
    batches, seals = _parse(messages)
    assert [record.batch for _, record in batches] == list(range(summary.batches))
    assert [entity.model_dump() for _, record in batches for entity in record.entities] == entities
    assert seals[0][1].batches == summary.batches


def test_a_record_the_broker_refuses_is_raised_at_flush(topics: Settings) -> None:
    # The client allows 3 MB records, the topic (created with the default limit) does not; the
    # text is random so that lz4 cannot shrink the record below the topic's limit.
    lenient = topics.model_copy(update={"max_record_bytes": 3_000_000})
    text = random.Random(0).randbytes(1_200_000).hex()
    huge = {"object_type": "dcim.site", "entity": {"name": "a", "slug": "a", "description": text}}
    client = IngestProducer(lenient, delivery_timeout=20)
    try:
        client.send_batch("it-refused", 0, [huge])
        with pytest.raises(DeliveryError, match="run 'it-refused' batch 0: MSG_SIZE_TOO_LARGE"):
            client.flush(30)
        client.flush(5)  # the failure was reported once; nothing is left queued
    finally:
        client.close()


@pytest.fixture
def cli() -> Iterator[typer.Typer]:
    """The root command with only `produce`; the root callback reconfigures logging, so undo it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    app = typer.Typer()
    app.callback()(main.root)
    app.command("produce")(produce.produce)
    try:
        yield app
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _env(settings: Settings) -> dict[str, Any]:
    return {"STREAMS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "STREAMS_TOPIC_PREFIX": settings.topic_prefix, "STREAMS_PRODUCE_BATCH_SIZE": "500"}


def test_produce_command_sends_runs_and_prints_a_summary(topics: Settings, cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["produce", "--generate", "1200", "--run", "cli", "--runs", "2"],
                                env=_env(topics))
    assert result.exit_code == 0, result.output
    assert "cli-1" in result.stdout and "cli-2" in result.stdout and "total" in result.stdout
    batches, seals = _parse(_read_ingest(topics, expected=8))
    assert sorted((record.run_id, record.batch) for _, record in batches) == [
        (run, batch) for run in ("cli-1", "cli-2") for batch in range(3)]
    assert sorted((record.run_id, record.batches) for _, record in seals) == [("cli-1", 3), ("cli-2", 3)]


def test_produce_command_reads_files(topics: Settings, cli: typer.Typer, tmp_path: Any) -> None:
    path = tmp_path / "entities.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(item) for item in generate_entities(700, seed=1)))
    args = ["produce", str(path), "--run", "from-file", "--no-seal"]
    result = CliRunner().invoke(cli, args, env=_env(topics))
    assert result.exit_code == 0, result.output
    batches, seals = _parse(_read_ingest(topics, expected=2))
    assert [len(record.entities) for _, record in batches] == [500, 200]
    assert seals == []


@pytest.mark.parametrize("args, message", [
    (["produce"], "exactly one source"),
    (["produce", "--generate", "5", "--run", "bad id"], "STREAMS_PRODUCE_RUN"),
    (["produce", "--generate", "5", "--duplicate-ratio", "1"], "STREAMS_PRODUCE_DUPLICATE_RATIO"),
])
def test_produce_command_refuses_bad_options(settings: Settings, cli: typer.Typer,
                                             args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args, env=_env(settings))
    assert result.exit_code == 2
    assert message in result.output


def test_produce_command_needs_the_ingest_topic(settings: Settings, cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["produce", "--generate", "5"], env=_env(settings))
    assert result.exit_code == 2
    assert "streams topics create" in result.output
