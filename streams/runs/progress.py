"""Run accounting as pure values: what a run event does to its batch, what a run adds up to,
and when a run is complete. No I/O; the run tracker stores these values in faust tables.

Two levels, so that no stored value grows with the size of a run:

- `BatchState`, one per (run, batch): the batch's counts and the ids of the events counted
  into it. An event id names one fact (records.RunEvent), so a redelivered event is recognised
  by its id and counted once. A batch collects only a handful of ids (accepted, one settle per
  work record attempt, one per dead letter and per replay), so keeping them all is both exact
  and small; a window or a Bloom filter would be neither.
- `RunProgress`, one per run: the seal, the sums of its batches (`Totals`, kept up to date by
  adding each batch's change) and what was last emitted.

A batch is settled when applied + no_changes + errored == new: completed if errored == 0,
else failed. A sealed run whose completed + failed == total is complete; it gets a new
revision when it is complete with counts other than those of its last revision (after a
replay settled failed batches, for example).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

from streams.models import BatchCounts, EntityCounts, RunCompleted
from streams.records import RunEvent

Outcome = Literal["completed", "failed"]


@dataclass(frozen=True)
class BatchState:
    events: tuple[str, ...] = ()  # ids of the events counted into this batch
    accepted: bool = False
    entities: int = 0  # in the producer's record
    new: int = 0  # queued as rows; each ends APPLIED, NO_CHANGES or ERRORED
    duplicates: int = 0
    applied: int = 0
    no_changes: int = 0
    errored: int = 0  # Σ errored − Σ requeued
    in_retry: int = 0  # Σ retry_in − Σ retry_out

    @property
    def settled(self) -> bool:
        return self.accepted and self.applied + self.no_changes + self.errored == self.new

    @property
    def outcome(self) -> Outcome | None:
        if not self.settled:
            return None
        return "completed" if self.errored == 0 else "failed"

    def to_json(self) -> dict[str, Any]:
        return {f.name: list(v) if f.name == "events" else v
                for f in fields(self) if (v := getattr(self, f.name)) or f.name == "events"}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> BatchState:
        if not data:
            return cls()
        return cls(**{**data, "events": tuple(data.get("events", ()))})


def count(event: RunEvent, name: str) -> int:
    """A count of the event; missing means zero, and keys we do not know are ignored."""
    value = event.counts.get(name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def apply_event(batch: BatchState, event: RunEvent) -> BatchState | None:
    """The batch after `event`, or None when the event changes nothing: counted before, or of a
    type this version does not know (counting a guess would be worse than not counting)."""
    if event.event_id in batch.events:
        return None
    if event.type == "batch_accepted":
        changed = replace(batch, accepted=True, entities=count(event, "entities"), new=count(event, "new"),
                          duplicates=count(event, "duplicates"))
    elif event.type == "entities_settled":
        changed = replace(batch, applied=batch.applied + count(event, "applied"),
                          no_changes=batch.no_changes + count(event, "no_changes"),
                          in_retry=batch.in_retry + count(event, "retry_in") - count(event, "retry_out"))
    elif event.type == "entities_errored":
        changed = replace(batch, errored=batch.errored + count(event, "errored"))
    elif event.type == "entities_requeued":
        changed = replace(batch, errored=batch.errored - count(event, "requeued"),
                          in_retry=batch.in_retry + count(event, "retry_in"))
    else:
        return None
    return replace(changed, events=(*batch.events, event.event_id))


@dataclass(frozen=True)
class Totals:
    """What the batches of a run add up to; additive, so a batch's change is new − old."""

    batches_accepted: int = 0
    batches_completed: int = 0
    batches_failed: int = 0
    entities_accepted: int = 0
    applied: int = 0
    no_changes: int = 0
    duplicates: int = 0
    in_retry: int = 0
    errored: int = 0
    events: int = 0  # events counted: grows with every change, orders snapshots of a run

    def __add__(self, other: Totals) -> Totals:
        return Totals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Totals) -> Totals:
        return Totals(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


def contribution(batch: BatchState) -> Totals:
    outcome = batch.outcome
    return Totals(
        batches_accepted=int(batch.accepted), batches_completed=int(outcome == "completed"),
        batches_failed=int(outcome == "failed"), entities_accepted=batch.entities, applied=batch.applied,
        no_changes=batch.no_changes, duplicates=batch.duplicates, in_retry=batch.in_retry,
        errored=batch.errored, events=len(batch.events),
    )


def recount(batches: list[BatchState]) -> Totals:
    total = Totals()
    for batch in batches:
        total += contribution(batch)
    return total


# The counts a RunCompleted reports, in a fixed order: two completions with the same signature
# say the same thing, so a complete run only gets a new revision when its signature changes.
Signature = tuple[int, int, int, int, int, int, int, int]


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    totals: Totals = field(default_factory=Totals)
    batches_total: int | None = None  # from the seal
    sealed_at: int | None = None  # epoch ms of the seal record
    first_seen: int = 0  # epoch ms of the earliest event counted
    updated: int = 0  # epoch ms of the latest change
    producer: dict[str, Any] | None = None
    revision: int = 0  # the last revision emitted; 0 before the first completion
    emitted: Signature | None = None  # the signature of that revision
    completed_at: int | None = None  # epoch ms of that revision

    @property
    def sealed(self) -> bool:
        return self.batches_total is not None

    @property
    def settled(self) -> bool:
        """Every batch of the sealed run is settled."""
        t = self.totals
        return self.batches_total is not None and t.batches_completed + t.batches_failed == self.batches_total

    @property
    def events(self) -> int:
        return self.totals.events + int(self.sealed)

    def signature(self) -> Signature:
        t = self.totals
        return (self.batches_total or 0, t.batches_completed, t.batches_failed, t.entities_accepted,
                t.applied, t.no_changes, t.duplicates, t.errored)

    @property
    def due(self) -> bool:
        """A completion (of revision + 1) should be emitted now."""
        return self.settled and (self.revision == 0 or self.signature() != self.emitted)

    def seen(self, at_ms: int) -> RunProgress:
        first = at_ms if not self.first_seen else min(self.first_seen, at_ms)
        return replace(self, first_seen=first, updated=max(self.updated, at_ms))

    def with_batch(self, old: BatchState, new: BatchState, at_ms: int,
                   producer: dict[str, Any] | None = None) -> RunProgress:
        changed = replace(self, totals=self.totals + contribution(new) - contribution(old),
                          producer=self.producer or producer)
        return changed.seen(at_ms)

    def seal(self, batches: int, at_ms: int) -> RunProgress | None:
        """Sealed with `batches`; None when already sealed (the first seal stands)."""
        if self.sealed:
            return None
        return replace(self, batches_total=batches, sealed_at=at_ms).seen(at_ms)

    def completion(self, revision: int, at_ms: int) -> RunCompleted:
        t = self.totals
        return RunCompleted(
            kind="run_completed", run_id=self.run_id, revision=revision,
            status="succeeded" if t.batches_failed == 0 else "failed",
            batches=BatchCounts(total=self.batches_total or 0, completed=t.batches_completed,
                                failed=t.batches_failed),
            entities=EntityCounts(accepted=t.entities_accepted, applied=t.applied, no_changes=t.no_changes,
                                  duplicates=t.duplicates, errored=t.errored),
            sealed_at=_utc(self.sealed_at or at_ms), completed_at=_utc(at_ms),
        )

    def emitted_as(self, completed: RunCompleted) -> RunProgress:
        """After `completed` is on the topic (sent now, or found there)."""
        return replace(self, revision=completed.revision, emitted=signature_of(completed),
                       completed_at=int(completed.completed_at.timestamp() * 1000))

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["totals"] = {f.name: getattr(self.totals, f.name) for f in fields(self.totals)}
        data["emitted"] = list(self.emitted) if self.emitted is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunProgress:
        emitted = data.get("emitted")
        return cls(**{**data, "totals": Totals(**data.get("totals", {})),
                      "emitted": tuple(emitted) if emitted is not None else None})


def signature_of(completed: RunCompleted) -> Signature:
    b, e = completed.batches, completed.entities
    return (b.total, b.completed, b.failed, e.accepted, e.applied, e.no_changes, e.duplicates, e.errored)


def _utc(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
