"""The `ingest.completions` topic: RunCompleted records written by the run tracker, read by anyone.

    for completed in read_completions(settings, timeout=60):      # every completion, as it arrives
        print(completed.run_id, completed.revision, completed.status)

    completed = wait_for_completion(settings, "dc1-sweep", timeout=300)   # one run's completion

Every completion of a run goes to one partition, chosen with murmur2 like the Java client and
faust, so finding or awaiting one run's completions reads one partition. The tracker writes
with an idempotent producer and looks for an earlier copy of a completion before sending it
(see streams.runs.tracker), so a reader sees each (run_id, revision) once; readers need no
`read_committed` isolation and no dedup of their own.

All calls here block (confluent-kafka); the tracker runs them in a thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from aiokafka.partitioner import murmur2
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Message
from pydantic import ValidationError

from streams.errors import StreamsError
from streams.kafka.producer import CheckedProducer, DeliveryError
from streams.kafka.reader import KafkaUnavailable, Reader
from streams.kafka.topics import topic_names
from streams.models import RunCompleted
from streams.settings import Settings

log = logging.getLogger(__name__)

# librdkafka reports every record's fate within this time; waiting for that report before
# anything else is what lets the tracker look for the record afterwards without a race.
DELIVERY_TIMEOUT_MS = 30_000
_POLL = 0.2


class CompletionTimeout(StreamsError, TimeoutError):
    """The awaited completion did not arrive in time."""


class CompletionsUnavailable(StreamsError, ConnectionError):
    """The completions topic cannot be read or written now (broker down, topic missing)."""


def partition_for(run_id: str, partitions: int) -> int:
    """The partition of a run's completions: murmur2 of the key, as the Java client does."""
    return int(murmur2(run_id.encode()) & 0x7FFFFFFF) % partitions


def decode(message: Message) -> RunCompleted | None:
    try:
        return RunCompleted.model_validate_json(message.value() or b"")
    except ValidationError:
        log.warning("not a RunCompleted record; skipped", extra={
            "topic": message.topic(), "partition": message.partition(), "offset": message.offset()})
        return None


def encode(completed: RunCompleted) -> bytes:
    return completed.model_dump_json().encode()


# --- readers -------------------------------------------------------------------------------


def read_completions(settings: Settings, *, from_beginning: bool = True,
                     timeout: float | None = None) -> Iterator[RunCompleted]:
    """Every RunCompleted on the topic (from its start, or only new ones), as they arrive.

    Ends after `timeout` seconds in all (None: never); break out of the loop to stop sooner.
    """
    topic = topic_names(settings).completions
    with _reading(), Reader(settings) as reader:
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        reader.assign((topic, p, start) for p in reader.partitions(topic))
        deadline = time.monotonic() + timeout if timeout is not None else float("inf")
        for message in reader.messages(deadline):
            completed = decode(message)
            if completed is not None:
                yield completed


def wait_for_completion(settings: Settings, run_id: str, *, timeout: float,
                        revision: int | None = None) -> RunCompleted:
    """The RunCompleted of `run_id`: of `revision` if given, else the latest one on the topic
    (or, when there is none yet, the first to arrive). Raises CompletionTimeout."""
    topic = topic_names(settings).completions
    key = run_id.encode()
    deadline = time.monotonic() + timeout
    with _reading(), Reader(settings) as reader:
        partition = partition_for(run_id, len(reader.partitions(topic)))
        _, caught_up_at = reader.watermarks(topic, partition)
        reader.assign([(topic, partition, OFFSET_BEGINNING)])
        latest: RunCompleted | None = None
        for message in reader.messages(deadline):
            completed = decode(message) if message.key() == key else None
            if completed is not None:
                if revision is not None and completed.revision == revision:
                    return completed
                if revision is None and (latest is None or completed.revision > latest.revision):
                    latest = completed
            # The records that were there when we started are read: the latest of them is the answer.
            if revision is None and latest is not None and (message.offset() or 0) + 1 >= caught_up_at:
                return latest
    what = f"revision {revision} of run {run_id!r}" if revision is not None else f"run {run_id!r}"
    raise CompletionTimeout(f"no completion of {what} on {topic} within {timeout:g}s")


@contextmanager
def _reading() -> Iterator[None]:
    try:
        yield
    except KafkaUnavailable as exc:
        raise CompletionsUnavailable(str(exc)) from exc


# --- the tracker's side ----------------------------------------------------------------------


class CompletionLog:
    """What the run tracker needs of the topic: find a completion, send one. Not thread-safe;
    the tracker makes one call at a time."""

    def __init__(self, settings: Settings) -> None:
        self.topic = topic_names(settings).completions
        self._settings = settings
        self._timeout = settings.kafka_timeout
        self._partition_count: int | None = None
        self._consumer: Reader | None = None
        self._producer: CheckedProducer | None = None

    def partition(self, run_id: str) -> int:
        if self._partition_count is None:
            with _reading():
                self._partition_count = len(self._reader().partitions(self.topic))
        return partition_for(run_id, self._partition_count)

    def find(self, run_id: str, revision: int, *, since_ms: int) -> RunCompleted | None:
        """The completion (run_id, revision) if it is on the topic at or after `since_ms`."""
        reader = self._reader()
        partition = self.partition(run_id)
        with _reading():
            start = reader.offset_for_time(self.topic, partition, since_ms)
            _, end = reader.watermarks(self.topic, partition)
            if start < 0 or start >= end:
                return None  # nothing written since then
            key = run_id.encode()
            reader.assign([(self.topic, partition, start)])
            try:
                for message in reader.messages(time.monotonic() + self._timeout * 3):
                    if message.key() == key and (completed := decode(message)) and completed.revision == revision:
                        return completed
                    if (message.offset() or 0) + 1 >= end:
                        return None
            finally:
                reader.unassign()
        raise CompletionsUnavailable(f"reading {self.topic} partition {partition} up to {end} timed out")

    def send(self, completed: RunCompleted) -> None:
        """Write `completed` and wait until the broker has it; raise if it could not.

        Waits for the delivery report even on failure, so that nothing of ours is still on its
        way to the broker when the caller looks for the record again.
        """
        producer = self._writer()
        try:
            producer.send(self.topic, key=completed.run_id.encode(), value=encode(completed),
                          partition=self.partition(completed.run_id), what=f"completion of {completed.run_id!r}")
            producer.flush(DELIVERY_TIMEOUT_MS / 1000 + 10)
        except DeliveryError as exc:
            # An idempotent producer in a fatal state only fails from now on: start a new one.
            self._close_writer()
            raise CompletionsUnavailable(f"completion of {completed.run_id!r} not written: {exc}") from exc

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._close_writer()

    def _reader(self) -> Reader:
        if self._consumer is None:
            self._consumer = Reader(self._settings)
        return self._consumer

    def _writer(self) -> CheckedProducer:
        if self._producer is None:
            self._producer = CheckedProducer(self._settings, delivery_timeout=DELIVERY_TIMEOUT_MS / 1000, linger_ms=0)
        return self._producer

    def _close_writer(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
