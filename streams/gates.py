"""Gates: whatever holds work back in this worker right now, why, and since when.

An operator's worst case is work that stops silently (a latch shut for months with no line
saying why). So every place that makes work wait holds a gate while it does and releases it
when the work moves again: the target's circuit breaker, refused credentials, an agent waiting
for Postgres or Kafka, a retry-tier partition paused until its next due time, a partition held
until its committed offsets are known. The worker publishes the open gates (streams.status)
and exports them as metrics, so `streams status` can name the reason from any machine.

Gate names are a small fixed set (they are metric labels); the scope says what is held (an
agent, a topic partition) and the reason is free text for people.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from streams import metrics


class GateName(str, Enum):
    BREAKER_OPEN = "breaker_open"  # the target failed as a whole: calls wait for the cool-down
    CREDENTIALS_REFUSED = "credentials_refused"  # 401/403 after a fresh token: nothing applies
    TARGET_MISCONFIGURED = "target_misconfigured"  # wrong URL or envelope (400/404/405)
    DATABASE_UNAVAILABLE = "database_unavailable"  # an agent waits for Postgres
    KAFKA_UNAVAILABLE = "kafka_unavailable"  # an agent waits for the broker
    TARGET_UNAVAILABLE = "target_unavailable"  # an agent's batch waits for the target
    BATCH_FAILING = "batch_failing"  # a batch fails and is tried again before dead-lettering
    TIER_WAIT = "tier_wait"  # a retry-tier partition is paused until its next record is due
    OFFSETS_UNKNOWN = "offsets_unknown"  # a partition's records wait for its committed offsets
    NO_WORKERS = "no_workers"  # work waits and no worker reports (seen by `streams status` only)


@dataclass(frozen=True)
class Gate:
    name: GateName
    scope: str
    reason: str
    since: float  # epoch seconds
    until: float | None = None  # when it is expected to open by itself, if known

    def as_dict(self) -> dict[str, object]:
        return {"gate": self.name.value, "scope": self.scope, "reason": self.reason,
                "since": round(self.since, 3), "until": None if self.until is None else round(self.until, 3)}


class Gates:
    """The open gates of one process. Thread-safe: the tier consumer's thread and the event
    loop both hold and release."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._open: dict[tuple[GateName, str], Gate] = {}
        self._lock = threading.Lock()

    def hold(self, name: GateName, scope: str, reason: str, *, until: float | None = None) -> None:
        """Open (or keep open) gate `name` on `scope`; `since` stays that of the first hold."""
        with self._lock:
            before = self._open.get((name, scope))
            since = before.since if before is not None else self._clock()
            self._open[(name, scope)] = Gate(name, scope, reason[:300], since, until)
            self._export(name)

    def release(self, name: GateName, scope: str) -> None:
        with self._lock:
            if self._open.pop((name, scope), None) is not None:
                self._export(name)

    def release_scope(self, scope: str, *names: GateName) -> None:
        """Release `names` (every gate when none is given) held on `scope`."""
        with self._lock:
            for key in [key for key in self._open if key[1] == scope and (not names or key[0] in names)]:
                del self._open[key]
                self._export(key[0])

    def snapshot(self) -> list[Gate]:
        with self._lock:
            return sorted(self._open.values(), key=lambda gate: (gate.since, gate.name.value, gate.scope))

    def _export(self, name: GateName) -> None:
        held = [gate for key, gate in self._open.items() if key[0] is name]
        metrics.GATES_OPEN.labels(gate=name.value).set(len(held))
        metrics.GATE_SINCE.labels(gate=name.value).set(min((gate.since for gate in held), default=0))


# The process's gates: one worker, one set.
GATES = Gates()
# Every gate exported from the start: a dashboard sees 0, not a missing series, until one opens.
for _name in GateName:
    metrics.GATES_OPEN.labels(gate=_name.value).set(0)
    metrics.GATE_SINCE.labels(gate=_name.value).set(0)
