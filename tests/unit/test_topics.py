"""Topic names and configs come from one definition and respect Kafka's limits."""

from __future__ import annotations

import pytest

from streams.errors import SettingsError
from streams.kafka.topics import Role, topic_names, topology
from streams.settings import Settings


def test_default_names_are_the_spec_names() -> None:
    names = topic_names(Settings(_env_file=None))  # type: ignore[call-arg]
    assert names.ingest == "ingest"
    assert names.work == "ingest.work"
    assert names.retry == ("ingest.retry.30s", "ingest.retry.5m", "ingest.retry.1h")
    assert names.dlq == "ingest.dlq"
    assert names.run_events == "ingest.run-events"
    assert names.completions == "ingest.completions"


def test_prefix_renames_every_topic() -> None:
    settings = Settings(topic_prefix="acme.", retry_tiers="2s,4s", _env_file=None)  # type: ignore[call-arg]
    specs = topology(settings)
    assert all(spec.name.startswith("acme.") for spec in specs)
    assert [s.name for s in specs if s.role is Role.RETRY] == ["acme.ingest.retry.2s", "acme.ingest.retry.4s"]


def test_configs() -> None:
    settings = Settings(partitions=6, dlq_retention="90d", retry_tiers="30s,5m,3d", _env_file=None)  # type: ignore[call-arg]
    specs = {spec.role: spec for spec in topology(settings)}
    assert all(spec.partitions == 6 for spec in topology(settings))
    assert specs[Role.CHANGELOG].config["cleanup.policy"] == "compact"
    assert specs[Role.DLQ].config["retention.ms"] == str(90 * 86_400_000)
    retry = [spec for spec in topology(settings) if spec.role is Role.RETRY]
    assert [spec.delay_seconds for spec in retry] == [30, 300, 259200]
    # A record waiting three days must still be there when it is due.
    assert int(retry[-1].config["retention.ms"]) >= 4 * 259_200_000
    assert int(specs[Role.INGEST].config["max.message.bytes"]) > settings.max_record_bytes
    assert "min.insync.replicas" not in specs[Role.INGEST].config


def test_replicated_deployments_require_two_in_sync_replicas() -> None:
    settings = Settings(replication_factor=3, _env_file=None)  # type: ignore[call-arg]
    assert all(spec.config["min.insync.replicas"] == "2" for spec in topology(settings))


def test_prefix_that_makes_an_invalid_name_is_refused() -> None:
    settings = Settings(topic_prefix="x" * 100, _env_file=None)  # type: ignore[call-arg]
    assert topic_names(settings).ingest.startswith("x")
    with pytest.raises(SettingsError, match="STREAMS_TOPIC_PREFIX"):
        topic_names(Settings(topic_prefix="..", _env_file=None).model_copy(update={"topic_prefix": "a" * 245}))  # type: ignore[call-arg]
