"""How fast a chaos trial went: polls of ingestion_logs, busy-time rates and their ratio.

Pure: no I/O, no clock (tests/unit/test_chaos.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

# ingestion_logs states (diode's numbers, streams.pipeline.outcomes.State).
APPLIED, FAILED, NO_CHANGES, ERRORED, QUEUED, APPLYING, PENDING_RETRY = 3, 4, 5, 7, 1, 8, 9
FINAL_STATES = frozenset({APPLIED, NO_CHANGES, ERRORED})
NON_TERMINAL_STATES = frozenset({QUEUED, FAILED, APPLYING, PENDING_RETRY})
# Busy seconds the steady side needs before a ratio is judged: it is one run's burst.
MIN_STEADY_BUSY = 5.0


# --- throughput ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One poll: ingestion_logs rows by state and duplicates counted (a duplicate of an accepted
    entity is not a row), runs with a completion recorded, entities sent by then, and the state
    of the workers' consumer group."""

    at: float  # epoch seconds
    states: Mapping[int, int]
    duplicates: int = 0
    completed_runs: int = 0
    sent: int = 0
    group: str = ""  # e.g. STABLE, PREPARING_REBALANCING; UNKNOWN when the broker did not answer
    members: int = 0

    @property
    def rows(self) -> int:
        return sum(self.states.values())

    @property
    def final(self) -> int:
        return sum(n for state, n in self.states.items() if state in FINAL_STATES)

    @property
    def non_terminal(self) -> int:
        return sum(n for state, n in self.states.items() if state in NON_TERMINAL_STATES)

    @property
    def accounted(self) -> int:
        """Entities sent that the database knows of: rows plus duplicates counted."""
        return self.rows + self.duplicates

    @property
    def backlog(self) -> int:
        """Work not yet tried: entities sent but not yet ingested, and rows queued or being
        applied. Rows waiting in a retry tier are not backlog: they wait for their due time."""
        return max(0, self.sent - self.accounted) + self.states.get(QUEUED, 0) + self.states.get(APPLYING, 0)

    def settled(self, sent: int, runs: int) -> bool:
        return self.accounted >= sent and self.non_terminal == 0 and self.completed_runs >= runs


def _pairs(samples: Sequence[Sample], start: float, end: float) -> list[tuple[Sample, Sample]]:
    inside = [s for s in samples if start <= s.at <= end]
    return list(pairwise(inside))


def rate(samples: Sequence[Sample], start: float, end: float) -> float | None:
    """Entities reaching a final state per second between `start` and `end` (wall time), from
    the first and last samples inside the window (None when fewer than two fall in it)."""
    inside = [s for s in samples if start <= s.at <= end]
    if len(inside) < 2 or inside[-1].at <= inside[0].at:
        return None
    return (inside[-1].final - inside[0].final) / (inside[-1].at - inside[0].at)


Window = tuple[float, float]  # (from, until), epoch seconds


def busy_rate(samples: Sequence[Sample], start: float, end: float,
              left_out: Sequence[Window] = ()) -> tuple[float | None, float]:
    """(entities final per second of busy time, busy seconds) between `start` and `end`.

    Busy time is every interval between two samples that began with backlog: the pipeline had
    work it could do. Idle time (nothing sent yet, or only retries waiting for their tier) is
    left out, so the rate is the pipeline's capacity however the work arrived. A stall with
    backlog (partitions without an owner, Postgres down) is busy time with no progress.
    Intervals that touch a window of `left_out` do not count at all.
    """
    busy = done = 0.0
    for first, second in _pairs(samples, start, end):
        if any(first.at < until and second.at > since for since, until in left_out):
            continue
        if first.backlog > 0:
            busy += second.at - first.at
            done += second.final - first.final
    return (done / busy if busy > 0 else None), busy


