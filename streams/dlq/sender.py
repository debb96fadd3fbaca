"""An idempotent confluent-kafka producer whose deliveries are checked, for replayed records.

`flush` returns only when the broker acknowledged every record sent since the last flush
(acks=all), and raises DlqError otherwise: a replay marks its records `sent` only after it.
"""

from __future__ import annotations

import logging
from functools import partial
from types import TracebackType
from typing import Self

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.dlq import DlqError
from streams.kafka.config import reliable_producer_config
from streams.settings import Settings

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 60.0
_SHOWN_ERRORS = 5


class Sender:
    def __init__(self, settings: Settings, *, delivery_timeout: float = DELIVERY_TIMEOUT) -> None:
        self._timeout = delivery_timeout
        self._errors: list[str] = []
        self._sent = self._reported = 0
        self._client = Producer(reliable_producer_config(
            settings, delivery_timeout=delivery_timeout, error_cb=self._on_error))

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
             what: str) -> None:
        """Queue one record; `what` names it in errors (ids and offsets, never the value)."""
        on_delivery = partial(self._on_delivery, what)
        while True:
            try:
                self._client.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                self._client.poll(0.1)  # the local queue is full: let deliveries make room
            except KafkaException as exc:
                raise DlqError(f"cannot send {what} to {topic}: {_describe(exc.args[0])}") from exc
        self._sent += 1
        self._client.poll(0)

    def flush(self) -> None:
        remaining = self._client.flush(self._timeout + 5.0)
        errors, self._errors = self._errors, []
        sent, reported = self._sent, self._reported
        self._sent = self._reported = 0
        problems = []
        if remaining:
            problems.append(f"{remaining} records still undelivered after {self._timeout + 5.0:g}s")
        if errors:
            shown = "; ".join(errors[:_SHOWN_ERRORS]) + (" …" if len(errors) > _SHOWN_ERRORS else "")
            problems.append(f"{len(errors)} records failed: {shown}")
        if not problems and reported != sent:
            problems.append(f"{sent} records sent but {reported} reported back")
        if problems:
            raise DlqError("replayed records not delivered: " + "; ".join(problems))

    def close(self) -> None:
        """Drop what is still queued (a failed replay leaves its markers pending) and close."""
        if len(self._client):
            self._client.purge()
            self._client.poll(0)
        self._client.close()

    def _on_delivery(self, what: str, error: KafkaError | None, message: Message) -> None:
        self._reported += 1
        if error is not None:
            self._errors.append(f"{what}: {_describe(error)}")
            log.error("replayed record not delivered",
                      extra={"topic": message.topic(), "what": what, "error": _describe(error)})

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._errors.append(f"fatal producer error: {_describe(error)}")
        log.warning("producer error", extra={"error": _describe(error)})

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _describe(error: KafkaError) -> str:
    return f"{error.name()}: {error.str()}"
