"""A circuit breaker for the target, as a pure state machine (the clock is passed in).

    closed ──(threshold consecutive whole-request transient failures)──► open
    open ──(cool-down elapsed)──► half-open: one probe may go (another if it has not answered
                                  within a cool-down, so a probe that never called cannot
                                  wedge the breaker)
    half-open ──probe succeeds──► closed        half-open ──probe fails──► open, cool-down × 2
    any ──trip (credentials refused, wrong URL)──► open at once

While it is open the agents do not call the target and do not move records down the retry
ladder: they leave their records unacked and wait (see streams.agents.batching), so an outage
costs time, not attempts. Credential failures (401/403 after a fresh token) and a wrong URL
(400/404/405) trip it: no data is at fault, and nothing can apply until someone fixes it; the
probes after each cool-down notice the fix. `reason` says why it is open, for logs and status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class Breaker:
    threshold: int
    cooldown: float
    max_cooldown: float
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_until: float = 0.0
    current_cooldown: float = field(default=0.0)
    next_probe_at: float = 0.0
    reason: str = ""

    def allow(self, now: float) -> bool:
        """May a request go to the target now? In half-open, one probe per cool-down."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now >= self.opened_until:
            self.state = BreakerState.HALF_OPEN
            self.next_probe_at = now
        if self.state is BreakerState.HALF_OPEN and now >= self.next_probe_at:
            self.next_probe_at = now + max(self.cooldown, 1.0)
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until a request may be tried again (0 when closed)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self.opened_until - now)
        return 0.0 if self.state is BreakerState.CLOSED else 0.1

    def success(self) -> BreakerState:
        self.state, self.failures, self.current_cooldown, self.reason = BreakerState.CLOSED, 0, 0.0, ""
        return self.state

    def failure(self, now: float, reason: str = "the target failed") -> BreakerState:
        """A whole request failed transiently."""
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self.current_cooldown = min(self.max_cooldown, max(self.cooldown, self.current_cooldown * 2))
            self._open(now, reason)
        elif self.state is BreakerState.CLOSED and self.failures >= self.threshold:
            self.current_cooldown = self.cooldown
            self._open(now, reason)
        return self.state

    def trip(self, now: float, reason: str) -> BreakerState:
        """Open now, whatever the count: nothing can apply until the cause is fixed."""
        self.failures += 1
        if self.state is BreakerState.OPEN:
            return self.state  # a call that left before it opened: the cool-down stands
        growing = self.state is BreakerState.HALF_OPEN
        self.current_cooldown = min(self.max_cooldown, max(self.cooldown, self.current_cooldown * 2 if growing else 0))
        self._open(now, reason)
        return self.state

    def _open(self, now: float, reason: str) -> None:
        self.state, self.opened_until, self.reason = BreakerState.OPEN, now + self.current_cooldown, reason