def unsettled_group(samples: Sequence[Sample], start: float, end: float, members: int) -> float:
    """Seconds between `start` and `end` when the consumer group was not STABLE with `members`
    members (rebalancing, waiting for a dead member's session to expire, or broker down)."""
    return sum(second.at - first.at for first, second in _pairs(samples, start, end)
               if first.group != "STABLE" or first.members != members)


def restart_windows(samples: Sequence[Sample], restarts: Sequence[Window], members: int) -> list[Window]:
    """The time each service restart stopped everyone: from its start until the service was
    back and the workers' group stable at full size again (or until it was back, when the
    samples never show that). No number of surviving workers can progress then, so this time
    is the restart's, not the kills'."""
    windows = []
    for since, back in restarts:
        stable = next((s.at for s in samples if s.at >= back and s.group == "STABLE" and s.members == members), back)
        windows.append((since, stable))
    return windows


def without_lost(samples: Sequence[Sample], sizes: Sequence[int], lost: Sequence[int]) -> list[Sample]:
    """The samples with the entities that never reached the database (known at the end, and
    reported as lost) taken out of `sent`, so that they do not count as backlog for ever.
    Runs are sent in order, so a sample's `sent` says which runs it includes."""
    adjusted = []
    for sample in samples:
        included = gone = 0
        for size, missing in zip(sizes, lost, strict=True):
            if sample.sent < included + size:
                break
            included += size
            gone += missing
        adjusted.append(replace(sample, sent=sample.sent - gone) if gone else sample)
    return adjusted


def recent_rate(samples: Sequence[Sample], seconds: float = 10.0) -> float | None:
    if not samples:
        return None
    return rate(samples, samples[-1].at - seconds, samples[-1].at)


@dataclass(frozen=True)
class Throughput:
    steady: float | None  # entities/s of busy time before the disturbance
    steady_busy: float  # seconds of it
    disturbed: float | None  # entities/s of busy time during the disturbance
    disturbed_busy: float
    ratio: float | None
    measurable: bool  # enough busy time on both sides for the ratio to mean something
    settle_seconds: float | None  # from the end of the disturbance to everything settled
    unsettled_group: float  # seconds of the disturbance with the group not STABLE at full size
    restarts_seconds: float = 0.0  # of the disturbance, left out of `disturbed` (restart_windows)
    with_restarts: float | None = None  # the disturbance's busy-time rate with them counted


def throughput(samples: Sequence[Sample], *, steady_from: float | None, disturbed_from: float | None,
               disturbed_until: float | None, settled_at: float | None, members: int,
               min_busy: float, restarts: Sequence[Window] = ()) -> Throughput:
    """Busy-time rates before and during the disturbance, their ratio, and the time to settle.
    The disturbed rate leaves out the service restarts (`restarts`: when each began and was
    back), also shown with them counted."""
    steady = disturbed = ratio = with_restarts = None
    steady_busy = disturbed_busy = unsettled = restarts_seconds = 0.0
    if steady_from is not None and disturbed_from is not None:
        steady, steady_busy = busy_rate(samples, steady_from, disturbed_from)
    if disturbed_from is not None and disturbed_until is not None:
        windows = restart_windows(samples, restarts, members)
        disturbed, disturbed_busy = busy_rate(samples, disturbed_from, disturbed_until, windows)
        with_restarts, _ = busy_rate(samples, disturbed_from, disturbed_until)
        restarts_seconds = sum(min(until, disturbed_until) - max(since, disturbed_from) for since, until in windows
                               if until > disturbed_from and since < disturbed_until)
        unsettled = unsettled_group(samples, disturbed_from, disturbed_until, members)
    if steady and disturbed is not None:
        ratio = disturbed / steady
    settle = settled_at - disturbed_until if settled_at is not None and disturbed_until is not None else None
    measurable = ratio is not None and disturbed_busy >= min_busy and steady_busy >= MIN_STEADY_BUSY
    return Throughput(steady, steady_busy, disturbed, disturbed_busy, ratio, measurable, settle, unsettled,
                      restarts_seconds, with_restarts)
