"""What a replay does with each dead letter, and the records it sends: pure, no I/O.

A dead letter is either a work record (its items are ingestion_logs rows, requeued by the
replay) or the original bytes of an `ingest` record (no rows: it goes back to the ingest topic
as it was, and only when the operator named its error class with `--error-class`, since such a
record usually fails again until its producer is fixed).

Markers (one per replayed dead letter and replay, in `dlq_replay_records`) decide the rest: a
dead letter with a `sent` marker was replayed before and is skipped unless `--again`; one with
a `pending` marker was requeued by a replay that stopped before its records were confirmed, so
it is sent again with that replay's id and entities, whatever the filters. Reusing the id keeps
the work id and the run event id of the first attempt: a copy the broker did receive is claimed
once by plan-apply and counted once by the run tracker.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from streams.dlq.letters import DeadLetter
from streams.dlq.select import Filters, matches, order_key, selected_items
from streams.kafka import headers as h
from streams.kafka.topics import TopicNames
from streams.pipeline.outcomes import ErrorClass
from streams.records import RunEvent, WorkRecord, entities_requeued, fit


class Destination(str, Enum):
    WORK = "work"  # ingest.work, attempts start again from 1
    TIER = "tier"  # the first retry tier, due after its delay, attempts kept
    INGEST = "ingest"  # the original ingest record, for records that never became rows


class Skip(str, Enum):
    ALREADY_REPLAYED = "already replayed (use --again)"
    INGEST_NOT_SELECTED = "ingest record (select it with --error-class)"
    UNREADABLE = "neither a work record nor an ingest record"
    EXCERPT = "only an excerpt of the record was kept (it was over the size limit)"
    NOTHING_ERRORED = "no ERRORED entity left"
    LIMIT = "beyond --limit"


@dataclass(frozen=True)
class Marker:
    """A dead letter a replay requeued: `pending` until its records were confirmed, then `sent`."""

    partition: int
    offset: int
    replay_id: str
    status: str
    destination: Destination
    entity_ids: tuple[str, ...]


@dataclass(frozen=True)
class Action:
    letter: DeadLetter
    destination: Destination
    entity_ids: tuple[str, ...]  # rows to requeue (work records); empty for ingest records
    replay_id: str | None = None  # set on a resend: the replay that requeued the rows


@dataclass
class Plan:
    replay: list[Action] = field(default_factory=list)  # new, oldest first
    resend: list[Action] = field(default_factory=list)  # pending markers of an interrupted replay
    lost: list[Marker] = field(default_factory=list)  # pending markers whose record is gone
    skipped: Counter[Skip] = field(default_factory=Counter)
    matched: int = 0


def make_plan(letters: Iterable[DeadLetter], filters: Filters, markers: Mapping[tuple[int, int], Marker], *,
              destination: Destination, again: bool, ingest_topic: str) -> Plan:
    """Read `letters` once and decide; holds only the letters it will send."""
    plan = Plan()
    seen: set[tuple[int, int]] = set()
    candidates: list[Action] = []
    for letter in letters:
        where = (letter.partition, letter.offset)
        seen.add(where)
        marker = markers.get(where)
        if marker is not None and marker.status == "pending":
            plan.resend.append(Action(letter, marker.destination, marker.entity_ids, marker.replay_id))
            continue
        if not matches(letter, filters):
            continue
        plan.matched += 1
        if marker is not None and not again:
            plan.skipped[Skip.ALREADY_REPLAYED] += 1
        elif (reason := _unreplayable(letter, filters, ingest_topic)) is not None:
            plan.skipped[reason] += 1
        elif letter.work is None:
            candidates.append(Action(letter, Destination.INGEST, ()))
        else:
            ids = tuple(item.id for item in selected_items(letter, filters))
            candidates.append(Action(letter, destination, ids))
    candidates.sort(key=lambda action: order_key(action.letter))
    limit = len(candidates) if filters.limit is None else filters.limit
    plan.replay = candidates[:limit]
    if len(candidates) > limit:
        plan.skipped[Skip.LIMIT] += len(candidates) - limit
    plan.resend.sort(key=lambda action: order_key(action.letter))
    plan.lost = [m for where, m in markers.items() if m.status == "pending" and where not in seen]
    return plan


def assign_ids(actions: Sequence[Action], available: set[str]) -> list[tuple[str, ...]]:
    """The ids of `available` each action gets, in order: an entity held by two dead letters (it
    failed, was replayed, failed again) is requeued once, for the first of them."""
    left = set(available)
    out = []
    for action in actions:
        ids = tuple(i for i in action.entity_ids if i in left)
        left.difference_update(ids)
        out.append(ids)
    return out


def _unreplayable(letter: DeadLetter, filters: Filters, ingest_topic: str) -> Skip | None:
    if letter.excerpt_of is not None:
        return Skip.EXCERPT
    if letter.work is None:
        if letter.origin_topic != ingest_topic:
            return Skip.UNREADABLE
        if letter.error_class not in filters.error_classes:
            return Skip.INGEST_NOT_SELECTED
        return None
    if not letter.work.items or not all(_is_uuid(item.id) for item in letter.work.items):
        return Skip.UNREADABLE
    return None


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


# --- the records a replay sends ---------------------------------------------------------------

@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    event: RunEvent | None  # entities_requeued for work records; ingest records have no rows yet


def outgoing(action: Action, entity_ids: Sequence[str], *, replay_id: str, topics: TopicNames,
             first_tier_delay: float, now_ms: int, budget: int) -> list[Outgoing]:
    """The records that send `entity_ids` of `action.letter` back (one, or parts of at most
    `budget` bytes), the first of them with the dead letter's run event."""
    letter = action.letter
    if action.destination is Destination.INGEST:
        # A fresh start for the ingest agent: only the replay id travels with the original bytes.
        return [Outgoing(topics.ingest, letter.key, letter.value, [(h.REPLAY_ID, replay_id.encode())], None)]
    work = letter.work
    assert work is not None, "work destinations are planned for work records only"
    wanted = set(entity_ids)
    items = tuple(item for item in work.items if item.id in wanted)
    key = letter.key or f"{work.run_id}:{work.batch}".encode()
    to_tier = action.destination is Destination.TIER
    # Its own id, from the dead letter's and the replay's: two dead letters of one batch sent
    # back by one replay are two records, each claimed and counted; a resend is the same record.
    suffix = f"+r{replay_id}"
    if to_tier:
        # The record re-enters the ladder where it would have retried first, its history intact.
        record = work.derived(suffix, items, replay_id=replay_id,
                              errors={i: e for i, e in work.errors.items() if i in wanted})
        topic = topics.retry[0]
        headers = _tier_headers(letter, record, replay_id, now_ms + int(first_tier_delay * 1000), now_ms)
    else:
        record = work.derived(suffix, items, attempt=1, replay_id=replay_id)
        topic = topics.work
        headers = [(h.REPLAY_ID, replay_id.encode())]
    event = entities_requeued(work.run_id, work.batch, replay_id=replay_id, partition=letter.partition,
                              offset=letter.offset, requeued=len(items),
                              retry_in=len(items) if to_tier else 0)
    parts = fit(record, budget)
    return [Outgoing(topic, key, part.encode(), headers, event if index == 0 else None)
            for index, part in enumerate(parts)]


def _tier_headers(letter: DeadLetter, record: WorkRecord, replay_id: str, due_at_ms: int,
                  now_ms: int) -> list[tuple[str, bytes]]:
    incoming = {**letter.headers, h.REPLAY_ID: replay_id}  # the new replay id replaces an older one
    try:
        error_class = ErrorClass(letter.error_class or "")
    except ValueError:
        error_class = ErrorClass.PERMANENT
    return h.failure_headers(
        incoming, origin=h.Origin(letter.topic, letter.partition, letter.offset),
        attempt=letter.attempt or record.attempt, error_class=error_class,
        error=letter.error or "replayed from the dead letters", now_ms=now_ms, run_id=record.run_id,
        http_status=letter.http_status, due_at_ms=due_at_ms)
