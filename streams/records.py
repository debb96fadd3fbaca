"""The records `streams` writes to its own topics: work records and run events.

Internal wire shapes (JSON via orjson), produced and consumed only by our agents, so they are
plain frozen dataclasses without validation on the way in. The producer-facing records are in
streams.models and schemas/.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import orjson


class WorkItem(NamedTuple):
    """A NamedTuple, not a dataclass: work records hold thousands and are decoded in bulk."""

    id: str  # ingestion_logs.id, the target's idempotency key
    object_type: str
    entity: dict[str, Any]


@dataclass(frozen=True)
class WorkRecord:
    """A batch of accepted entities for plan-apply, on `ingest.work`, the retry tiers and the DLQ.

    Its identity (`work_id`) is the claim it holds on its rows and the id of the run event it
    reports, so it must be one per record and the same on every delivery of that record. It is
    given when the record is made and travels with it: a record derived from another (a retry
    record per tier, a dead letter per error class, a replay of a dead letter, a part of a
    record too large to send whole) gets its parent's id with a suffix saying how it was derived,
    so two records made from one never share an id, and making them again after a crash gives
    the same ids. Records without one (written by older versions) get `{run}/{batch}/{attempt}`.
    """

    run_id: str
    batch: int
    items: tuple[WorkItem, ...]
    attempt: int = 1  # the attempt this record will make; retries carry it in x-attempt too
    replay_id: str | None = None  # set on records a `streams dlq replay` sent back
    # Why each entity failed (id -> error), on records sent to a retry tier or the DLQ.
    errors: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    @property
    def work_id(self) -> str:
        if self.id is not None:
            return self.id
        base = f"{self.run_id}/{self.batch}/{self.attempt}"
        return f"{base}/r{self.replay_id}" if self.replay_id else base

    def derived(self, suffix: str, items: tuple[WorkItem, ...], *, attempt: int | None = None,
                replay_id: str | None = None, errors: dict[str, Any] | None = None) -> WorkRecord:
        """A record made from this one, for `items` (see the class docstring)."""
        return WorkRecord(self.run_id, self.batch, items, self.attempt if attempt is None else attempt,
                          self.replay_id if replay_id is None else replay_id, errors or {},
                          f"{self.work_id}{suffix}")

    def encode(self) -> bytes:
        raw: dict[str, Any] = {
            "run_id": self.run_id, "batch": self.batch, "attempt": self.attempt, "work_id": self.work_id,
            "items": [{"id": i.id, "object_type": i.object_type, "entity": i.entity} for i in self.items],
        }
        if self.replay_id:
            raw["replay_id"] = self.replay_id
        if self.errors:
            raw["errors"] = self.errors
        return orjson.dumps(raw)

    @classmethod
    def decode(cls, data: bytes) -> WorkRecord:
        raw = orjson.loads(data)
        items = tuple(WorkItem(i["id"], i["object_type"], i["entity"]) for i in raw["items"])
        work_id = raw.get("work_id")
        return cls(raw["run_id"], int(raw["batch"]), items, int(raw.get("attempt", 1)),
                   raw.get("replay_id"), raw.get("errors") or {}, work_id if isinstance(work_id, str) else None)


def fit(record: WorkRecord, budget: int) -> list[WorkRecord]:
    """`record` as parts of at most `budget` encoded bytes each: itself when it fits, else its
    items halved (recursively) into records `+p0`, `+p1` of its own id. The parts are the same on
    every call, so a record made again after a crash is split the same way. A single entity is
    never split; whatever its size (an ingest record holds at most STREAMS_MAX_RECORD_BYTES, and
    the topics take that plus headroom), it goes as one record."""
    if len(record.items) <= 1 or len(record.encode()) <= budget:
        return [record]
    half = len(record.items) // 2
    parts = []
    for index, items in enumerate((record.items[:half], record.items[half:])):
        wanted = {item.id for item in items}
        part = record.derived(f"+p{index}", items, errors={i: e for i, e in record.errors.items() if i in wanted})
        parts += fit(part, budget)
    return parts


@dataclass(frozen=True)
class RunEvent:
    """An accounting event on `ingest.run-events`, keyed by run_id.

    `event_id` is deterministic for the fact it reports, so the run tracker can count an event
    delivered twice (after a crash or a redelivered batch) exactly once. The types, their ids and
    the keys of `counts` (a count that is zero may be left out):

    - batch_accepted    accepted:{run}:{batch}        entities, new, duplicates  (+ producer)
    - sealed            sealed:{run}                  batches
    - entities_settled  settled:{work_id}             applied, no_changes, retry_in, retry_out,
                                                      dead_lettered (one per record: see WorkRecord)
    - entities_errored  errored:{work_id}             errored (the dead letter's record: a copy
                                                      of it read again, or sent again by the
                                                      sweep, is the same event)
    - entities_requeued requeued:{replay id}:{dlq partition}:{dlq offset}  requeued, retry_in

    Per batch: `new` entities were queued; each ends APPLIED, NO_CHANGES or ERRORED.
    in retry = Σ retry_in − Σ retry_out (retry_out counts the entities a record read from a
    retry tier took from it; a replay into a tier counts retry_in), errored = Σ errored − Σ requeued. A batch
    is settled when applied + no_changes + errored == new: completed if errored == 0, else
    failed. `dead_lettered` entities are on their way to the DLQ agent, which reports them as
    errored; they are counted there, not here.
    """

    type: str  # batch_accepted | sealed | entities_settled | entities_errored | entities_requeued
    event_id: str
    run_id: str
    batch: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    producer: dict[str, Any] | None = None

    def encode(self) -> bytes:
        return orjson.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def decode(cls, data: bytes) -> RunEvent:
        return cls(**orjson.loads(data))


def batch_accepted(run_id: str, batch: int, *, entities: int, new: int, duplicates: int,
                   producer: dict[str, Any] | None) -> RunEvent:
    return RunEvent("batch_accepted", f"accepted:{run_id}:{batch}", run_id, batch,
                    {"entities": entities, "new": new, "duplicates": duplicates}, producer)


def sealed(run_id: str, batches: int) -> RunEvent:
    return RunEvent("sealed", f"sealed:{run_id}", run_id, None, {"batches": batches})


def entities_settled(work: WorkRecord, counts: dict[str, int]) -> RunEvent:
    return RunEvent("entities_settled", f"settled:{work.work_id}", work.run_id, work.batch, counts)


def entities_errored(run_id: str, batch: int, *, work_id: str, errored: int) -> RunEvent:
    return RunEvent("entities_errored", f"errored:{work_id}", run_id, batch, {"errored": errored})


def entities_requeued(run_id: str, batch: int, *, replay_id: str, partition: int, offset: int,
                      requeued: int, retry_in: int) -> RunEvent:
    return RunEvent("entities_requeued", f"requeued:{replay_id}:{partition}:{offset}", run_id, batch,
                    {"requeued": requeued, "retry_in": retry_in})
