"""Pure logic of the plan-apply agent: from the target's per-entity outcomes to the state
updates, change sets and counts of one work record."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.pipeline.outcomes import EntityOutcome, ErrorClass, State
from streams.records import WorkItem


def split(items: Sequence[WorkItem], size: int) -> list[list[dict[str, Any]]]:
    """Request bodies of at most `size` entities each."""
    bodies = [{"id": i.id, "object_type": i.object_type, "entity": i.entity} for i in items]
    return [bodies[start:start + size] for start in range(0, len(bodies), size)]


@dataclass
class Settlement:
    ids: list[str] = field(default_factory=list)
    states: list[int] = field(default_factory=list)
    errors: list[dict[str, Any] | None] = field(default_factory=list)
    change_sets: list[tuple[str, str]] = field(default_factory=list)  # (change_set_id, ingestion_log_id)
    changes: list[tuple[str, int, str, str, int | None, Any, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


# Until the retry tiers exist, a failed entity of either class ends FAILED.
_FAILED_STATE = {ErrorClass.TRANSIENT: State.FAILED, ErrorClass.PERMANENT: State.FAILED, ErrorClass.INVALID: State.FAILED}

COUNT_NAMES = {State.APPLIED: "applied", State.NO_CHANGES: "no_changes", State.FAILED: "failed",
               State.ERRORED: "errored", State.IGNORED: "ignored"}


def settle(outcomes: Iterable[EntityOutcome]) -> Settlement:
    result = Settlement()
    for outcome in outcomes:
        if outcome.state is not None:
            state, error = outcome.state, None
        else:
            assert outcome.failure is not None
            state, error = _FAILED_STATE[outcome.failure.error_class], outcome.failure.as_json()
        result.ids.append(outcome.id)
        result.states.append(int(state))
        result.errors.append(error)
        result.counts[COUNT_NAMES[state]] += 1
        if outcome.change_set is not None:
            change_set = outcome.change_set
            result.change_sets.append((change_set.id, outcome.id))
            for seq, change in enumerate(change_set.changes):
                result.changes.append((change_set.id, seq, change.change_type, change.object_type,
                                       change.object_id, change.before, change.data))
    return result


def recount(states: Iterable[int]) -> Counter[str]:
    """Counts of rows settled in an earlier delivery of the same work record."""
    return Counter(COUNT_NAMES[State(state)] for state in states)
