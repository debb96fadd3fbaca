"""The verdicts of a chaos trial: the fault model's view of errored rows, completions counted
per (run, revision), and one check per line of the table.

Pure: no I/O, no clock (tests/unit/test_chaos.py).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from streams.chaos.rates import APPLIED, ERRORED, NO_CHANGES, NON_TERMINAL_STATES, Throughput
from streams.chaos.schedule import Scenario
from streams.target.faults import Faults, draw

# The survivors should keep at least this share of the steady rate while workers are killed.
RATIO_GOAL = 0.5


# --- the fault model's verdict on errored rows -----------------------------------------------


def is_permanent(faults: Faults, entity_id: str) -> bool:
    """Whether the reference target fails `entity_id` with a plan error on every receipt
    (streams.target.faults.entity_fault, with the id as Postgres prints it)."""
    return bool(faults.permanent_rate) and draw(faults.seed, "permanent", entity_id) < faults.permanent_rate


def failed_every_receipt(faults: Faults, entity_id: str, receipts: int) -> bool:
    """Whether every one of the first `receipts` arrivals of `entity_id` drew the injected
    transient failure (so the entity may fairly have run out of attempts)."""
    if receipts < 1 or not faults.transient_rate:
        return False
    return all(draw(faults.seed, "transient", entity_id, n) < faults.transient_rate
               for n in range(1, receipts + 1))


@dataclass(frozen=True)
class ErroredRow:
    id: str
    error_class: str | None
    http_status: int | None
    message: str | None
    attempts: int


@dataclass(frozen=True)
class ErroredVerdict:
    permanent: int  # ERRORED by the fault model's plan error: expected
    transient_exhausted: int  # every receipt drew a transient failure: expected, rare
    unexplained: tuple[ErroredRow, ...]  # anything else: a failure of the check
    by_outage: int  # ERRORED with the outage's 503 as last error
    permanent_not_errored: int  # the fault model fails them for good, yet they are APPLIED/NO_CHANGES

    def reasons(self, limit: int = 3) -> str:
        counts = Counter(f"{row.error_class}/{row.http_status or '-'}: {row.message}"
                         for row in self.unexplained)
        return "; ".join(f"{n}× {reason}" for reason, n in counts.most_common(limit))


def judge_errored(faults: Faults, errored: Iterable[ErroredRow], receipts: Mapping[str, int],
                  permanent_elsewhere: int) -> ErroredVerdict:
    """Sort ERRORED rows into what the fault model explains and what it does not.

    `receipts` holds how often the target received each errored id (its first few, from
    /_admin/receipts); `permanent_elsewhere` counts ids the model fails for good whose rows
    are APPLIED or NO_CHANGES all the same.
    """
    permanent = transient = by_outage = 0
    unexplained = []
    for row in errored:
        if row.http_status == 503:
            by_outage += 1
        if is_permanent(faults, row.id):
            permanent += 1
        elif failed_every_receipt(faults, row.id, receipts.get(row.id, 0)):
            transient += 1
        else:
            unexplained.append(row)
    return ErroredVerdict(permanent, transient, tuple(unexplained), by_outage, permanent_elsewhere)


# --- completions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionCount:
    missing: tuple[str, ...]  # runs without revision 1
    repeated: tuple[tuple[str, int, int], ...]  # (run, revision, copies) seen more than once
    later_revisions: tuple[tuple[str, int], ...]  # revisions above 1 (no replay happens in a trial)
    unknown: int  # completions of runs this trial did not send


def count_completions(runs: Sequence[str], seen: Iterable[tuple[str, int]]) -> CompletionCount:
    copies = Counter(seen)
    wanted = set(runs)
    missing = tuple(run for run in runs if copies.get((run, 1), 0) == 0)
    repeated = tuple(sorted((run, rev, n) for (run, rev), n in copies.items() if n > 1))
    later = tuple(sorted((run, rev) for (run, rev) in copies if rev > 1 and run in wanted))
    unknown = sum(n for (run, _), n in copies.items() if run not in wanted)
    return CompletionCount(missing, repeated, later, unknown)


# --- the checks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: could not be judged (shown, never fails the trial)
    value: str
    detail: str = ""


@dataclass(frozen=True)
class RunRows:
    """One run as the database sees it, and as its latest RunCompleted reports it."""

    run_id: str
    states: Mapping[int, int]
    duplicates: int
    completed: Mapping[str, int] | None  # entities counts of the latest completion, if any


@dataclass
class Evidence:
    """Everything a trial's checks read, gathered once everything stopped moving."""

    sent: int  # entities sent, duplicates included
    distinct: int  # distinct dedup hashes among them
    missing_hashes: int  # distinct hashes sent with no row
    states: dict[int, int]
    duplicates: int  # Σ ingestion_logs.duplicate_count
    applied_without_result: int  # APPLIED/NO_CHANGES rows the target has no stored result for
    results_not_applied: int  # results at the target whose row is not APPLIED/NO_CHANGES
    results_unknown: int  # results at the target for ids that have no row at all
    duplicate_applies: int  # the target's own counter
    applied_twice: int | None  # ids with two creates/updates in streams_target.applies
    completions: CompletionCount
    completion_records: int
    verdict: ErroredVerdict
    runs: list[RunRows] = field(default_factory=list)
    outcome: str = "settled"  # or stalled, timed out, aborted (the trial failed before settling)
    # topic (without the prefix) → {partition: records} the consumer groups left unread
    unread: dict[str, dict[int, int]] = field(default_factory=dict)
    unaccepted: list[str] = field(default_factory=list)  # batch records without an ingest_batches row
    incomplete: list[str] = field(default_factory=list)  # runs without completion: mirror and events

    @property
    def settled(self) -> bool:
        return self.outcome == "settled"

    @property
    def rows(self) -> int:
        return sum(self.states.values())


