"""Every topic of the topology, defined once as pure data derived from the settings.

`streams topics create`, the workers and the tests all take names from here, so a prefix or a
tier change renames everything consistently. Names are checked against Kafka's own limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from streams.errors import SettingsError
from streams.kafka.config import max_message_bytes
from streams.settings import Settings

_KAFKA_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

DAY_MS = 86_400_000
DEFAULT_RETENTION_MS = 7 * DAY_MS


class Role(str, Enum):
    INGEST = "ingest"
    WORK = "work"
    RETRY = "retry"
    DLQ = "dlq"
    RUN_EVENTS = "run-events"
    COMPLETIONS = "completions"
    CHANGELOG = "changelog"
    STATUS = "status"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    role: Role
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    delay_seconds: float | None = None  # only retry tiers


@dataclass(frozen=True)
class TopicNames:
    ingest: str
    work: str
    retry: tuple[str, ...]
    dlq: str
    run_events: str
    completions: str
    run_progress_changelog: str
    run_batches_changelog: str
    worker_status: str

    def all(self) -> tuple[str, ...]:
        return (self.ingest, self.work, *self.retry, self.dlq, self.run_events, self.completions,
                self.run_progress_changelog, self.run_batches_changelog, self.worker_status)


def topic_names(settings: Settings) -> TopicNames:
    prefix = settings.topic_prefix
    names = TopicNames(
        ingest=f"{prefix}ingest",
        work=f"{prefix}ingest.work",
        retry=tuple(f"{prefix}ingest.retry.{tier}" for tier in settings.tier_names),
        dlq=f"{prefix}ingest.dlq",
        run_events=f"{prefix}ingest.run-events",
        completions=f"{prefix}ingest.completions",
        run_progress_changelog=f"{prefix}ingest.run-progress-changelog",
        run_batches_changelog=f"{prefix}ingest.run-batches-changelog",
        worker_status=f"{prefix}ingest.worker-status",
    )
    for name in names.all():
        if not _KAFKA_NAME_RE.match(name) or name in (".", ".."):
            raise SettingsError(f"STREAMS_TOPIC_PREFIX: gives the invalid topic name {name!r}")
    return names


def topology(settings: Settings) -> list[TopicSpec]:
    """The topics a deployment needs, with their partition counts and configs."""
    names = topic_names(settings)
    max_bytes = str(max_message_bytes(settings))
    base = {"max.message.bytes": max_bytes}
    if settings.replication_factor >= 3:
        base["min.insync.replicas"] = "2"

    def spec(name: str, role: Role, *, delay: float | None = None, **config: str) -> TopicSpec:
        merged = {**base, **{key.replace("_", "."): value for key, value in config.items()}}
        return TopicSpec(name, role, settings.partitions, settings.replication_factor, merged, delay)

    specs = [
        spec(names.ingest, Role.INGEST, retention_ms=str(DEFAULT_RETENTION_MS)),
        spec(names.work, Role.WORK, retention_ms=str(DEFAULT_RETENTION_MS)),
    ]
    for name, delay in zip(names.retry, settings.retry_tiers, strict=True):
        # A record must outlive its wait with room for an outage of the workers.
        retention = max(DEFAULT_RETENTION_MS, int(delay * 1000) * 4)
        specs.append(spec(name, Role.RETRY, delay=delay, retention_ms=str(retention)))
    specs += [
        spec(names.dlq, Role.DLQ, retention_ms=str(int(settings.dlq_retention * 1000))),
        spec(names.run_events, Role.RUN_EVENTS, retention_ms=str(DEFAULT_RETENTION_MS)),
        spec(names.completions, Role.COMPLETIONS, retention_ms=str(30 * DAY_MS)),
        # The run tracker's tables' changelogs: compacted, so recovery reads one record per run
        # (run_progress) and per batch (run_batches).
        spec(names.run_progress_changelog, Role.CHANGELOG, cleanup_policy="compact"),
        spec(names.run_batches_changelog, Role.CHANGELOG, cleanup_policy="compact"),
        # What each worker alone knows (its gates, its assignment), for `streams status`: one
        # record per worker, the latest kept; a worker gone for a day is forgotten.
        spec(names.worker_status, Role.STATUS, cleanup_policy="compact,delete", retention_ms=str(DAY_MS),
             segment_ms=str(DAY_MS // 24)),
    ]
    return specs
