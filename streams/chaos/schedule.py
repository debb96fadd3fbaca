"""When a chaos trial disturbs what: its configuration, the kill schedule, when runs are sent.

Pure: no I/O, no clock (tests/unit/test_chaos.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from streams.target.faults import Faults

Scenario = Literal["kills", "outage"]
Action = Literal["kill", "broker", "postgres"]


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialConfig:
    scenario: Scenario = "kills"
    workers: int = 3
    partitions: int = 24
    entities: int = 100_000
    runs: int = 4
    kill_min: float = 15.0
    kill_max: float = 30.0
    kill_for: float = 180.0
    outage: float = 300.0
    steady: float = 40.0
    transient_rate: float = 0.05
    permanent_rate: float = 0.005
    duplicate_ratio: float = 0.05
    settle_timeout: float = 900.0
    stall_timeout: float = 420.0
    retry_tiers: tuple[float, ...] = (5.0, 10.0, 20.0)
    restart_services: bool = True
    session_timeout: float | None = None  # faust/aiokafka and tier consumer session, seconds
    static_membership: bool = True  # as a deployment with stable worker names runs (README: Failover)
    spread: bool = True  # runs 1.. sent during the disturbance; False: every run up front
    keep: bool = False  # keep a passed trial's databases and topics (a failed one's are always kept)
    seed: int = 0

    def faults(self) -> Faults:
        return Faults(transient_rate=self.transient_rate, permanent_rate=self.permanent_rate, seed=self.seed)

    def run_sizes(self) -> list[int]:
        """The entities of each run: `entities` split as evenly as possible over `runs`."""
        runs = max(1, min(self.runs, self.entities))
        share, extra = divmod(self.entities, runs)
        return [share + (1 if index < extra else 0) for index in range(runs)]


# --- the schedule of disruptions -------------------------------------------------------------


@dataclass(frozen=True)
class Disruption:
    at: float  # seconds after the start of the kill phase
    action: Action


def kill_times(rng: random.Random, duration: float, low: float, high: float) -> list[float]:
    """Kill times in [0, duration]: each a uniform low..high seconds after the one before."""
    if low <= 0 or high < low:
        raise ValueError(f"kill interval must be 0 < low <= high, got {low}..{high}")
    times: list[float] = []
    at = rng.uniform(low, high)
    while at <= duration:
        times.append(round(at, 3))
        at += rng.uniform(low, high)
    return times


def _between_kills(kills: Sequence[float], duration: float, wanted: float) -> float:
    """The middle of the gap between kills (or the phase's ends) that holds `wanted`, so a
    service restart never lands on a kill."""
    edges = [0.0, *kills, duration]
    for left, right in pairwise(edges):
        if left <= wanted <= right:
            return round((left + right) / 2, 3)
    return round(wanted, 3)


def disruptions(seed: int, duration: float, low: float, high: float, *, broker: bool,
                postgres: bool) -> list[Disruption]:
    """The kill phase's plan: worker kills at random intervals, the broker restarted once about
    a third of the way in and Postgres once about two thirds in, each between two kills."""
    rng = random.Random(f"chaos-schedule-{seed}")
    kills = kill_times(rng, duration, low, high)
    plan = [Disruption(at, "kill") for at in kills]
    if broker:
        plan.append(Disruption(_between_kills(kills, duration, duration / 3), "broker"))
    if postgres:
        plan.append(Disruption(_between_kills(kills, duration, 2 * duration / 3), "postgres"))
    return sorted(plan, key=lambda d: (d.at, d.action))


# --- when runs are sent ----------------------------------------------------------------------


def send_times(runs: int, phase: float, *, spread: bool) -> list[float]:
    """When runs 1.. are sent, in seconds from the start of the disturbed phase (run 0 is sent
    before the steady phase). Spread: evenly from the phase's start to two thirds of it, so the
    kills and the outage meet busy workers and the last run still sees some of the phase.
    Up front: none here, every run is sent with run 0."""
    later = runs - 1
    if not spread or later <= 0:
        return []
    step = phase * 2 / 3 / max(1, later - 1) if later > 1 else 0.0
    return [round(index * step, 3) for index in range(later)]
