"""Running awaitables side by side without leaving any behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TypeVar, cast

T = TypeVar("T")


async def all_finished(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Like asyncio.gather, but every call finishes before the first error is raised.

    Plain gather raises the first error at once and leaves the others running unobserved: a
    batch attempt that failed that way was retried while its other work records were still
    being applied, so two deliveries of one record claimed and applied the same rows at once
    (found by `streams chaos`: rows left PENDING_RETRY under a retry record never sent)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)
