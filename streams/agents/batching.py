"""Batches of Kafka events whose offsets are acked only once their outcome is durable.

faust acks an event when the agent moves past it, and its `take()` family acks the whole
buffer in a `finally:` even when the agent body raised (faust issues #527, #315): the offsets
of records that were never processed get committed. Here the stream is consumed with acks
off (`stream.enable_acks = False`); faust still tracks every event as unacked and commits only up to the
first unacked offset of each partition. The handler sends what it produces through a
Checkpoint (streams.kafka.checkpoint), which acks the batch only after every record sent is
on the broker; a record dead-lettered is acked the same way. So:

- an error that is the infrastructure's (Postgres or Kafka unreachable, the target down) retries
  the same batch with backoff, forever: the partition waits, nothing is skipped;
- any other error retries the batch a few times, then each record alone; a record that still
  fails is handed to `dead_letter` with the reason, then acked;
- a crash or a shutdown mid-batch leaves the batch unacked, so it is delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import faust
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from streams import metrics
from streams.backoff import delay
from streams.errors import DatabaseUnavailable, TargetUnavailable
from streams.gates import GATES, GateName
from streams.kafka.checkpoint import Ack, AckOrder, Checkpoint, Watermarks
from streams.kafka.positions import PartitionGuard

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[Any], Checkpoint], Awaitable[None]]


class DeadLetterWriter(Protocol):
    """Sends `event` to the dead-letter topic with `error` through `out`; `excerpt`: only its
    first bytes (the whole record could not be written)."""

    def __call__(self, event: Any, error: BaseException, out: Checkpoint, *,
                 excerpt: bool = False) -> Awaitable[None]: ...


Describe = Callable[[Any], dict[str, Any]]


def _where(event: faust.types.EventT) -> tuple[Any, int]:
    message = event.message
    return message.tp, message.offset


def _position(record: Any) -> tuple[Any, int]:
    """Partition and offset of a faust event or of a tier record (streams.agents.plan_apply.Incoming)."""
    origin = getattr(record, "origin", None)
    if origin is not None:
        return (origin.topic, origin.partition), origin.offset
    return _where(record)


def describe_event(event: faust.types.EventT) -> dict[str, Any]:
    message = event.message
    return {"topic": message.topic, "partition": message.partition, "offset": message.offset}


BATCH_TRIES = 3
RECORD_TRIES = 2
MAX_BACKOFF = 30.0


def is_too_large(error: BaseException) -> bool:
    """A record the broker or the producer refuses for its size: permanent for that record."""
    return isinstance(error, MessageSizeTooLargeError | RecordListTooLargeError | RecordTooLargeError)


def wait_gate(error: BaseException) -> GateName:
    """The gate an agent holds while it waits out `error` (see streams.gates)."""
    if isinstance(error, DatabaseUnavailable):
        return GateName.DATABASE_UNAVAILABLE
    if isinstance(error, TargetUnavailable):
        return GateName.TARGET_UNAVAILABLE
    if isinstance(error, KafkaError | ConnectionError | TimeoutError):
        # Postgres and target errors arrive translated (above): a bare one is the broker's.
        return GateName.KAFKA_UNAVAILABLE
    return GateName.BATCH_FAILING


_WAIT_GATES = (GateName.DATABASE_UNAVAILABLE, GateName.TARGET_UNAVAILABLE, GateName.KAFKA_UNAVAILABLE,
               GateName.BATCH_FAILING)


def is_infrastructure(error: BaseException) -> bool:
    """Errors that say nothing about the record: retrying later is the only right answer."""
    if is_too_large(error):
        return False  # a KafkaError, but about the record: retrying it would wait forever
    return isinstance(error, (DatabaseUnavailable, TargetUnavailable, KafkaError, ConnectionError, TimeoutError))


IDLE_CHECK = 1.0


class GuardedBatches:
    """Runs `handler` over batches of up to `max_records` events gathered for up to `within` s.

    With a `guard` (streams.kafka.positions.PartitionGuard), records reach the handler in
    offset order per partition: one after a hole faust left (it drops records around a
    rebalance) is held back while the partition is read again from the hole, so no offset is
    acked, and none committed, past a record that was never processed. A record delivered again
    while its first delivery is still being processed (faust seeks back in a rebalance) is
    left to the first.
    """

    def __init__(self, name: str, handler: Handler, dead_letter: DeadLetterWriter, *,
                 max_records: int, within: float, describe: Describe = describe_event,
                 guard: PartitionGuard | None = None) -> None:
        self.name = name
        self.handler = handler
        self.dead_letter = dead_letter
        self.max_records = max_records
        self.within = within
        self.describe = describe
        self.guard = guard
        self._in_flight: set[tuple[Any, int]] = set()
        # Shared by the agent's actors: no ack reaches faust before those of earlier offsets.
        self._order = AckOrder()

    async def run(self, stream: faust.StreamT) -> None:
        # Acks off on the agent's own stream (as faust's take() does internally, but for good):
        # a clone made with stream.noack() is stopped by faust after the first batch.
        source = stream
        source.enable_acks = False
        events = source.events().__aiter__()
        pending: asyncio.Future[Any] | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch: list[faust.types.EventT] = []
                deadline = 0.0
                while len(batch) < self.max_records:
                    if pending is None:
                        pending = asyncio.ensure_future(events.__anext__())
                    timeout = IDLE_CHECK if not batch else max(0.0, deadline - loop.time())
                    done, _ = await asyncio.wait({pending}, timeout=timeout)
                    if not done:
                        if batch:
                            break  # the window closed; the pending read carries over to the next batch
                        if self.guard is not None:
                            await self.guard.check_idle()
                        continue
                    try:
                        event = pending.result()
                    except StopAsyncIteration:
                        return  # the stream ended: the worker is stopping; the batch stays unacked
                    finally:
                        pending = None
                    if not await self._admit(event):
                        continue
                    if not batch:
                        deadline = loop.time() + self.within
                    batch.append(event)
                if not batch:
                    continue
                try:
                    await self.settle(batch, _acker(source, self._order))
                finally:
                    self._in_flight.difference_update(_where(event) for event in batch)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    async def _admit(self, event: faust.types.EventT) -> bool:
        where = _where(event)
        if where in self._in_flight:
            metrics.RECORDS.labels(agent=self.name, outcome="in_flight_again").inc()
            return False  # delivered again while its first delivery is processed: left to that one
        if self.guard is not None and not await self.guard.admit(*where):
            return False  # after a hole: it comes again once the partition is read from the hole
        self._in_flight.add(where)
        self._order.opened(*where)
        return True

    async def settle(self, batch: list[Any], ack: Ack, watermarks: Watermarks | None = None) -> None:
        """Process `batch` until every record has an outcome (processed or dead-lettered), then
        acknowledge it with `ack`, after everything it produced is on the broker (with
        `watermarks`, for acknowledgements that are positions: never one behind the last)."""
        started = time.perf_counter()
        out = Checkpoint(ack, watermarks=watermarks, where=_position)
        try:
            if await self._attempt(batch, BATCH_TRIES, out) is None:
                metrics.RECORDS.labels(agent=self.name, outcome="processed").inc(len(batch))
            else:
                # Something in the batch fails every time: find which record, settle the others.
                for event in batch:
                    error = await self._attempt([event], RECORD_TRIES, out)
                    if error is None:
                        metrics.RECORDS.labels(agent=self.name, outcome="processed").inc()
                    else:
                        await self._dead_letter(event, error, out)
            await self._commit(out, batch)
        finally:
            metrics.BATCH_SECONDS.labels(agent=self.name).observe(time.perf_counter() - started)

    async def _attempt(self, batch: list[Any], tries: int, out: Checkpoint) -> BaseException | None:
        """Run the handler until it succeeds (None) or fails `tries` times (the last error)."""
        failures = 0
        gated = False
        while True:
            try:
                async with out.attempt():
                    await self.handler(batch, out)
                    await out.flush()  # a record the broker cannot take fails the attempt, not the ack
                if failures or gated:
                    GATES.release_scope(self.name, *_WAIT_GATES)
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.RETRIES.labels(agent=self.name).inc()
                infra = is_infrastructure(exc)
                if not infra:
                    failures += 1
                log.warning(
                    "batch failed; it will be processed again" if infra or failures < tries
                    else "batch keeps failing",
                    extra={"agent": self.name, "error": type(exc).__name__, "detail": str(exc)[:300],
                           "infrastructure": infra, "records": len(batch), "failures": failures,
                           **self.describe(batch[0])},
                    exc_info=not infra,
                )
                if not infra and failures >= tries:
                    GATES.release(GateName.BATCH_FAILING, self.name)
                    return exc
                GATES.hold(wait_gate(exc), self.name, f"{type(exc).__name__}: {str(exc)[:200]}")
                gated = True
                # An open breaker says how long to wait; otherwise back off with jitter.
                wait = getattr(exc, "retry_in", None)
                await asyncio.sleep(max(wait, 0.5) if wait else delay(failures if not infra else 3))

    async def _dead_letter(self, event: Any, error: BaseException, out: Checkpoint) -> None:
        """Write the dead letter, whatever it takes: the infrastructure is waited for; a letter
        too large for the topic goes as an excerpt; any other failure, after a few tries, too."""
        attempt = 0
        excerpt = False
        while True:
            try:
                async with out.attempt():
                    await self.dead_letter(event, error, out, excerpt=excerpt)
                    await out.flush()  # a letter the broker refuses is known here, not at the commit
                metrics.RECORDS.labels(agent=self.name, outcome="dead_lettered").inc()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the dead-letter write must not be skipped
                attempt += 1
                infra = is_infrastructure(exc)
                if not excerpt and (is_too_large(exc) or (not infra and attempt >= RECORD_TRIES)):
                    excerpt = True
                    log.error("dead letter not written whole; writing an excerpt of the record",
                              extra={"agent": self.name, "error": type(exc).__name__, **self.describe(event)})
                    continue
                log.error("dead-letter write failed; retrying", extra={
                    "agent": self.name, "error": type(exc).__name__, "attempt": attempt,
                    "infrastructure": infra, **self.describe(event)})
                await asyncio.sleep(delay(attempt))

    async def _commit(self, out: Checkpoint, batch: list[Any]) -> None:
        # Every attempt that counted was flushed inside it: this acks (and flushes extras).
        await out.commit(batch)


def _acker(source: faust.StreamT, order: AckOrder) -> Ack:
    """faust's acknowledgement of each event, in offset order per partition (see AckOrder)."""
    async def ack(events: Sequence[Any]) -> None:
        for event in events:
            # An event held back is acked later through the stream (actor) that processed it.
            for stream, ready in order.done(*_where(event), (source, event)):
                await stream.ack(ready)
    return ack
