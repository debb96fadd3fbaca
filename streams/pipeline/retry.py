"""The retry decision: a pure function of the failure, the attempt and the tier delays.

    attempt 1 fails ─► tier 0 ─► attempt 2 fails ─► tier 1 ─► … ─► last tier ─► attempt fails ─► DLQ

- Permanent and invalid failures go to the dead-letter topic at once.
- A transient failure goes to tier `attempt - 1` (the ladder), or higher when the target's
  Retry-After asks for more: the first tier whose delay is at least Retry-After. When
  Retry-After exceeds every tier, the last tier is used and the record is due at Retry-After.
- The budget is one attempt per tier plus the first: Retry-After can skip rungs, never add them.
- The due time is never earlier than the tier's delay after the failure.
- A failure of the target as a whole (a 503, a dropped connection, NetBox answering "internal
  error" for most of a request) costs no attempt: the entity is tried again from the tier of
  its current attempt, with the same attempt number, and is never dead-lettered for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streams.pipeline.outcomes import ErrorClass


@dataclass(frozen=True)
class RetryAt:
    tier: int  # index into the tier delays
    due_at_ms: int
    next_attempt: int


@dataclass(frozen=True)
class SendToDlq:
    reason: str


Decision = RetryAt | SendToDlq


def decide(error_class: ErrorClass, *, attempt: int, tiers: Sequence[float], now_ms: int,
           retry_after: float | None = None, costs_attempt: bool = True) -> Decision:
    """Where a record goes after attempt number `attempt` (1-based) failed with `error_class`.
    `costs_attempt=False`: the target failed as a whole, not this entity (see above)."""
    if attempt < 1:
        raise ValueError("attempts are numbered from 1")
    if error_class is not ErrorClass.TRANSIENT:
        return SendToDlq(f"{error_class.value} failure")
    ladder = attempt - 1
    if not costs_attempt:
        ladder = min(ladder, len(tiers) - 1)
    elif ladder >= len(tiers):
        return SendToDlq(f"transient failure after {attempt} attempts, the last retry tier included")
    tier = ladder
    wait = tiers[tier]
    if retry_after is not None and retry_after > wait:
        fitting = [index for index in range(ladder, len(tiers)) if tiers[index] >= retry_after]
        tier = fitting[0] if fitting else len(tiers) - 1
        wait = max(tiers[tier], retry_after)
    return RetryAt(tier=tier, due_at_ms=now_ms + round(wait * 1000),
                   next_attempt=attempt + 1 if costs_attempt else attempt)
