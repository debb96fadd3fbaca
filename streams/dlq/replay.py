"""`streams dlq replay`: send dead letters back once their cause is fixed (spec §3.6).

The order per batch of dead letters, written down once here:

1. one transaction: their ERRORED rows → QUEUED (requeued_from_state 7) and a `pending`
   marker per dead letter that has something to send;
2. produce the replayed records and their `entities_requeued` run events;
3. flush, and check that the broker acknowledged every record;
4. mark those markers `sent`.

A crash after 1 leaves rows QUEUED with no record on its way; their markers are `pending`, and
the next replay sends them again (plan.py says why that is safe). A crash after 2 or 3 may send
a record twice; the work id and run event id are the same both times, so plan-apply claims the
rows once and the run tracker counts the event once.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from streams.db.dlq_store import ReplayStore, open_store
from streams.dlq import DlqError
from streams.dlq.letters import DeadLetter
from streams.dlq.plan import Action, Destination, Plan, Skip, assign_ids, make_plan, outgoing
from streams.dlq.reader import read_dead_letters
from streams.dlq.select import Filters, Tally
from streams.dlq.sender import Sender
from streams.kafka.config import work_record_budget
from streams.kafka.topics import TopicNames, topic_names
from streams.settings import Settings

log = logging.getLogger(__name__)

BATCH_SIZE = 100
SAMPLES = 5

Advance = Callable[[int], None]


def default_requester() -> str:
    user = os.environ.get("USER") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class ReplayOptions:
    destination: Destination = Destination.WORK
    again: bool = False
    rate: float | None = None  # dead letters per second
    requested_by: str = field(default_factory=default_requester)
    batch_size: int = BATCH_SIZE

    def __post_init__(self) -> None:
        if self.destination is Destination.INGEST:
            raise ValueError("the destination is work or tier; ingest records always go back to ingest")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("the rate must be greater than zero")

    @property
    def chunk(self) -> int:
        # With a rate, a batch is about a second of records: a crash leaves few pending.
        return self.batch_size if self.rate is None else max(1, min(self.batch_size, int(self.rate)))


@dataclass
class ReplayReport:
    replay_id: str | None  # None for a dry run
    destination: str  # the topics it sends to, comma-separated (also the audit row's destination)
    dry_run: bool
    matched: int = 0
    replayed: int = 0  # dead letters sent back (a dry run: that would be)
    entities: int = 0  # rows requeued
    resent: int = 0  # pending dead letters of an interrupted replay, sent again
    resent_from: set[str] = field(default_factory=set)
    lost: int = 0  # pending markers whose dead letter is no longer on the topic
    skipped: Counter[str] = field(default_factory=Counter)
    by_error_class: dict[str | None, Tally] = field(default_factory=dict)
    samples: list[tuple[DeadLetter, int]] = field(default_factory=list)

    def count(self, action: Action, entities: int) -> None:
        self.replayed += 1
        self.entities += entities
        letter = action.letter
        self.by_error_class.setdefault(letter.error_class, Tally()).add(letter.timestamp, entities)
        if len(self.samples) < SAMPLES:
            self.samples.append((action.letter, entities))


def replay(settings: Settings, filters: Filters, options: ReplayOptions, *,
           on_total: Advance | None = None, on_advance: Advance | None = None) -> ReplayReport:
    """Replay the dead letters `filters` select; return what was done.

    Raises DlqError when another replay holds the lock, or records were not delivered (their
    markers stay pending for the next replay).
    """
    names = topic_names(settings)
    with open_store(settings, names.dlq) as store:
        if not store.try_lock():
            raise DlqError("another `streams dlq replay` is running on this database; try again when it ends")
        plan = _plan(settings, store, filters, options, names)
        replay_id = str(uuid.uuid4())
        report = _report(plan, replay_id, _destinations(plan, names, options.destination), dry_run=False)
        store.start(replay_id, filters.as_json(), report.destination, options.requested_by, options.again)
        log.info("dlq replay started", extra={
            "replay_id": replay_id, "filters": filters.as_json(), "destination": report.destination,
            "matched": plan.matched, "to_replay": len(plan.replay), "to_resend": len(plan.resend)})
        if on_total is not None:
            on_total(len(plan.resend) + len(plan.replay))
        error: str | None = None
        try:
            with Sender(settings) as sender:
                batches = _Batches(store, sender, names, settings.retry_tiers[0], replay_id, report,
                                   _Pacer(options.rate), on_advance or (lambda _n: None),
                                   work_record_budget(settings))
                for chunk in _chunks(plan.resend, options.chunk):
                    batches.resend(chunk)
                for chunk in _chunks(plan.replay, options.chunk):
                    batches.replay(chunk, fresh=options.destination is Destination.WORK)
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise
        finally:
            _finish(store, replay_id, report, error)
    return report


def dry_run(settings: Settings, filters: Filters, options: ReplayOptions) -> ReplayReport:
    """What `replay` would do now; reads the topic and the rows, writes nothing anywhere."""
    names = topic_names(settings)
    with open_store(settings, names.dlq) as store:
        plan = _plan(settings, store, filters, options, names)
        report = _report(plan, None, _destinations(plan, names, options.destination), dry_run=True)
        for chunk in _chunks(plan.replay, 500):
            errored = store.errored([i for action in chunk for i in action.entity_ids])
            for action, ids in zip(chunk, assign_ids(chunk, errored), strict=True):
                if _has_work(action, ids):
                    report.count(action, len(ids))
                else:
                    report.skipped[Skip.NOTHING_ERRORED.value] += 1
    return report


# --- internals --------------------------------------------------------------------------------

def _plan(settings: Settings, store: ReplayStore, filters: Filters, options: ReplayOptions,
          names: TopicNames) -> Plan:
    markers = store.markers()
    return make_plan(read_dead_letters(settings, topic=names.dlq), filters, markers,
                     destination=options.destination, again=options.again, ingest_topic=names.ingest)


def _report(plan: Plan, replay_id: str | None, destination: str, *, dry_run: bool) -> ReplayReport:
    report = ReplayReport(replay_id, destination, dry_run, matched=plan.matched, lost=len(plan.lost))
    report.skipped.update({skip.value: count for skip, count in plan.skipped.items()})
    if dry_run:
        report.resent = len(plan.resend)
        report.resent_from = {action.replay_id for action in plan.resend if action.replay_id}
    for marker in plan.lost:
        log.warning("pending dead letter no longer on the topic", extra={
            "replay_id": marker.replay_id, "partition": marker.partition, "offset": marker.offset})
    return report


def _destinations(plan: Plan, names: TopicNames, chosen: Destination) -> str:
    """The topics this replay sends to (resends keep the destination of their first replay);
    the chosen one when there is nothing to send."""
    topic = {Destination.WORK: names.work, Destination.TIER: names.retry[0], Destination.INGEST: names.ingest}
    used = dict.fromkeys(topic[action.destination] for action in [*plan.resend, *plan.replay])
    return ", ".join(used) or topic[chosen]


def _has_work(action: Action, ids: Sequence[str]) -> bool:
    """A work record with no ERRORED entity left has nothing to send."""
    return action.destination is Destination.INGEST or bool(ids)


def _finish(store: ReplayStore, replay_id: str, report: ReplayReport, error: str | None) -> None:
    try:
        store.finish(replay_id, matched=report.matched, replayed=report.replayed, resent=report.resent,
                     skipped=sum(report.skipped.values()), error=error)
    except Exception:
        log.exception("cannot finish the dlq_replays row", extra={"replay_id": replay_id})
    log.info("dlq replay finished", extra={
        "replay_id": replay_id, "replayed": report.replayed, "resent": report.resent,
        "entities": report.entities, "skipped": sum(report.skipped.values()), "error": error})


def _chunks(items: Sequence[Action], size: int) -> Iterator[Sequence[Action]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _Pacer:
    """At most `rate` dead letters per second, measured from the first one."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.started: float | None = None
        self.count = 0

    def wait(self) -> None:
        if self.rate is None:
            return
        now = self.clock()
        if self.started is None:
            self.started = now
        delay = self.started + self.count / self.rate - now
        if delay > 0:
            self.sleep(delay)
        self.count += 1


