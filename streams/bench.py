"""`streams bench` scenarios. Each prepares its own database and topic prefix, pre-produces its
input, starts what it measures, and times from the first to the last piece of work seen in
Postgres (so process start-up is not counted).

(a) ingest path: ingest topic → QUEUED rows + work records, one worker, plan-apply off.
(b) end to end through the reference target, against the same target called directly with the
    same batches and concurrency (the ratio says what the topology costs over the target).
(c) raw baselines on this machine: confluent-kafka consume msgs/s, binary COPY rows/s into
    ingestion_logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from confluent_kafka import Consumer, Producer
from psycopg import sql
from psycopg.types.json import Jsonb, set_json_dumps
from pydantic import SecretStr

from streams.client.generate import generate_entities
from streams.client.producer import IngestProducer
from streams.db.connect import conninfo
from streams.db.migrate import migrate
from streams.db.queries import named
from streams.dev.workers import start_worker, stop_worker
from streams.kafka.admin import create_topics
from streams.kafka.config import confluent_config
from streams.kafka.topics import Role, TopicSpec, topology
from streams.settings import Settings
from streams.target.faults import Faults
from streams.target.launch import start_target

Step = Callable[[str], None]


@dataclass(frozen=True)
class Result:
    scenario: str
    value: float
    unit: str
    count: int
    seconds: float
    note: str = ""


def fresh_database(settings: Settings, name: str) -> str:
    url = conninfo(settings)
    base = url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{base}/{name}"


def prepare(settings: Settings, name: str) -> Settings:
    """A migrated database and topics of our own for one scenario."""
    url = fresh_database(settings, f"streams_bench_{name}")
    migrate(url)
    tag = uuid.uuid4().hex[:6]
    prepared = settings.model_copy(update={
        "database_url": SecretStr(url), "topic_prefix": f"bench-{name}-{tag}.", "app_id": f"bench-{name}-{tag}",
        "worker_port": 0})
    create_topics(prepared, topology(prepared))
    return prepared


def _scalar(settings: Settings, query: str) -> Any:
    with psycopg.connect(conninfo(settings), connect_timeout=10) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


def _wait(check: Callable[[], bool], timeout: float, what: str, alive: Callable[[], bool]) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.time()
        if not alive():
            raise RuntimeError(f"the worker died while waiting for {what}")
        time.sleep(0.1)  # polling faster would load the Postgres being measured
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s")


def _send(settings: Settings, count: int, *, duplicate_ratio: float, seed: int) -> int:
    with IngestProducer(settings) as producer:
        entities = generate_entities(count, seed=seed, duplicate_ratio=duplicate_ratio)
        summary = producer.send_run(f"bench-{seed}", entities,
                                    batch_size=1000)
    return summary.batches


def ingest_path(settings: Settings, count: int, logs: Path, step: Step) -> Result:
    prepared = prepare(settings, "ingest")
    batches = _send(prepared, count, duplicate_ratio=0.1, seed=101)
    step(f"(a) {count} entities in {batches} records on the ingest topic; starting an ingest-only worker")
    worker = start_worker(prepared, topology="ingest_only", log_path=logs / "bench-ingest-worker.log")
    try:
        alive = lambda: worker.poll() is None  # noqa: E731
        done = _wait(lambda: _scalar(prepared, "SELECT count(*) FROM ingest_batches") == batches,
                     600, "every batch accepted", alive)
    finally:
        stop_worker(worker)
    started = _scalar(prepared, "SELECT extract(epoch FROM min(accepted_at)) FROM ingest_batches")
    seconds = done - float(started)
    rows = _scalar(prepared, "SELECT count(*) FROM ingestion_logs")
    return Result("(a) ingest path, one worker", count / seconds, "entities/s", count, seconds,
                  f"{rows} rows queued, {count - rows} duplicates, {batches} records")


def end_to_end(settings: Settings, count: int, logs: Path, step: Step, *, transient_rate: float = 0.0,
               name: str = "e2e") -> Result:
    if transient_rate:
        # Short tiers, so the measurement is of the retry machinery rather than of waiting.
        settings = settings.model_copy(update={"retry_tiers": (1.0, 2.0, 4.0)})
    prepared = prepare(settings, name)
    target = start_target(fresh_database(settings, f"streams_bench_{name}_target"),
                          faults=Faults(transient_rate=transient_rate, seed=7),
                          log_path=logs / f"bench-{name}-target.log")
    try:
        prepared = prepared.model_copy(update={"target_url": target.url})
        _send(prepared, count, duplicate_ratio=0.0, seed=202)
        step(f"(b) {count} distinct entities on the ingest topic ({transient_rate:.0%} transient failures);"
             " starting a worker")
        worker = start_worker(prepared, log_path=logs / f"bench-{name}-worker.log",
                              extra_env={"STREAMS_LOG_LEVEL": "INFO"})
        try:
            alive = lambda: worker.poll() is None  # noqa: E731
            # Settled, not applied: with injected failures a few entities fail every attempt.
            done = _wait(lambda: _scalar(prepared, "SELECT count(*) FROM ingestion_logs WHERE state IN (3, 5, 7)")
                         == count, 900, "every entity settled", alive)
        finally:
            stop_worker(worker)
    finally:
        target.stop()
    started = float(_scalar(prepared, "SELECT extract(epoch FROM min(created_at)) FROM ingestion_logs"))
    seconds = done - started
    label = "(b) end to end through the target" if not transient_rate else \
        f"(d) end to end, {transient_rate:.0%} transient failures"
    retried = _scalar(prepared, "SELECT count(*) FROM ingestion_logs WHERE attempts > 1")
    errored = _scalar(prepared, "SELECT count(*) FROM ingestion_logs WHERE state = 7")
    return Result(label, count / seconds, "entities/s", count, seconds,
                  f"batch size {prepared.batch_size}, {prepared.http_concurrency} calls in flight, "
                  f"{retried} entities retried, {errored} errored")


def lateness(logs: Path, name: str) -> list[Result]:
    """p50 and p99 of how late retry records were processed after their due time, per tier,
    from the worker's `retry record due` log lines."""
    by_tier: dict[str, list[float]] = {}
    for line in (logs / f"bench-{name}-worker.log").read_text(errors="replace").splitlines():
        if '"retry record due"' not in line:
            continue
        record = orjson.loads(line)
        by_tier.setdefault(str(record["tier"]), []).append(float(record["lateness_ms"]))
    results = []
    for tier, values in sorted(by_tier.items()):
        values.sort()
        for quantile in (0.5, 0.99):
            value = values[min(len(values) - 1, int(quantile * len(values)))]
            results.append(Result(f"(d) lateness, tier {tier}, p{int(quantile * 100)}", value, "ms",
                                  len(values), 0.0, "processed after the due time"))
    return results


