"""Sending one work record's entities to the target: request sizes, what a failed request
means for its entities, and the circuit breaker. The HTTP itself is streams.target.client;
the classification is streams.pipeline.outcomes; this module decides what to do next.

    request answered ─────────────────────────────► outcomes per entity
    UNAVAILABLE (503, network, a 207 of internal errors)
        one quick retry in place, then a breaker failure; routed as transient, or, once the
        breaker is open, TargetUnavailable: the records wait (unacked) instead
    BROKEN (500: an entry broke the server; 413)
        one entity: transient for it (it climbs the tiers; a poison ends ERRORED)
        more: isolate: send both halves; a half that fails again is isolated further, the
        other applies now. When both halves fail, one entity picked at random is sent alone:
        if that fails too the target is failing as a whole (a breaker failure, not an
        isolation), so a failing target gets at most twice the load plus one entity
    REFUSED (422 and other 4xx): bisect until the refused entities are alone (permanent)
    answered, but an entity's fields were dropped (its create lost a race and was bound to the
        row the other request made): sent once more at once, it plans an update that stores them
    CREDENTIALS (401/403 after a fresh token), MISCONFIGURED (400/404/405)
        trip the breaker: the flow stops with an alert (TargetUnavailable) and probes after
        each cool-down; no entity is routed or dead-lettered because of it

A poison entity never counts for the breaker; a target that fails every request opens it
after STREAMS_BREAKER_THRESHOLD requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from streams import metrics
from streams.errors import TargetUnavailable
from streams.gates import GATES, GateName
from streams.pipeline.breaker import Breaker, BreakerState
from streams.pipeline.outcomes import CallResult, EntityOutcome, Failure, RequestFault, whole
from streams.pipeline.sizing import RequestSizer, split
from streams.records import WorkItem
from streams.settings import Settings
from streams.tasks import all_finished

log = logging.getLogger(__name__)
T = TypeVar("T")
TARGET_SCOPE = "target"
_BREAKER_GATES = (GateName.BREAKER_OPEN, GateName.CREDENTIALS_REFUSED, GateName.TARGET_MISCONFIGURED)

Body = list[dict[str, Any]]
Send = Callable[[Sequence[dict[str, Any]]], Awaitable[CallResult]]
# A whole-request failure this quick to retry is worth one more try before it costs anything.
QUICK_RETRY_DELAY = 0.5
QUICK_RETRY_MAX_AFTER = 1.0  # a Retry-After longer than this is honoured through the tiers


# Requests made by the apply() being awaited, counted across the tasks it gathers.
_REQUESTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("streams_target_requests", default=None)
# Entities of the current apply() that failed on their own before (see _isolate).
_SUSPECTS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("streams_target_suspects",
                                                                          default=frozenset())


@dataclass(frozen=True)
class Applied:
    outcomes: list[EntityOutcome]  # one per entity, in the order given
    requests: int  # HTTP requests it took (isolation, bisection and quick retries included)


class TargetCalls:
    def __init__(self, settings: Settings, send: Send, breaker: Breaker, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self.send_request = send
        self.breaker = breaker
        self.sizer = RequestSizer(settings.batch_size, settings.target_request_seconds)
        self.max_bytes = settings.target_max_request_bytes
        self.timeout = settings.target_timeout
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    def check(self) -> None:
        """Raise TargetUnavailable while the breaker holds calls back (one probe passes)."""
        now = self._clock()
        if not self.breaker.allow(now):
            raise TargetUnavailable(self._why(), self.breaker.wait(now))

    async def apply(self, items: Sequence[WorkItem], *, suspects: frozenset[str] = frozenset()) -> Applied:
        """Every entity's outcome; raises TargetUnavailable when the flow must wait. `suspects`:
        ids of entities that failed on their own on an earlier attempt (a retry record's)."""
        bodies = split(items, self.sizer.size(), self.max_bytes)
        tally = _REQUESTS.set([0])
        marked = _SUSPECTS.set(suspects)
        try:
            results = await all_finished([self._call(body) for body in bodies])
            requests = (_REQUESTS.get() or [0])[0]
        finally:
            _REQUESTS.reset(tally)
            _SUSPECTS.reset(marked)
        return Applied([outcome for result in results for outcome in result], requests)

    # --- one request ----------------------------------------------------------------------------

    async def _send(self, body: Body) -> CallResult:
        if self.breaker.state is BreakerState.OPEN:
            raise TargetUnavailable(self._why(), self.breaker.wait(self._clock()))
        result = await self._timed(body)
        failure = result.request_failure
        if (failure is not None and failure.request is RequestFault.UNAVAILABLE
                and (failure.retry_after or 0) <= QUICK_RETRY_MAX_AFTER
                and self.breaker.state is BreakerState.CLOSED):
            # A blip (a restarted target, a dropped connection) costs nothing if it is over now.
            await self._sleep(QUICK_RETRY_DELAY * self._rng.uniform(0.5, 1.5))
            result = await self._timed(body)
        return result

    async def _timed(self, body: Body) -> CallResult:
        tally = _REQUESTS.get()
        if tally is not None:
            tally[0] += 1  # the tasks of one apply() share the list
        started = self._clock()
        result = await self.send_request(body)
        failure = result.request_failure
        if failure is None or failure.http_status is not None:  # answered: the latency is the target's
            self.sizer.observe(len(body), self._clock() - started)
        elif "Timeout" in failure.message:
            self.sizer.observe(len(body), max(self.timeout, self._clock() - started))
        return result

    async def _call(self, body: Body) -> list[EntityOutcome]:
        return await self._replan(body, await self._after(body, await self._send(body)))

    async def _replan(self, body: Body, outcomes: list[EntityOutcome]) -> list[EntityOutcome]:
        """Entities whose create lost a race to a concurrent request were bound to the row the
        other one made without storing their fields: sent once more, they plan an update."""
        again = [index for index, outcome in enumerate(outcomes) if outcome.fields_dropped]
        if not again:
            return outcomes
        metrics.RECORDS.labels(agent="plan-apply", outcome="replanned").inc(len(again))
        log.info("entities bound to existing rows without their fields; planning them again",
                 extra={"entities": len(again)})
        second = await self._after([body[i] for i in again], await self._send([body[i] for i in again]))
        merged = list(outcomes)
        for index, outcome in zip(again, second, strict=True):
            # Both answers' warnings are kept with the change set that is stored.
            merged[index] = replace(outcome, warnings=(*outcomes[index].warnings, *outcome.warnings))
        return merged

    async def _after(self, body: Body, result: CallResult) -> list[EntityOutcome]:
        failure = result.request_failure
        if failure is None:
            self._success()
            return list(result.outcomes)
        fault = failure.request
        if fault is not None and fault.stops_the_flow:
            raise self._stop(failure)
        if fault is RequestFault.UNAVAILABLE:
            self._unavailable(failure)
        elif fault is RequestFault.BROKEN:
            if len(body) > 1:
                return await self._isolate(body)
            self._wait_if_open()
        elif fault is RequestFault.REFUSED and len(body) > 1:
            half = len(body) // 2
            parts = await all_finished([self._call(body[:half]), self._call(body[half:])])
            return parts[0] + parts[1]
        else:  # UNAVAILABLE-like outcomes of entities inside an answered request
            self._success()
        return list(result.outcomes)

    async def _isolate(self, body: Body) -> list[EntityOutcome]:
        """A request an entry broke: find the entry, apply the others now."""
        half = len(body) // 2
        parts = (body[:half], body[half:])
        results = await all_finished([self._send(part) for part in parts])
        suspects = _SUSPECTS.get()
        unsuspected = [item for item in body if item["id"] not in suspects]
        # Entities that each failed alone before fail together now: that says nothing about the
        # target (a retry record of poison entities would otherwise hold the breaker open for
        # ever), so they are isolated one by one and climb the tiers. With an unsuspected entity
        # the probe is one of those: if even that fails alone, the target is down.
        if unsuspected and all(_failed_whole(result) for result in results):
            probe = [self._rng.choice(unsuspected)]
            if _failed_whole(await self._send(probe)):
                first = results[0].request_failure
                assert first is not None  # _failed_whole checked it
                failure = Failure(first.error_class, "target failed every request, a single entity included",
                                  first.http_status, request=RequestFault.UNAVAILABLE)
                self._unavailable(failure)
                return list(whole([item["id"] for item in body], failure).outcomes)
        metrics.RECORDS.labels(agent="plan-apply", outcome="isolated").inc()
        log.info("request broke the target; isolating its entities", extra={"entities": len(body)})
        outcomes = await all_finished([self._after(part, result) for part, result in zip(parts, results, strict=True)])
        return outcomes[0] + outcomes[1]

    # --- the breaker ---------------------------------------------------------------------------

    def _success(self) -> None:
        if self.breaker.state is not BreakerState.CLOSED:
            log.info("target answers again; circuit breaker closed")
        self.breaker.success()
        metrics.BREAKER_OPEN.set(0)
        GATES.release_scope(TARGET_SCOPE, *_BREAKER_GATES)

    def _unavailable(self, failure: Failure) -> None:
        before = self.breaker.state
        after = self.breaker.failure(self._clock(), f"target unavailable: {failure.message[:200]}")
        metrics.BREAKER_OPEN.set(0 if after is BreakerState.CLOSED else 1)
        if after is BreakerState.OPEN and before is not BreakerState.OPEN:
            log.error("target circuit breaker opened; work waits instead of climbing the retry tiers",
                      extra={"cooldown_s": self.breaker.current_cooldown, "reason": self.breaker.reason})
        if after is BreakerState.OPEN:
            self._gate(GateName.BREAKER_OPEN)
        self._wait_if_open()

    def _wait_if_open(self) -> None:
        if self.breaker.state is not BreakerState.CLOSED:
            raise TargetUnavailable(self._why(), self.breaker.wait(self._clock()) or 1.0)

    def _stop(self, failure: Failure) -> TargetUnavailable:
        assert failure.request is not None
        before = self.breaker.state
        self.breaker.trip(self._clock(), failure.message[:300])
        metrics.BREAKER_OPEN.set(1)
        self._gate(GateName.CREDENTIALS_REFUSED if failure.request is RequestFault.CREDENTIALS
                   else GateName.TARGET_MISCONFIGURED)
        if before is not BreakerState.OPEN:
            what = ("the target refuses our credentials" if failure.request is RequestFault.CREDENTIALS
                    else "the target URL or request envelope is wrong")
            log.error(f"{what}; the flow stops until it is fixed (probing every cool-down)", extra={
                "http_status": failure.http_status, "reason": failure.message[:300],
                "cooldown_s": self.breaker.current_cooldown})
        return TargetUnavailable(self._why(), self.breaker.wait(self._clock()) or 1.0)

    def _gate(self, name: GateName) -> None:
        # The breaker's clock is monotonic; a gate says when in wall-clock time.
        reopens = time.time() + self.breaker.wait(self._clock())
        GATES.hold(name, TARGET_SCOPE, f"{self.breaker.reason or 'circuit breaker open'} "
                   f"(probing every {self.breaker.current_cooldown:g}s)", until=reopens)

    def _why(self) -> str:
        return self.breaker.reason or "the target's circuit breaker is open"


def _failed_whole(result: CallResult) -> bool:
    failure = result.request_failure
    return failure is not None and failure.request in (RequestFault.BROKEN, RequestFault.UNAVAILABLE)


