"""The pure parts of `streams chaos`: the schedule, the rates, the fault model's verdict, the checks."""

from __future__ import annotations

import random

import pytest

from streams.chaos import rates, schedule, verdicts
from streams.chaos.rates import Sample, Throughput
from streams.chaos.schedule import TrialConfig
from streams.chaos.verdicts import CompletionCount, Disturbance, ErroredRow, ErroredVerdict, Evidence, RunRows
from streams.target.faults import EntityFault, Faults, entity_fault

# --- schedule --------------------------------------------------------------------------------


def test_kill_times_are_spaced_within_the_interval_and_end_inside_the_phase() -> None:
    times = schedule.kill_times(random.Random(1), 180.0, 15.0, 30.0)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert all(15.0 <= gap <= 30.0 for gap in gaps)
    assert times[-1] <= 180.0 and 180.0 - times[-1] < 30.0
    assert 6 <= len(times) <= 12


def test_kill_times_reject_an_empty_interval() -> None:
    with pytest.raises(ValueError):
        schedule.kill_times(random.Random(1), 60.0, 0.0, 10.0)
    with pytest.raises(ValueError):
        schedule.kill_times(random.Random(1), 60.0, 20.0, 10.0)


def test_disruptions_are_seeded_and_put_each_restart_between_two_kills() -> None:
    first = schedule.disruptions(7, 180.0, 15.0, 30.0, broker=True, postgres=True)
    assert first == schedule.disruptions(7, 180.0, 15.0, 30.0, broker=True, postgres=True)
    assert first != schedule.disruptions(8, 180.0, 15.0, 30.0, broker=True, postgres=True)
    kills = [d.at for d in first if d.action == "kill"]
    [broker] = [d.at for d in first if d.action == "broker"]
    [postgres] = [d.at for d in first if d.action == "postgres"]
    assert broker < postgres
    edges = [0.0, *kills, 180.0]
    for restart in (broker, postgres):
        assert restart not in kills
        left = max(e for e in edges if e < restart)
        right = min(e for e in edges if e > restart)
        assert restart == pytest.approx((left + right) / 2, abs=0.01)
    assert [d.at for d in first] == sorted(d.at for d in first)


def test_disruptions_leave_out_services_that_are_not_ours() -> None:
    plan_ = schedule.disruptions(1, 60.0, 15.0, 30.0, broker=False, postgres=False)
    assert {d.action for d in plan_} == {"kill"}


def test_runs_after_the_first_are_spread_over_two_thirds_of_the_phase() -> None:
    assert schedule.send_times(4, 180.0, spread=True) == [0.0, 60.0, 120.0]
    assert schedule.send_times(2, 180.0, spread=True) == [0.0]
    assert schedule.send_times(1, 180.0, spread=True) == []
    assert schedule.send_times(4, 180.0, spread=False) == []


def test_entities_are_split_evenly_over_the_runs() -> None:
    assert TrialConfig(entities=10, runs=4).run_sizes() == [3, 3, 2, 2]
    assert TrialConfig(entities=3, runs=5).run_sizes() == [1, 1, 1]
    assert sum(TrialConfig().run_sizes()) == 100_000


# --- throughput ------------------------------------------------------------------------------


def sample(at: float, final: int, *, queued: int = 0, retry: int = 0, sent: int = 10_000, dups: int = 0,
           group: str = "STABLE", members: int = 3) -> Sample:
    """A poll where `final` rows are APPLIED, `queued` QUEUED, `retry` PENDING_RETRY."""
    return Sample(at, {rates.APPLIED: final, rates.QUEUED: queued, rates.PENDING_RETRY: retry}, dups, 0, sent,
                  group, members)


def test_backlog_is_what_could_be_worked_on_now() -> None:
    # 10 000 sent: 6000 final, 1000 queued, 500 waiting in a tier, 500 duplicates: 2000 not ingested yet.
    s = sample(0, 6000, queued=1000, retry=500, dups=500)
    assert s.rows == 7500 and s.accounted == 8000 and s.final == 6000
    assert s.backlog == 2000 + 1000
    assert s.non_terminal == 1500
    assert not s.settled(10_000, 1)


