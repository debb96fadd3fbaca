"""Pure logic of the plan-apply step: where each entity goes once the target answered (applied,
a retry tier, or the dead-letter topic), the records that take it there, and what a record
delivered again finds it already did. No I/O: streams.agents.plan_apply does the calls, the
store (streams.db.apply_store) the writes."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.pipeline.outcomes import EntityOutcome, ErrorClass, Failure, RequestFault, State
from streams.pipeline.retry import SendToDlq, decide
from streams.records import WorkItem, WorkRecord, fit


@dataclass
class FailedGroup:
    """Entities that leave together for one retry tier or for the dead-letter topic."""

    ids: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    due_at_ms: int = 0

    def add(self, entity_id: str, failure: Failure, due_at_ms: int = 0) -> None:
        self.ids.append(entity_id)
        self.errors.append(failure.as_json())
        self.failures.append(failure)
        self.due_at_ms = max(self.due_at_ms, due_at_ms)

    @property
    def summary(self) -> str:
        first = self.failures[0].message
        return first if len(self.ids) == 1 else f"{first} (and {len(self.ids) - 1} more entities)"

    @property
    def http_status(self) -> int | None:
        statuses = {f.http_status for f in self.failures}
        return statuses.pop() if len(statuses) == 1 else None


@dataclass
class Routing:
    done_ids: list[str] = field(default_factory=list)
    done_states: list[int] = field(default_factory=list)
    retry: dict[int, FailedGroup] = field(default_factory=lambda: defaultdict(FailedGroup))
    # Per tier, the entities the target as a whole failed: tried again at the same attempt.
    again: dict[int, FailedGroup] = field(default_factory=lambda: defaultdict(FailedGroup))
    dead: dict[ErrorClass, FailedGroup] = field(default_factory=lambda: defaultdict(FailedGroup))
    change_sets: list[tuple[str, str]] = field(default_factory=list)  # (change_set_id, ingestion_log_id)
    changes: list[tuple[str, int, str, str, int | None, Any, Any]] = field(default_factory=list)
    warnings: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # change_set_id -> warnings


# A record the target as a whole failed this many times without costing an attempt costs one
# from then on: a target that fails one request for ever while it serves the others (so the
# breaker never opens) still ends with the entity dead-lettered, a day or so later.
MAX_FREE_RETRIES = 24


def route(outcomes: Iterable[EntityOutcome], *, attempt: int, tiers: Sequence[float], now_ms: int,
          free_retries: int = 0) -> Routing:
    """Successes are done; each failure goes where streams.pipeline.retry.decide says.
    `free_retries`: how often the record's forebears were failed by the target as a whole."""
    routing = Routing()
    for outcome in outcomes:
        if outcome.change_set is not None:
            change_set = outcome.change_set
            routing.change_sets.append((change_set.id, outcome.id))
            if outcome.warnings:
                routing.warnings[change_set.id] = outcome.warnings
            for seq, change in enumerate(change_set.changes):
                routing.changes.append((change_set.id, seq, change.change_type, change.object_type,
                                        change.object_id, change.before, change.data))
        if outcome.state is not None:
            routing.done_ids.append(outcome.id)
            routing.done_states.append(int(outcome.state))
            continue
        failure = outcome.failure
        assert failure is not None
        free = failure.request is RequestFault.UNAVAILABLE and free_retries < MAX_FREE_RETRIES
        decision = decide(failure.error_class, attempt=attempt, tiers=tiers, now_ms=now_ms,
                          retry_after=failure.retry_after, costs_attempt=not free)
        if isinstance(decision, SendToDlq):
            routing.dead[failure.error_class].add(outcome.id, failure)
        else:
            (routing.again if free else routing.retry)[decision.tier].add(outcome.id, failure, decision.due_at_ms)
    return routing


SUCCESS_NAMES = {State.APPLIED: "applied", State.NO_CHANGES: "no_changes"}


@dataclass(frozen=True)
class Leaving:
    """The records a settled work record sends: per tier its retry records, and its dead letters
    with their error class, each split to fit the topics (records.fit). Made before the rows
    are routed: each record's id is the claim its rows get."""

    retries: dict[int, list[WorkRecord]]
    deads: list[tuple[ErrorClass, WorkRecord]]
    again: dict[int, list[WorkRecord]] = field(default_factory=dict)  # per tier, at the same attempt


