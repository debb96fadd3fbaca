"""Pure logic of the plan-apply step: request bodies, and where each entity goes once the
target answered (applied, a retry tier, or the dead-letter topic)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.pipeline.outcomes import EntityOutcome, ErrorClass, Failure, State
from streams.pipeline.retry import DeadLetter, decide


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
    dead: dict[ErrorClass, FailedGroup] = field(default_factory=lambda: defaultdict(FailedGroup))
    change_sets: list[tuple[str, str]] = field(default_factory=list)  # (change_set_id, ingestion_log_id)
    changes: list[tuple[str, int, str, str, int | None, Any, Any]] = field(default_factory=list)
    warnings: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # change_set_id -> warnings


def route(outcomes: Iterable[EntityOutcome], *, attempt: int, tiers: Sequence[float], now_ms: int) -> Routing:
    """Successes are done; each failure goes where streams.pipeline.retry.decide says."""
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
        decision = decide(failure.error_class, attempt=attempt, tiers=tiers, now_ms=now_ms,
                          retry_after=failure.retry_after)
        if isinstance(decision, DeadLetter):
            routing.dead[failure.error_class].add(outcome.id, failure)
        else:
            routing.retry[decision.tier].add(outcome.id, failure, decision.due_at_ms)
    return routing


SUCCESS_NAMES = {State.APPLIED: "applied", State.NO_CHANGES: "no_changes"}
