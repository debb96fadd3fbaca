"""Topic administration over confluent-kafka's AdminClient: create from the definition, describe.

Creation is idempotent: a topic that exists is left alone when it matches, and reported when its
partition count differs (growing it would move run_ids to other partitions and break the
co-partitioning of run events and the run_progress changelog, so that is an operator's call).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from streams.errors import TopicError
from streams.kafka.config import confluent_config
from streams.kafka.reader import KafkaUnavailable
from streams.kafka.topics import TopicSpec
from streams.settings import Settings

log = logging.getLogger(__name__)

_SHOWN_CONFIGS = ("cleanup.policy", "retention.ms", "max.message.bytes", "min.insync.replicas")


@dataclass(frozen=True)
class TopicState:
    name: str
    role: str
    exists: bool
    partitions: int | None
    replication_factor: int | None
    config: dict[str, str]
    wanted_partitions: int


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(confluent_config(settings))


def existing_topics(admin: AdminClient, timeout: float) -> dict[str, int]:
    """Topic name → partition count, from one metadata request."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"cannot read topic metadata: {exc.args[0]}") from exc
    return {name: len(meta.partitions) for name, meta in metadata.topics.items()}


def wait_for_cluster(settings: Settings, patience: float, *, every: float = 5.0) -> float:
    """Return once the cluster answers a metadata request (seconds waited); raise
    KafkaUnavailable after `patience` seconds of silence. Logs while it waits."""
    admin = admin_client(settings)
    began = time.monotonic()
    while True:
        try:
            admin.list_topics(timeout=min(settings.kafka_timeout, every))
            return time.monotonic() - began
        except KafkaException as exc:
            waited = time.monotonic() - began
            if waited >= patience:
                raise KafkaUnavailable(f"the Kafka cluster did not answer in {patience:.0f}s "
                                       f"(STREAMS_STARTUP_WAIT): {exc.args[0]}") from exc
            log.warning("waiting for the Kafka cluster",
                        extra={"waited_s": round(waited, 1), "error": str(exc.args[0])})
            time.sleep(min(1.0, max(0.0, patience - waited)))


def create_topics(settings: Settings, specs: list[TopicSpec]) -> dict[str, str]:
    """Create every missing topic; return name → 'created' | 'exists'. Raise on a mismatch."""
    admin = admin_client(settings)
    timeout = settings.kafka_timeout
    present = existing_topics(admin, timeout)
    outcome: dict[str, str] = {}
    mismatched = [
        f"{spec.name} has {present[spec.name]} partitions, the definition says {spec.partitions}"
        for spec in specs
        if spec.name in present and present[spec.name] != spec.partitions
    ]
    if mismatched:
        raise TopicError("; ".join(mismatched))
    missing = [spec for spec in specs if spec.name not in present]
    for spec in specs:
        if spec.name in present:
            outcome[spec.name] = "exists"
    if missing:
        new = [
            NewTopic(spec.name, spec.partitions, spec.replication_factor, config=dict(spec.config))
            for spec in missing
        ]
        futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout * 2)
                outcome[name] = "created"
                log.info("topic created", extra={"topic": name})
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    outcome[name] = "exists"  # another worker or test created it first
                else:
                    raise TopicError(f"cannot create {name}: {error.str()}") from exc
        _wait_until_visible(admin, missing, timeout * 3)
    return outcome


def _wait_until_visible(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> None:
    """Return once every new topic shows all its partitions with a leader.

    A producer that sees a new topic flap in and out of metadata resets its idempotence
    sequence numbers for it, and the broker then acknowledges later records as duplicates
    without writing them (librdkafka issue #3712). Waiting here keeps the first records safe.
    """
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=timeout)
        pending = [
            spec.name for spec in specs
            if (meta := metadata.topics.get(spec.name)) is None or meta.error is not None
            or len(meta.partitions) != spec.partitions
            or any(partition.leader < 0 for partition in meta.partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TopicError(f"topics created but without leaders after {timeout:.0f}s: {', '.join(pending)}")
        time.sleep(0.1)


def describe_topics(settings: Settings, specs: list[TopicSpec]) -> list[TopicState]:
    admin = admin_client(settings)
    timeout = settings.kafka_timeout
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"cannot read topic metadata: {exc.args[0]}") from exc
    found = [spec for spec in specs if spec.name in metadata.topics]
    configs: dict[str, dict[str, str]] = {}
    if found:
        resources = [ConfigResource(ResourceType.TOPIC, spec.name) for spec in found]
        for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
            entries = future.result(timeout=timeout * 2)
            configs[resource.name] = {
                key: entries[key].value for key in _SHOWN_CONFIGS if key in entries
            }
    states = []
    for spec in specs:
        meta = metadata.topics.get(spec.name)
        replicas = None
        if meta is not None and meta.partitions:
            replicas = len(next(iter(meta.partitions.values())).replicas)
        states.append(
            TopicState(
                name=spec.name,
                role=spec.role.value,
                exists=meta is not None,
                partitions=len(meta.partitions) if meta is not None else None,
                replication_factor=replicas,
                config=configs.get(spec.name, {}),
                wanted_partitions=spec.partitions,
            )
        )
    return states