@dataclass(frozen=True)
class Disturbance:
    """What was done to the trial: for the table, and for the record."""

    worker_kills: int = 0
    worker_crashes: int = 0  # workers that exited on their own and were started again
    broker_restarts: int = 0
    postgres_restarts: int = 0
    restart_notes: tuple[str, ...] = ()
    outage_seconds: float = 0.0
    wall_seconds: float = 0.0


def _run_mismatches(runs: Sequence[RunRows]) -> list[str]:
    problems = []
    for run in runs:
        if run.completed is None:
            continue
        actual = {"applied": run.states.get(APPLIED, 0), "no_changes": run.states.get(NO_CHANGES, 0),
                  "errored": run.states.get(ERRORED, 0), "duplicates": run.duplicates}
        wrong = [f"{name} {run.completed.get(name)}≠{value}" for name, value in actual.items()
                 if run.completed.get(name) != value]
        if wrong:
            problems.append(f"{run.run_id}: " + ", ".join(wrong))
    return problems


def _lost(e: Evidence) -> Check:
    lost = e.sent - e.rows - e.duplicates
    detail = (f"sent {e.sent:,} = rows {e.rows:,} + duplicates {e.duplicates:,} + lost {lost:,}; "
              f"{e.missing_hashes:,} of {e.distinct:,} distinct entities have no row; "
              f"{e.applied_without_result:,} applied rows without a result at the target")
    if e.unaccepted:
        more = f" and {len(e.unaccepted) - 3} more" if len(e.unaccepted) > 3 else ""
        detail += "; batches never accepted: " + "; ".join(e.unaccepted[:3]) + more
    ok = lost == 0 and e.missing_hashes == 0 and e.applied_without_result == 0
    return Check("lost", ok, f"{lost:,}", detail)


def _unread(e: Evidence) -> Check:
    total = sum(sum(parts.values()) for parts in e.unread.values())
    detail = "; ".join(f"{topic}: " + ", ".join(f"p{p} {n}" for p, n in sorted(parts.items()))
                       for topic, parts in sorted(e.unread.items()))
    return Check("records left unread", total == 0, f"{total:,}",
                 detail or "every consumed topic committed to its end")


def _target_agrees(e: Evidence) -> Check:
    return Check(
        "target agrees", e.results_not_applied == 0 and e.results_unknown == 0,
        f"{e.results_not_applied + e.results_unknown:,}",
        f"{e.results_not_applied:,} results at the target for rows not APPLIED/NO_CHANGES, "
        f"{e.results_unknown:,} for ids with no row")


def _applied_twice(e: Evidence) -> Check:
    twice = e.applied_twice or 0
    logged = "n/a (no receipt log)" if e.applied_twice is None else f"{e.applied_twice}"
    return Check(
        "applied twice", e.duplicate_applies == 0 and twice == 0, f"{max(e.duplicate_applies, twice):,}",
        f"target duplicate_applies {e.duplicate_applies}; "
        f"ids created/updated twice in the receipt log: {logged}")


def _completed_once(e: Evidence) -> Check:
    c = e.completions
    repeated = ", ".join(f"{run} rev {revision} ×{n}" for run, revision, n in c.repeated)
    detail = (f"{e.completion_records} records; missing: {', '.join(c.missing) or 'none'}; "
              f"repeated: {repeated or 'none'}")
    if e.incomplete:
        detail += "; " + "; ".join(e.incomplete[:6])
    return Check("one RunCompleted per run", not c.missing and not c.repeated,
                 f"{len(e.runs) - len(c.missing)}/{len(e.runs)}", detail)


