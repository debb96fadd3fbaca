"""What the plan-apply step does with each kind of failed request: isolate the entity that
breaks the target, bisect a refused request, stop the flow on credentials, open the breaker on
a failing target without multiplying its load; and how requests are sized."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest

from streams.errors import TargetUnavailable
from streams.pipeline.breaker import Breaker, BreakerState
from streams.pipeline.outcomes import (
    CallResult,
    EntityOutcome,
    ErrorClass,
    Failure,
    RequestFault,
    State,
    classify_response,
)
from streams.pipeline.sizing import RequestSizer, split
from streams.records import WorkItem
from streams.settings import Settings
from streams.target.calls import TargetCalls

Answer = Callable[[list[str]], tuple[int, Any]]


class FakeTarget:
    """Answers each request with `answer(ids) -> (status, body)`, classified as the client would."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[list[str]] = []

    async def send(self, body: Sequence[dict[str, Any]]) -> CallResult:
        ids = [item["id"] for item in body]
        self.requests.append(ids)
        status, payload = self.answer(ids)
        return classify_response(ids, status, {}, orjson.dumps(payload), 0.0)

    @property
    def entities_sent(self) -> int:
        return sum(len(r) for r in self.requests)


def applied(ids: list[str]) -> tuple[int, Any]:
    return 200, {"results": [{"id": i, "errors": None, "change_set": {"id": f"cs-{i}", "changes": [
        {"change_type": "create", "object_type": "dcim.site"}]}} for i in ids]}


BROKEN = (500, {"errors": {"request": {"__all__": ["internal error"]}}})


def poisoned(*poison: str) -> Answer:
    return lambda ids: BROKEN if set(ids) & set(poison) else applied(ids)


def items(n: int) -> list[WorkItem]:
    return [WorkItem(f"e{i}", "dcim.site", {"site": {"name": f"s{i}"}}) for i in range(n)]


def calls(target: FakeTarget, *, threshold: int = 5, batch_size: int = 500, **settings: Any) -> TargetCalls:
    async def no_sleep(_: float) -> None:
        return None

    made = TargetCalls(Settings(batch_size=batch_size, **settings), target.send,
                       Breaker(threshold, cooldown=10.0, max_cooldown=60.0), clock=lambda: 100.0,
                       sleep=no_sleep, rng=random.Random(1))
    made.sizer.per_entity = 0.0001  # measured already: requests of batch_size
    return made


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def states(outcomes: list[EntityOutcome]) -> dict[str, State | ErrorClass]:
    return {o.id: o.state or o.failure.error_class for o in outcomes}  # type: ignore[union-attr]


def test_one_poison_is_isolated_its_siblings_apply_and_the_breaker_stays_closed() -> None:
    target = FakeTarget(poisoned("e5"))
    made = calls(target, threshold=1)
    outcomes = run(made.apply(items(16))).outcomes
    assert states(outcomes) == {**{f"e{i}": State.APPLIED for i in range(16)}, "e5": ErrorClass.TRANSIENT}
    assert [o.id for o in outcomes] == [f"e{i}" for i in range(16)]  # request order kept
    assert made.breaker.state is BreakerState.CLOSED and made.breaker.failures == 0
    assert [len(r) for r in target.requests] == [16, 8, 8, 4, 4, 2, 2, 1, 1]


def test_two_poisons_in_both_halves_are_both_isolated() -> None:
    target = FakeTarget(poisoned("e1", "e12"))
    outcomes = run(calls(target).apply(items(16))).outcomes
    failed = {i for i, s in states(outcomes).items() if s is ErrorClass.TRANSIENT}
    assert failed == {"e1", "e12"}


