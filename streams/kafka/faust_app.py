"""The faust application every topology runs in, configured from the settings.

faust (and aiokafka under it) is the consumer side of the topology; confluent-kafka is used for
the producer client, admin and tooling. Both get the same security settings.
"""

from __future__ import annotations

import ssl

import faust

from streams.kafka.config import bootstrap, max_message_bytes
from streams.settings import Settings


def _credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    context = None
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def make_app(settings: Settings, *, web_port: int | None = None) -> faust.App:
    port = settings.worker_port if web_port is None else web_port
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in bootstrap(settings).split(",")],
        broker_credentials=_credentials(settings),
        # Tables are small (one entry per run) and rebuilt from their compacted changelog.
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        # Our topics are created by `streams topics create` from streams.kafka.topics.
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Work records and dead letters repeat the entity JSON; lz4 shrinks them several-fold.
        producer_compression_type="lz4",
        # A work record or dead letter up to what the topics take (aiokafka's default is 1 MiB,
        # less than a valid ingest record's work record: it was refused and retried forever).
        producer_max_request_size=max_message_bytes(settings),
        # faust insists request timeout >= session timeout.
        broker_request_timeout=max(90.0, settings.kafka_timeout * 3, settings.session_timeout * 2),
        # A killed worker's partitions move after the session timeout (faust's default is 60 s:
        # a minute of nothing for each kill); heartbeats a third of it apart, as Kafka advises.
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(1.0, settings.session_timeout / 3),
        consumer_group_instance_id=settings.instance_id,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        web_enabled=port != 0,
        web_port=port or 6066,
        web_bind="0.0.0.0",  # noqa: S104 - /health and /metrics are read from outside the host or container
        autodiscover=False,
    )
