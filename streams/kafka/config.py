"""Client configuration shared by every confluent-kafka and faust/aiokafka client.

The SASL/SSL settings pass through here and nowhere else, so every client of a deployment
talks to the broker the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

from streams.errors import SettingsError
from streams.settings import Settings

# Headroom above STREAMS_MAX_RECORD_BYTES for headers and framing. Topics accept records this
# much larger than the ingest limit, so a record slightly over it still reaches the ingest agent
# (and is dead-lettered with a reason) instead of being refused by the broker.
RECORD_HEADROOM_BYTES = 256 * 1024


def max_message_bytes(settings: Settings) -> int:
    """What every topic (max.message.bytes) and every producer (message.max.bytes,
    max_request_size) takes: one setting, STREAMS_MAX_RECORD_BYTES, and the headroom."""
    return settings.max_record_bytes + RECORD_HEADROOM_BYTES


def work_record_budget(settings: Settings) -> int:
    """The largest work record, retry record or dead letter an agent writes before splitting it
    (streams.records.fit): the ingest limit, so the headroom is left for headers, framing and
    the one entity that is larger on its own."""
    return settings.max_record_bytes


def bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise SettingsError(
            "STREAMS_KAFKA_BOOTSTRAP: not set and no `streams dev up` broker is running"
        )
    return settings.kafka_bootstrap


class _LibrdkafkaLog:
    """What confluent-kafka is given as `logger`: it calls `log(level, format, *args)` for each
    librdkafka log line, from poll(), flush() or consume() on the caller's thread, instead of
    librdkafka writing `%3|…|FAIL|…` lines to stderr from its own threads.

    Every line is kept at DEBUG. Nearly all are a broker connection failing or closing, which is
    routine while a broker restarts and at every shutdown; what matters reaches the caller anyway,
    through error_cb, a delivery report or an exception, and the seams report it with context.
    Lines queued when nothing polls any more (at close) are dropped by confluent-kafka, never
    printed (confluent-kafka-python issue #1719)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def log(self, level: int, msg: str, *args: object) -> None:
        self._logger.debug(msg, *args, extra={"librdkafka_level": logging.getLevelName(level).lower()})


_LIBRDKAFKA_LOG = _LibrdkafkaLog(logging.getLogger("streams.kafka.librdkafka"))


def confluent_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Config for confluent-kafka Producer, Consumer and AdminClient."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap(settings),
        "security.protocol": settings.kafka_security_protocol,
        "socket.timeout.ms": int(settings.kafka_timeout * 1000),
        # Only librdkafka's errors (a broker disconnect is one), and those into Python logging.
        "log_level": 3,
        "logger": _LIBRDKAFKA_LOG,
    }
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username or ""
        password = settings.kafka_sasl_password
        config["sasl.password"] = password.get_secret_value() if password else ""
    if settings.kafka_ssl_cafile:
        config["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    config.update(extra)
    return config


def reliable_producer_config(settings: Settings, *, delivery_timeout: float,
                             error_cb: Callable[[KafkaError], None]) -> dict[str, Any]:
    """An idempotent producer that waits for every in-sync replica (no loss, no duplicates)."""
    return confluent_config(settings, **{
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": max_message_bytes(settings),
        "delivery.timeout.ms": int(delivery_timeout * 1000),
        "error_cb": error_cb,
    })