def test_a_target_failing_every_request_gets_at_most_twice_the_load_and_opens_the_breaker() -> None:
    target = FakeTarget(lambda ids: BROKEN)
    made = calls(target, threshold=2)
    applied = run(made.apply(items(100)))
    outcomes = applied.outcomes
    assert all(o.failure is not None and o.failure.request is RequestFault.UNAVAILABLE for o in outcomes)
    assert target.entities_sent == 2 * 100 + 1  # the request, its halves, one entity alone
    assert applied.requests == 4
    assert made.breaker.failures == 1 and made.breaker.state is BreakerState.CLOSED
    with pytest.raises(TargetUnavailable):
        run(made.apply(items(100)))
    assert made.breaker.state is BreakerState.OPEN


def test_a_single_entity_that_breaks_the_target_is_transient_for_that_entity() -> None:
    target = FakeTarget(poisoned("e0"))
    made = calls(target, threshold=1)
    [outcome] = run(made.apply(items(1))).outcomes
    assert outcome.failure is not None and outcome.failure.error_class is ErrorClass.TRANSIENT
    assert made.breaker.state is BreakerState.CLOSED


def test_a_refused_request_is_bisected_and_the_refused_entity_is_permanent() -> None:
    target = FakeTarget(lambda ids: (422, {"message": "poison"}) if "e3" in ids else applied(ids))
    outcomes = run(calls(target).apply(items(8))).outcomes
    assert states(outcomes) == {**{f"e{i}": State.APPLIED for i in range(8)}, "e3": ErrorClass.PERMANENT}


@pytest.mark.parametrize("status", [401, 403, 400, 404, 405])
def test_credentials_or_a_wrong_url_stop_the_flow_and_dead_letter_nothing(status: int) -> None:
    target = FakeTarget(lambda ids: (status, {"detail": "no"}))
    made = calls(target, threshold=5)
    with pytest.raises(TargetUnavailable) as caught:
        run(made.apply(items(10)))
    assert made.breaker.state is BreakerState.OPEN and str(status) in made.breaker.reason
    assert caught.value.retry_in == 10.0
    assert len(target.requests) == 1  # not bisected, not repeated
    with pytest.raises(TargetUnavailable):
        made.check()


def test_an_unavailable_target_is_retried_once_in_place_then_counts_for_the_breaker() -> None:
    answers = iter([(503, {}), applied])

    def flaky(ids: list[str]) -> tuple[int, Any]:
        answer = next(answers)
        return answer(ids) if callable(answer) else answer

    target = FakeTarget(flaky)
    made = calls(target, threshold=1)
    assert all(o.state is State.APPLIED for o in run(made.apply(items(3))).outcomes)
    assert made.breaker.failures == 0 and len(target.requests) == 2

    down = FakeTarget(lambda ids: (503, {}))
    made = calls(down, threshold=2)
    outcomes = run(made.apply(items(3))).outcomes  # below the threshold: transient, to the tiers
    assert all(o.failure is not None and o.failure.error_class is ErrorClass.TRANSIENT for o in outcomes)
    assert len(down.requests) == 2
    with pytest.raises(TargetUnavailable):  # the threshold: the records wait instead
        run(made.apply(items(3)))


def test_a_long_retry_after_is_not_retried_in_place() -> None:
    async def send(body: Sequence[dict[str, Any]]) -> CallResult:
        ids = [item["id"] for item in body]
        return classify_response(ids, 429, {"retry-after": "60"}, b"", 0.0)

    sent: list[int] = []

    async def counting(body: Sequence[dict[str, Any]]) -> CallResult:
        sent.append(len(body))
        return await send(body)

    made = calls(FakeTarget(applied))
    made.send_request = counting
    outcomes = run(made.apply(items(2))).outcomes
    assert sent == [2] and all(o.failure and o.failure.retry_after == 60.0 for o in outcomes)


def test_most_entities_with_internal_errors_count_as_the_target_down() -> None:
    internal = {"plan": {"request": {"__all__": ["internal error"]}}, "apply": None}
    target = FakeTarget(lambda ids: (207, {"results": [{"id": i, "change_set": None, "errors": internal} for i in ids]}))
    made = calls(target, threshold=1)
    with pytest.raises(TargetUnavailable):
        run(made.apply(items(4)))
    assert len(target.requests) == 2  # the request and its quick retry; then the breaker opened