def leaving(work: WorkRecord, items: Sequence[WorkItem], routing: Routing, budget: int) -> Leaving:
    by_id = {item.id: item for item in items}
    retries = {tier: fit(retry_work(work, tier, group, by_id), budget) for tier, group in routing.retry.items()}
    again = {tier: fit(retry_work(work, tier, group, by_id, free=True), budget)
             for tier, group in routing.again.items()}
    deads = [(error_class, part) for error_class, group in routing.dead.items()
             for part in fit(dead_work(work, error_class, group, by_id), budget)]
    return Leaving(retries, deads, again)


def retry_work(work: WorkRecord, tier: int, group: FailedGroup, by_id: dict[str, WorkItem], *,
               free: bool = False) -> WorkRecord:
    """The retry record of `group` on `tier`: the next attempt, the errors that sent it there.
    `free`: the target failed as a whole, so the same attempt again (id suffix `+a<tier>`)."""
    return work.derived(f"+a{tier}" if free else f"+t{tier}", tuple(by_id[i] for i in group.ids),
                        attempt=work.attempt if free else work.attempt + 1,
                        errors=dict(zip(group.ids, group.errors, strict=True)))


def free_retries(work: WorkRecord) -> int:
    """How many of the hops that made `work` were failures of the target as a whole."""
    prefix = f"{work.run_id}/{work.batch}/"
    tail = work.work_id[len(prefix):] if work.work_id.startswith(prefix) else ""
    return sum(1 for suffix in tail.split("+")[1:] if suffix[:1] == "a")


def is_free_retry(child_id: str) -> bool:
    """Whether a retry record's id says it was made by a failure of the target as a whole."""
    for suffix in reversed(child_id.split("+")[1:]):
        if suffix[:1] != "p":  # a part of a record split to fit says nothing about why it was made
            return suffix[:1] == "a"
    return False


def dead_work(work: WorkRecord, error_class: ErrorClass, group: FailedGroup, by_id: dict[str, WorkItem]) -> WorkRecord:
    """The dead letter of `group`: the attempt that failed, with each entity's error."""
    return work.derived(f"+d{error_class.value}", tuple(by_id[i] for i in group.ids),
                        errors=dict(zip(group.ids, group.errors, strict=True)))


@dataclass
class Earlier:
    """What an earlier delivery of a work record did, read back from its rows: the counts to
    report again, and the records to send again (under the ids the rows hold)."""

    counts: Counter[str] = field(default_factory=Counter)
    retries: dict[tuple[int, str], FailedGroup] = field(default_factory=lambda: defaultdict(FailedGroup))
    deads: dict[tuple[ErrorClass, str], FailedGroup] = field(default_factory=lambda: defaultdict(FailedGroup))


def earlier(rows: Iterable[Any], tiers: int) -> Earlier:
    """`rows`: (id, state, claimed_by, retry_tier, due_at_ms, last_error) as routed_by_claim
    reads them (streams.db.apply_store.RoutedRow)."""
    found = Earlier()
    for row in rows:
        state = State(row.state)
        if state in SUCCESS_NAMES:
            found.counts[SUCCESS_NAMES[state]] += 1
        elif state is State.PENDING_RETRY:
            tier = min(int(row.retry_tier or 0), tiers - 1)
            found.retries[(tier, row.claimed_by)].add(row.id, failure_from(row.last_error), int(row.due_at_ms or 0))
            found.counts["retry_in"] += 1
        elif state is State.FAILED:
            failure = failure_from(row.last_error)
            found.deads[(failure.error_class, row.claimed_by)].add(row.id, failure)
            found.counts["dead_lettered"] += 1
        elif state is State.ERRORED:
            found.counts["dead_lettered"] += 1  # the dead-letter agent already has it
    return found


def failure_from(last_error: Any) -> Failure:
    """The failure a row's `last_error` records (the `Failure.as_json` shape)."""
    error = last_error if isinstance(last_error, dict) else {}
    try:
        error_class = ErrorClass(error.get("class", "transient"))
    except ValueError:
        error_class = ErrorClass.PERMANENT
    return Failure(error_class, str(error.get("message", "failed")), error.get("http_status"),
                   detail=error.get("detail"))