def test_busy_rate_leaves_out_idle_time_and_counts_stalls() -> None:
    samples = [
        sample(0, 0, queued=2000),
        sample(10, 1000, queued=1000),  # 100/s
        sample(20, 1000, queued=1000),  # a stall with backlog: busy, no progress
        sample(30, 2000, sent=2000),  # backlog drained here
        sample(100, 2000, sent=2000),  # idle: left out
    ]
    value, busy = rates.busy_rate(samples, 0, 100)
    assert busy == 30 and value == pytest.approx(2000 / 30)
    assert rates.rate(samples, 0, 100) == pytest.approx(20.0)
    assert rates.busy_rate(samples, 30, 100) == (None, 0.0)


def test_entities_lost_for_good_are_not_backlog() -> None:
    # Runs of 1000 and 2000; 500 of the first never reached the database.
    samples = [sample(0, 0, sent=0), sample(10, 500, sent=1000), sample(20, 500, sent=3000),
               sample(30, 2500, sent=3000)]
    adjusted = rates.without_lost(samples, [1000, 2000], [500, 0])
    assert [s.sent for s in adjusted] == [0, 500, 2500, 2500]
    assert adjusted[-1].backlog == 0 and samples[-1].backlog == 500


def test_unsettled_group_counts_rebalances_and_missing_members() -> None:
    samples = [sample(0, 0), sample(5, 0, group="PREPARING_REBALANCING"), sample(15, 0, members=2),
               sample(18, 0), sample(30, 0)]
    assert rates.unsettled_group(samples, 0, 30, members=3) == 10 + 3


def test_throughput_ratio_and_whether_it_can_be_judged() -> None:
    steady = [sample(t, 100 * t, queued=1) for t in range(0, 41, 2)]  # 100/s
    kills = [sample(40 + t, 4000 + 60 * t, queued=1) for t in range(2, 61, 2)]  # 60/s
    speed = rates.throughput(steady + kills, steady_from=0.0, disturbed_from=40.0, disturbed_until=100.0,
                            settled_at=130.0, members=3, min_busy=30.0)
    assert speed.steady == pytest.approx(100.0)
    assert speed.disturbed == pytest.approx(60.0)
    assert speed.ratio == pytest.approx(0.6) and speed.measurable
    assert speed.settle_seconds == 30.0
    short = rates.throughput(steady + kills, steady_from=0.0, disturbed_from=40.0, disturbed_until=60.0,
                            settled_at=None, members=3, min_busy=30.0)
    assert short.ratio is not None and not short.measurable and short.settle_seconds is None


# --- the fault model -------------------------------------------------------------------------


IDS = [f"00000000-0000-4000-8000-{n:012x}" for n in range(4000)]


def test_permanent_ids_are_exactly_the_targets_plan_errors() -> None:
    faults = Faults(transient_rate=0.05, permanent_rate=0.005, seed=3)
    for entity_id in IDS:
        fault = entity_fault(faults, entity_id, 1)
        plan_error = fault is not None and fault.step is EntityFault.PLAN
        assert verdicts.is_permanent(faults, entity_id) == plan_error
    share = sum(verdicts.is_permanent(faults, i) for i in IDS) / len(IDS)
    assert 0.001 < share < 0.012


def test_failed_every_receipt_follows_the_targets_transient_draws() -> None:
    faults = Faults(transient_rate=0.5, seed=1)
    for entity_id in IDS[:300]:
        for receipts in (1, 2, 3):
            every = all(entity_fault(faults, entity_id, n) is not None for n in range(1, receipts + 1))
            assert verdicts.failed_every_receipt(faults, entity_id, receipts) == every
    assert not verdicts.failed_every_receipt(faults, IDS[0], 0)
    assert not verdicts.failed_every_receipt(Faults(), IDS[0], 4)


def test_errored_rows_are_sorted_into_expected_and_unexplained() -> None:
    faults = Faults(transient_rate=0.5, permanent_rate=0.01, seed=5)
    permanent = next(i for i in IDS if verdicts.is_permanent(faults, i))
    transient = [i for i in IDS if not verdicts.is_permanent(faults, i)]
    unlucky = next(i for i in transient if verdicts.failed_every_receipt(faults, i, 4))
    lucky = next(i for i in transient if not verdicts.failed_every_receipt(faults, i, 4))
    unseen = next(i for i in reversed(IDS) if not verdicts.is_permanent(faults, i))
    rows = [ErroredRow(permanent, "permanent", 207, "plan error", 1),
            ErroredRow(unlucky, "transient", 207, "apply error", 4),
            ErroredRow(lucky, "transient", 503, "HTTP 503", 4),
            ErroredRow(unseen, "transient", None, "never received", 4)]  # no receipt at the target
    verdict = verdicts.judge_errored(faults, rows, {unlucky: 4, lucky: 4}, permanent_elsewhere=2)
    assert verdict.permanent == 1 and verdict.transient_exhausted == 1
    assert [row.id for row in verdict.unexplained] == [lucky, unseen]
    assert verdict.by_outage == 1 and verdict.permanent_not_errored == 2
    assert "HTTP 503" in verdict.reasons()