def test_requests_are_sized_from_the_measured_latency() -> None:
    sizer = RequestSizer(ceiling=500, target_seconds=4.0)
    assert sizer.size() == 100  # before any answer
    for _ in range(10):
        sizer.observe(100, 100 * 0.05)  # NetBox under load: 50 ms an entity
    assert sizer.size() == 80
    for _ in range(10):
        sizer.observe(100, 100 * 0.0002)  # the reference target
    assert sizer.size() == 500
    sizer.observe(500, 60.0)  # a timeout counts as the whole timeout
    assert sizer.size() < 200


def test_split_respects_the_count_and_the_byte_cap() -> None:
    work = items(10)
    assert [len(b) for b in split(work, 4, 10_000_000)] == [4, 4, 2]
    one = len(b'{"id":"e0","object_type":"dcim.site","entity":{"site":{"name":"s0"}}}') + 1
    bodies = split(work, 100, 16 + 3 * one)
    assert [len(b) for b in bodies] == [3, 3, 3, 1]
    assert [b["id"] for body in bodies for b in body] == [f"e{i}" for i in range(10)]
    big = [WorkItem("big", "dcim.site", {"site": {"name": "x" * 5000}})]
    assert [len(b) for b in split(big, 100, 1000)] == [1]  # alone, but still sent


def test_whole_request_failure_outcomes_share_one_failure() -> None:
    failure = Failure(ErrorClass.TRANSIENT, "x", request=RequestFault.UNAVAILABLE)
    assert failure.whole_request and not Failure(ErrorClass.TRANSIENT, "y").whole_request


def test_an_entity_whose_fields_were_dropped_by_a_lost_race_is_planned_again_at_once() -> None:
    bound = {"object_type": "dcim.interface", "object_id": 7, "fields": ["mtu"],
             "message": "This create collided with the existing dcim.interface with id 7 …"}
    sent: list[list[str]] = []

    def answer(ids: list[str]) -> tuple[int, Any]:
        sent.append(ids)
        results = applied(ids)[1]["results"]
        if len(sent) == 1:
            results[1]["warnings"] = [bound]
        return 200, {"results": results}

    outcomes = run(calls(FakeTarget(answer)).apply(items(3))).outcomes
    assert sent == [["e0", "e1", "e2"], ["e1"]]
    assert [o.state for o in outcomes] == [State.APPLIED] * 3
    assert outcomes[1].warnings == (bound,)  # the first answer's warning is kept with it


def test_a_retry_record_of_poison_entities_is_isolated_and_the_breaker_stays_closed() -> None:
    # Poison entities come back from a tier together: every request of them fails, which must
    # not read as an outage (the breaker would stay open for as long as they are retried).
    target = FakeTarget(lambda ids: BROKEN)
    made = calls(target, threshold=1)
    suspects = frozenset(f"e{i}" for i in range(6))
    outcomes = run(made.apply(items(6), suspects=suspects)).outcomes
    assert states(outcomes) == {f"e{i}": ErrorClass.TRANSIENT for i in range(6)}
    assert made.breaker.state is BreakerState.CLOSED


def test_the_probe_is_an_entity_not_suspected_before() -> None:
    # e0..e6 failed alone before; e7 did not: the probe is e7, and as it applies, the target is up.
    target = FakeTarget(poisoned(*(f"e{i}" for i in range(7))))
    made = calls(target, threshold=1)
    outcomes = run(made.apply(items(8), suspects=frozenset(f"e{i}" for i in range(7)))).outcomes
    assert states(outcomes)["e7"] is State.APPLIED
    assert ["e7"] in target.requests
    assert made.breaker.state is BreakerState.CLOSED
