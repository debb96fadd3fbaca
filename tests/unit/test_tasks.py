"""streams.tasks.all_finished: nothing left running when one of the calls fails."""

from __future__ import annotations

import asyncio

import pytest

from streams.tasks import all_finished


@pytest.mark.asyncio
async def test_the_first_error_is_raised_only_after_every_call_finished() -> None:
    finished: list[str] = []

    async def slow() -> str:
        await asyncio.sleep(0.05)
        finished.append("slow")
        return "slow"

    async def failing() -> str:
        raise RuntimeError("deadlock detected")

    with pytest.raises(RuntimeError, match="deadlock"):
        await all_finished([failing(), slow()])
    # With asyncio.gather the error arrives first and `slow` runs on, unobserved, into the retry.
    assert finished == ["slow"]


@pytest.mark.asyncio
async def test_results_keep_the_order_of_the_calls() -> None:
    async def value(v: int, wait: float) -> int:
        await asyncio.sleep(wait)
        return v

    assert await all_finished([value(1, 0.02), value(2, 0.0)]) == [1, 2]