def test_expected_errored_share_with_the_issues_rates() -> None:
    # 5 % transient and 4 attempts: about 6e-6 of the entities fail every attempt.
    faults = Faults(transient_rate=0.05, permanent_rate=0.005, seed=0)
    exhausted = sum(verdicts.failed_every_receipt(faults, i, 4) for i in IDS)
    assert exhausted <= 1


# --- completions -----------------------------------------------------------------------------


def test_completions_are_counted_per_run_and_revision() -> None:
    runs = ["a", "b", "c"]
    counted = verdicts.count_completions(runs, [("a", 1), ("b", 1), ("b", 1), ("a", 2), ("x", 1)])
    assert counted.missing == ("c",)
    assert counted.repeated == (("b", 1, 2),)
    assert counted.later_revisions == (("a", 2),)
    assert counted.unknown == 1
    assert verdicts.count_completions(runs, [(r, 1) for r in runs]) == CompletionCount((), (), (), 0)


# --- the checks ------------------------------------------------------------------------------


def evidence(**changes: object) -> Evidence:
    """A clean trial: 1000 sent, 50 duplicates, 950 rows of which 5 ERRORED by the fault model."""
    states = {rates.APPLIED: 900, rates.NO_CHANGES: 45, rates.ERRORED: 5}
    base = dict(
        sent=1000, distinct=950, missing_hashes=0, states=states, duplicates=50, applied_without_result=0,
        results_not_applied=0, results_unknown=0, duplicate_applies=0, applied_twice=0,
        completions=CompletionCount((), (), (), 0), completion_records=1,
        verdict=ErroredVerdict(5, 0, (), 0, 0),
        runs=[RunRows("r", states, 50, {"applied": 900, "no_changes": 45, "errored": 5, "duplicates": 50,
                                        "accepted": 950})],
        outcome="settled")
    base.update(changes)
    return Evidence(**base)  # type: ignore[arg-type]


SPEED = Throughput(1000.0, 20.0, 700.0, 60.0, 0.7, True, 30.0, 12.0)


def by_name(checks: list[verdicts.Check]) -> dict[str, verdicts.Check]:
    return {check.name: check for check in checks}


def test_a_clean_trial_passes_every_check() -> None:
    checks = verdicts.evaluate(evidence(), SPEED, Disturbance(worker_kills=8), "kills")
    assert verdicts.failed(checks) == []
    assert by_name(checks)["throughput under kills"].value == "0.70"


def test_lost_entities_are_the_difference_between_sent_and_accounted() -> None:
    states = {rates.APPLIED: 880, rates.NO_CHANGES: 45, rates.ERRORED: 5}
    lost = evidence(states=states, missing_hashes=20)
    checks = by_name(verdicts.evaluate(lost, SPEED, Disturbance(), "kills"))
    assert checks["lost"].ok is False and checks["lost"].value == "20"
    assert "20 of 950 distinct entities have no row" in checks["lost"].detail


def test_an_applied_row_without_a_result_at_the_target_is_lost() -> None:
    checks = by_name(verdicts.evaluate(evidence(applied_without_result=1), SPEED, Disturbance(), "kills"))
    assert checks["lost"].ok is False


def test_applied_twice_reads_both_the_counter_and_the_receipt_log() -> None:
    def check(**changes: object) -> verdicts.Check:
        return by_name(verdicts.evaluate(evidence(**changes), SPEED, Disturbance(), "kills"))["applied twice"]

    assert check(applied_twice=2).ok is False
    assert check(duplicate_applies=1).ok is False
    assert check(applied_twice=None).ok  # a target without the receipt log: its counter alone


def test_a_missing_or_repeated_completion_fails() -> None:
    missing = evidence(completions=CompletionCount(("r",), (), (), 0), completion_records=0)
    checks = by_name(verdicts.evaluate(missing, SPEED, Disturbance(), "kills"))
    assert checks["one RunCompleted per run"].ok is False and checks["completion counts"].ok is None
    repeated = evidence(completions=CompletionCount((), (("r", 1, 2),), (), 0), completion_records=2)
    checks = by_name(verdicts.evaluate(repeated, SPEED, Disturbance(), "kills"))
    assert checks["one RunCompleted per run"].ok is False


