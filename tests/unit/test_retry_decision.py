"""The retry decision, exhaustively over attempts, classes and Retry-After values."""

from __future__ import annotations

import itertools

import pytest

from streams.pipeline.outcomes import ErrorClass
from streams.pipeline.retry import RetryAt, SendToDlq, decide

TIERS = (30.0, 300.0, 3600.0)
NOW = 1_000_000


@pytest.mark.parametrize("error_class", [ErrorClass.PERMANENT, ErrorClass.INVALID])
@pytest.mark.parametrize("attempt", [1, 2, 4, 10])
def test_permanent_and_invalid_go_straight_to_the_dlq(error_class: ErrorClass, attempt: int) -> None:
    decision = decide(error_class, attempt=attempt, tiers=TIERS, now_ms=NOW, retry_after=5)
    assert isinstance(decision, SendToDlq)
    assert error_class.value in decision.reason


@pytest.mark.parametrize(("attempt", "tier", "delay"), [(1, 0, 30), (2, 1, 300), (3, 2, 3600)])
def test_transient_failures_climb_the_ladder(attempt: int, tier: int, delay: float) -> None:
    assert decide(ErrorClass.TRANSIENT, attempt=attempt, tiers=TIERS, now_ms=NOW) == \
        RetryAt(tier=tier, due_at_ms=NOW + int(delay * 1000), next_attempt=attempt + 1)


@pytest.mark.parametrize("attempt", [4, 5, 100])
def test_after_the_last_tier_comes_the_dlq(attempt: int) -> None:
    decision = decide(ErrorClass.TRANSIENT, attempt=attempt, tiers=TIERS, now_ms=NOW)
    assert isinstance(decision, SendToDlq)
    assert f"after {attempt} attempts" in decision.reason


@pytest.mark.parametrize(
    ("retry_after", "attempt", "tier", "wait"),
    [
        (5, 1, 0, 30),          # shorter than the natural tier: the ladder decides
        (30, 1, 0, 30),         # exactly the natural tier
        (31, 1, 1, 300),        # the first tier at least that long
        (299, 1, 1, 300),
        (301, 1, 2, 3600),
        (7200, 1, 2, 7200),     # longer than every tier: the last one, due at Retry-After
        (60, 2, 1, 300),        # never below the natural rung
        (7200, 3, 2, 7200),
        (0, 1, 0, 30),
    ],
)
def test_retry_after_picks_the_first_tier_at_least_that_long(retry_after: float, attempt: int, tier: int,
                                                              wait: float) -> None:
    decision = decide(ErrorClass.TRANSIENT, attempt=attempt, tiers=TIERS, now_ms=NOW, retry_after=retry_after)
    assert decision == RetryAt(tier=tier, due_at_ms=NOW + int(wait * 1000), next_attempt=attempt + 1)


def test_the_spec_example_with_short_tiers() -> None:
    # "A 429 with Retry-After: 5 goes to the first tier of at least 5 s."
    decision = decide(ErrorClass.TRANSIENT, attempt=1, tiers=(2.0, 4.0, 8.0), now_ms=0, retry_after=5)
    assert decision == RetryAt(tier=2, due_at_ms=8000, next_attempt=2)


def test_properties_over_every_combination() -> None:
    tier_sets = [(1.0,), (2.0, 4.0), (30.0, 300.0, 3600.0), (0.5, 1.0, 2.0, 4.0, 8.0)]
    for tiers, attempt, retry_after in itertools.product(
            tier_sets, range(1, 8), [None, 0, 0.5, 1, 3, 5, 100, 10_000]):
        decision = decide(ErrorClass.TRANSIENT, attempt=attempt, tiers=tiers, now_ms=NOW, retry_after=retry_after)
        if attempt > len(tiers):
            assert isinstance(decision, SendToDlq)
            continue
        assert isinstance(decision, RetryAt)
        assert decision.tier >= attempt - 1  # Retry-After never moves a record down the ladder
        wait = (decision.due_at_ms - NOW) / 1000
        assert wait >= tiers[decision.tier]  # never due before the tier's delay
        if retry_after is not None:
            assert wait >= retry_after  # never before the target asked
        assert decision.next_attempt == attempt + 1


def test_attempts_are_numbered_from_one() -> None:
    with pytest.raises(ValueError):
        decide(ErrorClass.TRANSIENT, attempt=0, tiers=TIERS, now_ms=NOW)


def test_a_failure_of_the_target_as_a_whole_costs_no_attempt() -> None:
    tiers = (30.0, 300.0, 3600.0)
    assert decide(ErrorClass.TRANSIENT, attempt=1, tiers=tiers, now_ms=0, costs_attempt=False) == RetryAt(0, 30_000, 1)
    # Past the budget it stays in the last tier instead of being dead-lettered.
    assert decide(ErrorClass.TRANSIENT, attempt=4, tiers=tiers, now_ms=0, costs_attempt=False) == RetryAt(
        2, 3_600_000, 4)
    assert isinstance(decide(ErrorClass.PERMANENT, attempt=1, tiers=tiers, now_ms=0, costs_attempt=False), SendToDlq)
