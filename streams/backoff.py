"""Waiting between tries of something that fails for reasons outside our code (Postgres, Kafka,
the target): exponential, capped, jittered, so a fleet of workers does not retry in step."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

BASE = 0.2
CAP = 30.0


def delay(attempt: int, *, base: float = BASE, cap: float = CAP) -> float:
    """Seconds before try `attempt + 1` (attempt counts the failures so far, from 1)."""
    growth: float = base * 2.0 ** min(max(attempt, 0), 16)
    return min(cap, growth) * random.uniform(0.5, 1.0)


async def until_done(operation: Callable[[], Awaitable[T]], *, what: str, extra: dict[str, Any] | None = None,
                     level: int = logging.WARNING, cap: float = CAP) -> T:
    """Run `operation` until it returns, backing off between failures and logging each one.
    For work that must not be skipped (a run's mirror, a count): it waits as long as it takes.
    Cancellation (a worker stopping, a rebalance) ends the wait."""
    attempt = 0
    while True:
        try:
            return await operation()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempt += 1
            log.log(level, f"{what} failed; trying again", exc_info=attempt == 1, extra={
                **(extra or {}), "error": type(exc).__name__, "detail": str(exc)[:300], "attempt": attempt})
            await asyncio.sleep(delay(attempt, cap=cap))