def _completion_counts(e: Evidence) -> Check:
    c = e.completions
    mismatched = _run_mismatches(e.runs)
    later = ", ".join(f"{run} rev {revision}" for run, revision in c.later_revisions)
    detail = "; ".join(mismatched[:3]) or (f"later revisions without a replay: {later}" if later else
                                           "each completion matches its run's rows")
    # With a completion missing there is nothing to compare: the check above fails already.
    ok = None if c.missing else not mismatched and not later
    return Check("completion counts", ok, f"{len(mismatched)} wrong", detail)


def _non_terminal(e: Evidence) -> Check:
    stuck = {state: n for state, n in sorted(e.states.items()) if state in NON_TERMINAL_STATES and n}
    detail = ", ".join(f"state {state}: {n:,}" for state, n in stuck.items())
    return Check("non-terminal rows", not stuck, f"{sum(stuck.values()):,}",
                 detail or "every row APPLIED, NO_CHANGES or ERRORED")


def _expected_errored(e: Evidence) -> Check:
    v = e.verdict
    detail = (f"ERRORED {e.states.get(ERRORED, 0):,} = permanent {v.permanent:,} + transient on every "
              f"attempt {v.transient_exhausted:,} + unexpected {len(v.unexplained):,}")
    if v.unexplained:
        detail += f" ({v.reasons()})"
    if v.permanent_not_errored:
        detail += f"; {v.permanent_not_errored:,} permanent by the fault model but APPLIED/NO_CHANGES"
    return Check("expected errored", not v.unexplained and not v.permanent_not_errored,
                 f"{len(v.unexplained):,} unexpected", detail)


def _throughput(speed: Throughput, scenario: Scenario) -> Check:
    during = "during kills" if scenario == "kills" else "during the outage"
    rates = (f"steady {_fmt(speed.steady)}/s over {speed.steady_busy:.0f}s busy, {during} "
             f"{_fmt(speed.disturbed)}/s over {speed.disturbed_busy:.0f}s busy")
    if speed.restarts_seconds:
        rates += (f" (service restarts left out: {speed.restarts_seconds:.0f}s from each one's start until the "
                  f"group was stable again; {_fmt(speed.with_restarts)}/s with them)")
    rates += f"; group not stable at full size {speed.unsettled_group:.0f}s; "
    if scenario == "outage":
        return Check("throughput", None, f"{_fmt(speed.disturbed)}/s during the outage",
                     rates + f"settled {_seconds(speed.settle_seconds)} after the outage")
    ok = None if not speed.measurable else bool(speed.ratio is not None and speed.ratio >= RATIO_GOAL)
    note = "" if speed.measurable else " (too little busy time to judge: send more entities or runs)"
    return Check("throughput under kills", ok, "n/a" if speed.ratio is None else ratio_text(speed.ratio),
                 rates + f"goal ratio ≥ {RATIO_GOAL}; settled {_seconds(speed.settle_seconds)} after the "
                 "kill phase" + note)


def _settled(e: Evidence, done: Disturbance) -> Check:
    detail = (f"wall time {done.wall_seconds:.0f}s; worker kills {done.worker_kills}, crashes "
              f"{done.worker_crashes}, broker restarts {done.broker_restarts}, Postgres restarts "
              f"{done.postgres_restarts}")
    if done.restart_notes:
        detail += "; " + "; ".join(done.restart_notes)
    return Check("settled", e.settled, "yes" if e.settled else e.outcome, detail)


def evaluate(evidence: Evidence, speed: Throughput, done: Disturbance, scenario: Scenario) -> list[Check]:
    """The trial's verdicts, in the order of the table."""
    e = evidence
    checks = [_lost(e), _target_agrees(e), _applied_twice(e), _completed_once(e), _completion_counts(e),
              _non_terminal(e), _unread(e), _expected_errored(e)]
    if scenario == "outage":
        outage = e.verdict.by_outage
        checks.append(Check("dead-lettered by the outage", outage == 0, f"{outage:,}",
                            "ERRORED rows whose last error is the outage's 503"))
    checks += [_throughput(speed, scenario), _settled(e, done)]
    return checks


def ratio_text(ratio: float) -> str:
    """Two decimals, rounded down: 0.496 must not read as the goal of 0.50 it missed."""
    return f"{math.floor(ratio * 100 + 1e-9) / 100:.2f}"


def failed(checks: Iterable[Check]) -> list[Check]:
    return [check for check in checks if check.ok is False]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}s"


def as_json(value: Any) -> Any:
    """Dataclasses (and tuples of them) as plain JSON values."""
    if hasattr(value, "__dataclass_fields__"):
        return {key: as_json(item) for key, item in asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(key): as_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(item) for item in value]
    return value
