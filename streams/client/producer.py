"""The producer client: send a run's batches and its seal to the `ingest` topic.

    with IngestProducer(settings) as client:
        summary = client.send_run("dc1-sweep-2026-11-22", entities, batch_size=500)

Each record is checked against the wire models (`streams.models`) and the size limit before it
is sent, so a producer hears about a bad record at once rather than finding it on the dead-letter
topic. Delivery is idempotent (`enable.idempotence`, `acks=all`): a librdkafka retry never writes
a batch twice. Delivery failures are collected by the callbacks and raised by `flush`, so none
is dropped silently.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from pydantic import ValidationError

import streams
from streams.kafka.producer import CheckedProducer, DeliveryError
from streams.kafka.topics import topic_names
from streams.models import MAX_ENTITIES, RunCompleted, parse_ingest_record
from streams.runs import completions
from streams.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PRODUCER = {"app_name": "streams-produce", "app_version": streams.__version__}
DEFAULT_DELIVERY_TIMEOUT = 120.0
# Leaving a `with` block on an error should not hang for the full delivery timeout.
_ABORT_FLUSH_SECONDS = 10.0

OnBatch = Callable[[int, int], None]

__all__ = ["DeliveryError", "IngestProducer", "RunSummary"]


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    batches: int
    entities: int


class IngestProducer:
    """Sends ingest records through one idempotent confluent-kafka Producer."""

    def __init__(self, settings: Settings, *, producer: dict[str, Any] | None = None,
                 delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT) -> None:
        self.topic = topic_names(settings).ingest
        self._settings = settings
        self._max_bytes = settings.max_record_bytes
        self._producer_info = dict(producer or DEFAULT_PRODUCER)
        self._client = CheckedProducer(settings, delivery_timeout=delivery_timeout)

    @property
    def sent(self) -> int:
        return self._client.sent

    @property
    def delivered(self) -> int:
        return self._client.delivered

    @property
    def failed(self) -> int:
        return self._client.failed

    # --- records ------------------------------------------------------------------------------

    def send_batch(self, run_id: str, batch: int, entities: Sequence[dict[str, Any]], *,
                   request_id: str | None = None, producer: dict[str, Any] | None = None) -> str:
        """Queue batch `batch` of run `run_id`; return its request_id (the record key).

        Raises ValueError for fewer than 1 or more than 1000 entities, an invalid record, or one
        larger than STREAMS_MAX_RECORD_BYTES.
        """
        request_id = request_id or str(uuid.uuid4())
        value = self._encode_batch(run_id, batch, entities, request_id, producer)
        self._check_size(value, run_id, batch)
        self._produce(request_id.encode(), value, f"run {run_id!r} batch {batch}")
        return request_id

    def seal(self, run_id: str, batches: int, *, producer: dict[str, Any] | None = None) -> None:
        """Queue the seal of run `run_id`: it has `batches` batches, numbered from 0."""
        record = {"kind": "seal", "run_id": run_id, "batches": batches,
                  "producer": producer or self._producer_info}
        _validate(record, f"seal of run {run_id!r}")
        self._produce(run_id.encode(), orjson.dumps(record), f"seal of run {run_id!r}")

    def send_run(self, run_id: str, entities: Iterable[dict[str, Any]], *, batch_size: int = 500,
                 producer: dict[str, Any] | None = None, seal: bool = True,
                 on_batch: OnBatch | None = None) -> RunSummary:
        """Send `entities` as batches 0, 1, … of at most `batch_size`, then the seal; flush.

        A batch whose record would exceed the size limit is split in two (again if need be), so
        a run of large entities still goes through. `on_batch(batch, entities)` is called as each
        batch is queued. Returns when every record is delivered; raises DeliveryError otherwise.
        """
        if not 1 <= batch_size <= MAX_ENTITIES:
            raise ValueError(f"batch_size must be 1 to {MAX_ENTITIES}, got {batch_size}")
        items = iter(entities)
        batches = sent = 0
        while chunk := list(itertools.islice(items, batch_size)):
            batches += self._send_fitting(run_id, batches, chunk, producer, on_batch)
            sent += len(chunk)
        if seal:
            self.seal(run_id, batches, producer=producer)
        self.flush()
        log.info("run sent", extra={"run_id": run_id, "batches": batches, "count": sent, "sealed": seal})
        return RunSummary(run_id, batches, sent)

    def _send_fitting(self, run_id: str, batch: int, chunk: list[dict[str, Any]],
                      producer: dict[str, Any] | None, on_batch: OnBatch | None) -> int:
        """Send `chunk` from batch number `batch` on, halving it while too large; return the count."""
        request_id = str(uuid.uuid4())
        value = self._encode_batch(run_id, batch, chunk, request_id, producer)
        if len(value) > self._max_bytes and len(chunk) > 1:
            half = len(chunk) // 2
            first = self._send_fitting(run_id, batch, chunk[:half], producer, on_batch)
            return first + self._send_fitting(run_id, batch + first, chunk[half:], producer, on_batch)
        self._check_size(value, run_id, batch)
        self._produce(request_id.encode(), value, f"run {run_id!r} batch {batch}")
        if on_batch is not None:
            on_batch(batch, len(chunk))
        return 1

    def _encode_batch(self, run_id: str, batch: int, entities: Sequence[dict[str, Any]],
                      request_id: str, producer: dict[str, Any] | None) -> bytes:
        if not 1 <= len(entities) <= MAX_ENTITIES:
            raise ValueError(f"a batch holds 1 to {MAX_ENTITIES} entities, got {len(entities)}")
        record = {"kind": "batch", "run_id": run_id, "batch": batch, "request_id": request_id,
                  "producer": producer or self._producer_info, "entities": list(entities)}
        _validate(record, f"run {run_id!r} batch {batch}")
        return orjson.dumps(record)

    def _check_size(self, value: bytes, run_id: str, batch: int) -> None:
        if len(value) > self._max_bytes:
            raise ValueError(
                f"run {run_id!r} batch {batch}: the record has {len(value)} bytes, more than "
                f"STREAMS_MAX_RECORD_BYTES={self._max_bytes}; send fewer entities per batch"
            )

    def wait_for_completion(self, run_id: str, *, timeout: float, revision: int | None = None) -> RunCompleted:
        """The run's RunCompleted from `ingest.completions` (see streams.runs.completions):
        of `revision` if given, else the latest. Raises CompletionTimeout after `timeout` s."""
        return completions.wait_for_completion(self._settings, run_id, timeout=timeout, revision=revision)

    # --- delivery -----------------------------------------------------------------------------

    def _produce(self, key: bytes, value: bytes, what: str) -> None:
        self._client.send(self.topic, key=key, value=value, what=what)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every queued record (default: the delivery timeout and a margin).

        Raises DeliveryError if any record failed, or some are still undelivered at the timeout.
        """
        try:
            self._client.flush(timeout)
        except DeliveryError as exc:
            raise DeliveryError(f"topic {self.topic}: {exc}") from None

    def close(self) -> None:
        """Drop what is still queued (its delivery reports say so) and close the client."""
        self._client.close()

    def __enter__(self) -> IngestProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.flush()
                return
            # Already failing: deliver what is queued if it is quick, and let the first error
            # propagate; a delivery failure here is logged, not lost.
            try:
                self.flush(_ABORT_FLUSH_SECONDS)
            except DeliveryError as error:
                log.error("records not delivered", extra={"topic": self.topic, "error": str(error)})
        finally:
            self.close()


def _validate(record: dict[str, Any], what: str) -> None:
    try:
        parse_ingest_record(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:]) or "record"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise ValueError(f"{what}: {where}: {first['msg']}{more}") from None
