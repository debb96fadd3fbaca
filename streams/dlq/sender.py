"""The replay's sends: the checked producer (streams.kafka.producer), with its failures as
DlqError. `flush` returns only when the broker acknowledged every record sent since the last
flush (acks=all); a replay marks its records `sent` only after it."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from streams.dlq import DlqError
from streams.kafka.producer import CheckedProducer, DeliveryError
from streams.settings import Settings

DELIVERY_TIMEOUT = 60.0


class Sender:
    def __init__(self, settings: Settings, *, delivery_timeout: float = DELIVERY_TIMEOUT) -> None:
        self._producer = CheckedProducer(settings, delivery_timeout=delivery_timeout)

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
             what: str) -> None:
        """Queue one record; `what` names it in errors (ids and offsets, never the value)."""
        try:
            self._producer.send(topic, key=key, value=value, headers=headers, what=what)
        except DeliveryError as exc:
            raise DlqError(str(exc)) from exc

    def flush(self) -> None:
        try:
            self._producer.flush()
        except DeliveryError as exc:
            raise DlqError(f"replayed records not delivered: {exc}") from exc

    def close(self) -> None:
        """Drop what is still queued (a failed replay leaves its markers pending) and close."""
        self._producer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
