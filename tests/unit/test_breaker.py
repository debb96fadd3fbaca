"""The circuit breaker's transitions, with a fake clock."""

from __future__ import annotations

from streams.pipeline.breaker import Breaker, BreakerState


def make() -> Breaker:
    return Breaker(threshold=3, cooldown=10.0, max_cooldown=40.0)


def test_opens_after_threshold_consecutive_failures_only() -> None:
    breaker = make()
    assert breaker.failure(0) is BreakerState.CLOSED
    assert breaker.failure(1) is BreakerState.CLOSED
    breaker.success()  # a success in between resets the count
    assert breaker.failure(2) is BreakerState.CLOSED
    assert breaker.failure(3) is BreakerState.CLOSED
    assert breaker.failure(4) is BreakerState.OPEN
    assert not breaker.allow(5)
    assert breaker.wait(5) == 9.0


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker = make()
    for t in range(3):
        breaker.failure(t)
    assert not breaker.allow(11.9)
    assert breaker.allow(12.0)  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(12.1)  # no second request while the probe is out
    assert breaker.allow(22.0)  # a probe that never answered does not wedge the breaker
    assert breaker.success() is BreakerState.CLOSED
    assert breaker.allow(22.1)


def test_a_failed_probe_doubles_the_cooldown_up_to_the_limit() -> None:
    breaker = make()
    for t in range(3):
        breaker.failure(t)
    now = 12.0
    expected = [20.0, 40.0, 40.0]
    for cooldown in expected:
        assert breaker.allow(now)
        assert breaker.failure(now) is BreakerState.OPEN
        assert breaker.wait(now) == cooldown
        now += cooldown
    assert breaker.allow(now) and breaker.success() is BreakerState.CLOSED
    for t in range(3):
        breaker.failure(now + t)
    assert breaker.wait(now + 2) == 10.0  # a new outage starts from the base cool-down
