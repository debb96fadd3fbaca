"""The confluent-kafka producer of everything outside the faust agents: the producer client,
replays, the run tracker's completions. One way to send: idempotent (a librdkafka retry never
writes twice), acks=all, and checked: `flush` returns only when every record sent since the
last flush has its delivery report, and raises DeliveryError naming what failed otherwise.
Records are named in errors by what they are (a run and batch, a dead letter's offset), never
by their value."""

from __future__ import annotations

import logging
from functools import partial
from types import TracebackType
from typing import Self, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.errors import StreamsError
from streams.kafka.config import reliable_producer_config
from streams.settings import Settings

log = logging.getLogger(__name__)

_SHOWN_ERRORS = 5
_ANY_PARTITION = -1  # librdkafka: let the partitioner choose


class DeliveryError(StreamsError):
    """Records were not delivered: the broker refused them, or the time ran out."""


class CheckedProducer:
    def __init__(self, settings: Settings, *, delivery_timeout: float, linger_ms: int = 5) -> None:
        self.delivery_timeout = delivery_timeout
        self.sent = self.delivered = self.failed = 0
        self._errors: list[str] = []
        self._closed = False
        config = reliable_producer_config(settings, delivery_timeout=delivery_timeout, error_cb=self._on_error)
        config["linger.ms"] = linger_ms
        self._client = Producer(config)

    def send(self, topic: str, *, key: bytes | None, value: bytes, what: str,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
        """Queue one record; a full local queue is drained (delivery reports served) first."""
        on_delivery = partial(self._on_delivery, what)
        wire_headers = cast(list[tuple[str, str | bytes | None]] | None, headers)
        while True:
            try:
                self._client.produce(topic, value=value, key=key, headers=wire_headers, on_delivery=on_delivery,
                                     partition=_ANY_PARTITION if partition is None else partition)
                break
            except BufferError:
                self._client.poll(0.1)
            except KafkaException as exc:
                raise DeliveryError(f"cannot send {what} to {topic}: {describe(exc.args[0])}") from exc
        self.sent += 1
        self._client.poll(0)

    def flush(self, timeout: float | None = None) -> None:
        """Until every record sent so far is acknowledged (default: the delivery timeout and a
        margin). Raises DeliveryError if any failed or some are still undelivered."""
        timeout = self.delivery_timeout + 5.0 if timeout is None else timeout
        remaining = self._client.flush(timeout)
        errors, self._errors = self._errors, []
        problems = []
        if remaining:
            problems.append(f"{_records(remaining)} still undelivered after {timeout:g}s (is the broker reachable?)")
        if errors:
            shown = "; ".join(errors[:_SHOWN_ERRORS]) + (" …" if len(errors) > _SHOWN_ERRORS else "")
            problems.append(f"{_records(len(errors))} failed: {shown}")
        if not problems and self.delivered + self.failed != self.sent:
            # Every produced record gets exactly one delivery report; anything else means a report
            # was lost, and a record the broker never confirmed must not pass as sent.
            problems.append(f"{self.sent} records sent but {self.delivered + self.failed} reported back")
        if problems:
            raise DeliveryError("; ".join(problems))

    def close(self) -> None:
        """Drop what is still queued (its delivery reports say so) and close the client."""
        if self._closed:
            return
        self._closed = True
        if len(self._client):
            self._client.purge()
            self._client.poll(0)
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _on_delivery(self, what: str, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.delivered += 1
            return
        self.failed += 1
        self._errors.append(f"{what}: {describe(error)}")
        log.error("record not delivered", extra={"topic": message.topic(), "what": what, "error": describe(error)})

    def _on_error(self, error: KafkaError) -> None:
        # Non-fatal errors (a broker unreachable for a while) are retried by librdkafka until the
        # delivery timeout; a fatal one ends the producer, so every later send must fail.
        if error.fatal():
            self._errors.append(f"fatal producer error: {describe(error)}")
            log.error("producer failed", extra={"error": describe(error)})
        else:
            log.warning("producer error", extra={"error": describe(error)})


def describe(error: KafkaError) -> str:
    return f"{error.name()}: {error.str()}"


def _records(count: int) -> str:
    return f"{count} record" if count == 1 else f"{count} records"