def target_direct(settings: Settings, count: int, logs: Path, step: Step) -> Result:
    """The reference target's own bulk capacity: the same entities, batches and concurrency."""
    target = start_target(fresh_database(settings, "streams_bench_direct_target"),
                          log_path=logs / "bench-direct-target.log")
    step(f"(b) calling the target directly with {count} entities")
    bodies = [{"id": str(uuid.uuid4()), **item} for item in generate_entities(count, seed=202, duplicate_ratio=0.0)]
    size, concurrency = settings.batch_size, settings.http_concurrency
    chunks = [orjson.dumps({"entities": bodies[i:i + size]}) for i in range(0, len(bodies), size)]

    async def run() -> float:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for chunk in chunks:
            queue.put_nowait(chunk)
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=target.url, timeout=60, limits=limits) as client:
            async def caller() -> None:
                while not queue.empty():
                    response = await client.post("/bulk-plan-apply/", content=queue.get_nowait(),
                                                 headers={"content-type": "application/json"})
                    response.raise_for_status()
            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            return time.perf_counter() - started

    try:
        seconds = asyncio.run(run())
    finally:
        target.stop()
    return Result("(b) target called directly", count / seconds, "entities/s", count, seconds,
                  f"{len(chunks)} requests of {size}, {concurrency} in flight")


def kafka_consume(settings: Settings, count: int, step: Step) -> Result:
    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    create_topics(settings, [TopicSpec(topic, Role.WORK, settings.partitions, settings.replication_factor)])
    producer = Producer(confluent_config(settings, **{"linger.ms": 20, "batch.num.messages": 10000}))
    value = b"x" * 100
    for n in range(count):
        while True:
            try:
                producer.produce(topic, key=str(n).encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    step(f"(c) consuming {count} small messages with confluent-kafka")
    consumer = Consumer(confluent_config(settings, **{"group.id": topic, "auto.offset.reset": "earliest",
                                                      "enable.auto.commit": False}))
    consumer.subscribe([topic])
    seen, started = 0, None
    deadline = time.monotonic() + 120
    while seen < count and time.monotonic() < deadline:
        messages = consumer.consume(10000, timeout=0.5)
        if messages and started is None:
            started = time.perf_counter()
        seen += sum(1 for m in messages if m.error() is None)
    seconds = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return Result("(c) confluent-kafka consume", seen / seconds, "msgs/s", seen, seconds, "100-byte values")


def copy_rows(settings: Settings, count: int, step: Step) -> Result:
    url = fresh_database(settings, "streams_bench_copy")
    migrate(url)
    step(f"(c) COPY of {count} rows into ingestion_logs")
    rows = [(uuid.uuid4(), "bench", "bench-copy", n // 1000, item["object_type"], Jsonb(item["entity"]),
             hashlib.sha256(orjson.dumps(item)).digest(), "ingest", 0, n)
            for n, item in enumerate(generate_entities(count, seed=303, duplicate_ratio=0.0))]
    statement = named("ingest")["copy_new_rows"]
    with psycopg.connect(url) as conn:
        set_json_dumps(orjson.dumps, context=conn)
        started = time.perf_counter()
        for start in range(0, count, 20_000):  # the ingest agent's chunk size
            with conn.cursor() as cursor, cursor.copy(statement) as copy:
                copy.set_types(["uuid", "text", "text", "int4", "text", "jsonb", "bytea", "text", "int4", "int8"])
                for row in rows[start:start + 20_000]:
                    copy.write_row(row)
            conn.commit()
        seconds = time.perf_counter() - started
    return Result("(c) COPY into ingestion_logs", count / seconds, "rows/s", count, seconds,
                  "binary COPY, 20k rows per transaction")