def test_completion_counts_must_match_the_rows() -> None:
    states = {rates.APPLIED: 900, rates.NO_CHANGES: 45, rates.ERRORED: 5}
    wrong = [RunRows("r", states, 50, {"applied": 899, "no_changes": 45, "errored": 5, "duplicates": 50})]
    checks = verdicts.evaluate(evidence(runs=wrong), SPEED, Disturbance(), "kills")
    check = by_name(checks)["completion counts"]
    assert check.ok is False and "applied 899≠900" in check.detail


def test_rows_left_queued_applying_failed_or_pending_are_non_terminal() -> None:
    states = {rates.APPLIED: 900, rates.NO_CHANGES: 40, rates.ERRORED: 5, rates.APPLYING: 3, rates.FAILED: 2}
    checks = verdicts.evaluate(evidence(states=states), SPEED, Disturbance(), "kills")
    check = by_name(checks)["non-terminal rows"]
    assert check.ok is False and check.value == "5" and "state 4: 2" in check.detail


def test_unexplained_errored_rows_fail_and_the_outage_check_counts_503s() -> None:
    row = ErroredRow("id", "transient", 503, "HTTP 503", 4)
    verdict = ErroredVerdict(4, 0, (row,), 1, 0)
    checks = by_name(verdicts.evaluate(evidence(verdict=verdict), SPEED, Disturbance(), "outage"))
    assert checks["expected errored"].ok is False
    assert checks["dead-lettered by the outage"].ok is False
    assert checks["throughput"].ok is None  # shown, never judged in the outage scenario


def test_throughput_below_half_fails_and_too_little_backlog_is_not_judged() -> None:
    slow = Throughput(1000.0, 20.0, 300.0, 60.0, 0.3, True, 30.0, 40.0)
    name = "throughput under kills"
    assert by_name(verdicts.evaluate(evidence(), slow, Disturbance(), "kills"))[name].ok is False
    short = Throughput(1000.0, 20.0, 300.0, 5.0, 0.3, False, 30.0, 0.0)
    assert by_name(verdicts.evaluate(evidence(), short, Disturbance(), "kills"))[name].ok is None


def test_a_trial_that_did_not_settle_fails() -> None:
    checks = verdicts.evaluate(evidence(outcome="stalled"), SPEED, Disturbance(), "kills")
    check = by_name(checks)["settled"]
    assert check.ok is False and check.value == "stalled"


def test_records_left_unread_fail_and_lost_batches_are_named() -> None:
    checks = by_name(verdicts.evaluate(
        evidence(unread={"ingest": {7: 2}}, unaccepted=["r batch 4 at ingest[7]@0 (never read)"]),
        SPEED, Disturbance(), "kills"))
    assert checks["records left unread"].ok is False and checks["records left unread"].value == "2"
    assert "ingest: p7 2" in checks["records left unread"].detail
    assert "r batch 4 at ingest[7]@0" in checks["lost"].detail


def test_the_ratio_is_shown_rounded_down() -> None:
    assert verdicts.ratio_text(0.4956) == "0.49"
    assert verdicts.ratio_text(0.29) == "0.29"
    assert verdicts.ratio_text(0.5) == "0.50"


def test_a_service_restart_is_left_out_of_the_kills_rate_until_the_group_is_stable_again() -> None:
    steady = [sample(t, 100 * t, queued=1) for t in range(0, 41, 2)]  # 100/s
    # From 60 the broker is down, back at 70, the group stable again at 76: no progress.
    kills = [sample(40 + t, 4000 + 60 * min(t, 20) + 60 * max(0, t - 36), queued=1,
                    group="STABLE" if not 20 <= t < 36 else "UNKNOWN") for t in range(2, 61, 2)]
    speed = rates.throughput(steady + kills, steady_from=0.0, disturbed_from=40.0, disturbed_until=100.0,
                            settled_at=None, members=3, min_busy=30.0, restarts=[(60.0, 70.0)])
    assert speed.disturbed == pytest.approx(60.0)
    assert speed.restarts_seconds == 16.0
    assert speed.with_restarts is not None and speed.with_restarts < 45.0
    assert rates.restart_windows(kills, [(60.0, 70.0)], members=3) == [(60.0, 76.0)]
    assert rates.restart_windows(kills[:12], [(60.0, 70.0)], members=3) == [(60.0, 70.0)]  # never stable again