@dataclass
class _Batches:
    store: ReplayStore
    sender: Sender
    names: TopicNames
    first_tier_delay: float
    replay_id: str
    report: ReplayReport
    pacer: _Pacer
    advance: Advance
    budget: int  # bytes of the largest replayed record before it is split

    def resend(self, actions: Sequence[Action]) -> None:
        """Pending dead letters of an interrupted replay: their rows are QUEUED already."""
        self._send([(action, action.entity_ids) for action in actions])
        self.report.resent += len(actions)
        self.report.resent_from.update(action.replay_id for action in actions if action.replay_id)

    def replay(self, actions: Sequence[Action], *, fresh: bool) -> None:
        requeued = self.store.requeue(self.replay_id, actions, fresh=fresh)
        sending = []
        for action, ids in zip(actions, requeued, strict=True):
            if _has_work(action, ids):
                sending.append((action, ids))
            else:
                self.report.skipped[Skip.NOTHING_ERRORED.value] += 1
                self.advance(1)
        self._send(sending)
        for action, ids in sending:  # counted once the broker confirmed them
            self.report.count(action, len(ids))

    def _send(self, pairs: Sequence[tuple[Action, Sequence[str]]]) -> None:
        if not pairs:
            return
        now_ms = int(time.time() * 1000)
        confirmed = []
        for action, ids in pairs:
            replay_id = action.replay_id or self.replay_id
            letter = action.letter
            what = f"dead letter {letter.partition}/{letter.offset}"
            self.pacer.wait()
            for out in outgoing(action, ids, replay_id=replay_id, topics=self.names,
                                first_tier_delay=self.first_tier_delay, now_ms=now_ms, budget=self.budget):
                if out.event is not None:
                    event = out.event
                    self.sender.send(self.names.run_events, event.run_id.encode(), event.encode(), [], what)
                self.sender.send(out.topic, out.key, out.value, out.headers, what)
            confirmed.append((letter.partition, letter.offset, replay_id))
            self.advance(1)
        self.sender.flush()
        self.store.mark_sent(self.replay_id, confirmed)
        log.info("dead letters replayed", extra={
            "replay_id": self.replay_id, "count": len(confirmed),
            "entities": sum(len(ids) for _, ids in pairs)})
