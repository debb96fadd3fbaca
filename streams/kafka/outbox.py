"""Records an agent produces for one batch, sent through faust's producer and awaited together.

`flush()` returns once the broker acknowledged every record (acks=all), which is the point
after which the batch's offsets may be acked.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust


class Outbox:
    def __init__(self) -> None:
        self._pending: list[Any] = []

    async def send(self, topic: faust.TopicT, *, key: bytes | None, value: bytes,
                   headers: list[tuple[str, bytes]] | None = None) -> None:
        self._pending.append(await topic.send(key=key, value=value, headers=headers))

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
