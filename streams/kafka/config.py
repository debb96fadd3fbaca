"""Client configuration shared by every confluent-kafka and faust/aiokafka client.

The SASL/SSL settings pass through here and nowhere else, so every client of a deployment
talks to the broker the same way.
"""

from __future__ import annotations

from typing import Any

from streams.errors import SettingsError
from streams.settings import Settings


def bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise SettingsError(
            "STREAMS_KAFKA_BOOTSTRAP: not set and no `streams dev up` broker is running"
        )
    return settings.kafka_bootstrap


def confluent_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Config for confluent-kafka Producer, Consumer and AdminClient."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap(settings),
        "security.protocol": settings.kafka_security_protocol,
        "socket.timeout.ms": int(settings.kafka_timeout * 1000),
        # librdkafka logs every broker disconnect at warning level; the seams report failures.
        "log_level": 3,
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
