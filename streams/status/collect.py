"""Gather `streams status` from where each fact lives, without calling any worker:

- Kafka: each consumer group's committed offsets against the partitions' ends (lag), the retry
  tiers' depth and the due time of the next record of each waiting partition, the dead-letter
  topic's size, and the workers' reports on the worker-status topic;
- Postgres: rows by state, rows stuck past the sweep threshold, dead-lettered entities by error
  class and by run, open runs.

A source that cannot be read does not hide the others: it becomes a problem line, and, when it
is Kafka or Postgres itself, the first gate shown (nothing moves without them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from streams.backoff import delay
from streams.db.connect import conninfo
from streams.db.status_store import DatabaseState, read_state
from streams.errors import StreamsError
from streams.gates import Gate, GateName
from streams.kafka import headers
from streams.kafka.reader import KafkaUnavailable, Reader
from streams.kafka.topics import TopicNames, topic_names
from streams.settings import Settings
from streams.status.report import WorkerReport

# Wait this long for the next record of each lagging tier partition (it only reads one).
_PEEK_SECONDS = 3.0
_KAFKA_TRIES = 4


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    partitions: tuple[PartitionLag, ...]

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True)
class TierState:
    topic: str
    delay: float
    depth: int
    next_due: float | None  # epoch seconds of the earliest next record over its partitions
    paused: int  # partitions a worker holds paused for a due time now


@dataclass(frozen=True)
class HeldGate:
    worker: str
    gate: Gate


@dataclass
class Status:
    taken_at: float
    groups: list[GroupLag] = field(default_factory=list)
    tiers: list[TierState] = field(default_factory=list)
    dlq_records: int | None = None
    workers: list[WorkerReport] = field(default_factory=list)
    gates: list[HeldGate] = field(default_factory=list)
    database: DatabaseState | None = None
    problems: list[str] = field(default_factory=list)


def consumed_topics(settings: Settings, names: TopicNames) -> list[tuple[str, str]]:
    """(group, topic) for every topic a worker group commits offsets on."""
    main = [(settings.app_id, topic) for topic in (names.ingest, names.work, names.dlq, names.run_events)]
    return main + [(f"{settings.app_id}-retry", topic) for topic in names.retry]


def collect(settings: Settings, *, limit: int = 10) -> Status:
    now = time.time()
    status = Status(taken_at=now)
    names = topic_names(settings)
    for attempt in range(1, _KAFKA_TRIES + 1):
        try:
            found = Status(taken_at=now)
            _collect_kafka(settings, names, found)
            status.groups, status.tiers, status.dlq_records = found.groups, found.tiers, found.dlq_records
            status.workers, status.gates, status.problems = found.workers, found.gates, found.problems
            break
        except KafkaUnavailable as exc:
            # A coordinator moving or loading answers "not coordinator" for a moment.
            if attempt < _KAFKA_TRIES:
                time.sleep(delay(attempt, base=0.5))
                continue
            _kafka_down(settings, status, exc, now)
        except StreamsError as exc:
            _kafka_down(settings, status, exc, now)
            break
    try:
        status.database = read_state(conninfo(settings), stuck_after=settings.sweep_after, limit=limit)
    except Exception as exc:  # noqa: BLE001 - psycopg's errors vary; any of them means "cannot read"
        status.problems.append(f"Postgres: {type(exc).__name__}: {str(exc).strip()[:200]}")
        status.gates.insert(0, HeldGate("status", Gate(GateName.DATABASE_UNAVAILABLE, "postgres",
                                                       f"{type(exc).__name__}: {str(exc).strip()[:200]}", now)))
    return status


def _kafka_down(settings: Settings, status: Status, exc: Exception, now: float) -> None:
    status.problems.append(f"Kafka: {exc}")
    status.gates.insert(0, HeldGate("status", Gate(GateName.KAFKA_UNAVAILABLE, settings.kafka_bootstrap or "kafka",
                                                   str(exc), now)))


def lag_by_group(settings: Settings, names: TopicNames) -> list[GroupLag]:
    """Every worker group's committed offsets against the partitions' ends, per topic."""
    by_group: dict[str, list[str]] = {}
    for group, topic in consumed_topics(settings, names):
        by_group.setdefault(group, []).append(topic)
    found: list[GroupLag] = []
    for group, topics in by_group.items():
        with Reader(settings, group=group) as reader:
            found += [_lag(reader, group, topic) for topic in topics]
    return found


def _collect_kafka(settings: Settings, names: TopicNames, status: Status) -> None:
    status.groups += lag_by_group(settings, names)
    with Reader(settings, eof=True) as reader:
        low, high = _sizes(reader, names.dlq)
        status.dlq_records = high - low
        status.workers = _reports(reader, names.worker_status, status)
    now = status.taken_at
    for worker in status.workers:
        if not worker.silent(now):
            status.gates += [HeldGate(worker.worker, gate) for gate in worker.gates]
    retry_lag = {lag.topic: lag for lag in status.groups if lag.topic in names.retry}
    due = _next_due(settings, [retry_lag[t] for t in names.retry if t in retry_lag])
    for topic, tier_delay in zip(names.retry, settings.retry_tiers, strict=True):
        lag = retry_lag.get(topic)
        paused = sum(1 for held in status.gates
                     if held.gate.name is GateName.TIER_WAIT and held.gate.scope.startswith(f"{topic}["))
        status.tiers.append(TierState(topic, tier_delay, lag.total if lag else 0, due.get(topic), paused))
    live = [worker for worker in status.workers if not worker.silent(now)]
    waiting = sum(group.total for group in status.groups)
    if waiting and not live:
        last = max((worker.published_at for worker in status.workers), default=now)
        status.gates.append(HeldGate("status", Gate(
            GateName.NO_WORKERS, settings.app_id,
            f"{waiting} records wait and no worker has reported for {int(now - last)}s", last)))
    status.gates.sort(key=lambda held: held.gate.since)


def _lag(reader: Reader, group: str, topic: str) -> GroupLag:
    partitions = reader.partitions(topic)
    committed = reader.committed((topic, p) for p in partitions)
    rows = []
    for partition in partitions:
        _, end = reader.watermarks(topic, partition)
        rows.append(PartitionLag(topic, partition, committed.get((topic, partition), 0), end))
    return GroupLag(group, topic, tuple(rows))


def _sizes(reader: Reader, topic: str) -> tuple[int, int]:
    low_total = high_total = 0
    for partition in reader.partitions(topic):
        low, high = reader.watermarks(topic, partition)
        low_total, high_total = low_total + low, high_total + high
    return low_total, high_total


def _reports(reader: Reader, topic: str, status: Status) -> list[WorkerReport]:
    latest: dict[bytes, WorkerReport | None] = {}
    for message in reader.to_end(topic, idle_timeout=reader.timeout):
        key = message.key() or b""
        value = message.value()
        if not value:
            latest[key] = None  # stopped cleanly
            continue
        try:
            latest[key] = WorkerReport.decode(value)
        except ValueError:
            status.problems.append(f"worker status: an unreadable report under key {key[:40]!r}")
    return sorted((r for r in latest.values() if r is not None), key=lambda r: r.worker)


def _next_due(settings: Settings, lags: Iterable[GroupLag]) -> dict[str, float]:
    """Per tier topic, the earliest due time of the next record of its lagging partitions."""
    starts = [(p.topic, p.partition, p.committed) for lag in lags for p in lag.partitions if p.lag > 0]
    if not starts:
        return {}
    found: dict[tuple[str, int], float] = {}
    with Reader(settings) as reader:
        reader.assign(starts)
        deadline = time.monotonic() + _PEEK_SECONDS
        for message in reader.messages(deadline):
            where = (message.topic() or "", message.partition() or 0)
            if where in found:
                continue
            raw = headers.decode(_header_list(message.headers())).get(headers.DUE_AT, "0")
            found[where] = int(raw) / 1000 if raw.isdigit() else 0.0
            if len(found) == len(starts):
                break
    earliest: dict[str, float] = {}
    for (topic, _), at in found.items():
        earliest[topic] = min(at, earliest.get(topic, at))
    return earliest


def _header_list(raw: object) -> list[tuple[str, bytes]]:
    if not isinstance(raw, list):
        return []
    return [(str(key), value) for key, value in raw if isinstance(value, bytes)]
