"""The one order in which a unit of work leaves: send its outcomes, flush, then acknowledge.

Every consumer of the topology (the faust agents, the retry tiers' consumer, the run tracker)
finishes a batch of input records the same way, and only this way:

1. the records it produces (work records, retry records, dead letters, run events) are sent;
2. every one of them is acknowledged by the broker (acks=all), plus whatever else must be
   durable first (the tracker's table writes and Postgres mirror);
3. only then are the inputs acknowledged: faust acks the events (it commits up to the first
   unacked offset), the tiers' consumer commits the next offset of each partition.

An offset acknowledged below one already acknowledged on its partition is refused (logged and
left out): a position never goes backwards. A batch processed in attempts (streams.agents.
batching retries what fails) sends each attempt's records into `attempt()`: an attempt that
fails has its sends awaited and dropped (copies that reached the broker are harmless: every
record carries an id its consumers deduplicate by), and only the successful ones count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where a record goes: a faust topic (`send` returns a future of the broker's answer)."""

    async def send(self, *, key: bytes | None, value: bytes, headers: Any = None) -> Awaitable[Any]: ...


class Input(Protocol):
    """A consumed record, as far as acknowledging it goes."""

    @property
    def tp(self) -> Any: ...

    @property
    def offset(self) -> int: ...


Ack = Callable[[Sequence[Any]], Awaitable[None]]
Flush = Callable[[], Awaitable[None]]


@dataclass
class Watermarks:
    """The highest offset acknowledged per partition, for one consumer (reset on assignment)."""

    acked: dict[Any, int] = field(default_factory=dict)

    def forward(self, inputs: Sequence[Any], where: Callable[[Any], tuple[Any, int]]) -> list[Any]:
        """`inputs` without any whose offset is below one acknowledged on its partition."""
        kept = []
        for item in inputs:
            tp, offset = where(item)
            highest = self.acked.get(tp)
            if highest is not None and offset < highest:
                log.warning("acknowledgement of an offset behind its partition refused",
                            extra={"partition": getattr(tp, "partition", tp), "offset": offset, "acked": highest})
                continue
            self.acked[tp] = offset if highest is None else max(highest, offset)
            kept.append(item)
        return kept

    def reset(self) -> None:
        self.acked.clear()


class AckOrder:
    """Acknowledgements handed to faust in offset order, per partition.

    faust commits a partition up to the end of the first run of consecutive acked offsets and
    checks the head of that run against the last commit with an off-by-one (`min(acked) -
    committed > 1`, and no check at all before the first commit): one unacked record just
    below an acked one is committed past. With two actors on one agent that is a lost record
    whenever one actor's batch waits (Postgres restarting) while the other acks a later offset
    of the same partition and the worker then dies (found by `streams chaos`: an ingest batch
    that never got rows). So an offset taken for processing (`opened`) holds back the acks of
    every later offset of its partition until it is acknowledged itself (`done`).
    """

    def __init__(self) -> None:
        self._open: dict[Any, set[int]] = {}
        self._waiting: dict[Any, dict[int, Any]] = {}

    def opened(self, tp: Any, offset: int) -> None:
        self._open.setdefault(tp, set()).add(offset)

    def done(self, tp: Any, offset: int, item: Any) -> list[Any]:
        """`item` (whatever acknowledges `offset`) is ready: the items to acknowledge now, in
        offset order (it and those it held back), or none while an earlier one is still open."""
        opened = self._open.get(tp)
        if not opened or offset not in opened:
            return [item]  # not taken through opened(): nothing to order it against
        waiting = self._waiting.setdefault(tp, {})
        waiting[offset] = item
        ready = []
        while opened and min(opened) in waiting:
            first = min(opened)
            opened.discard(first)
            ready.append(waiting.pop(first))
        if not opened:
            self._open.pop(tp, None)
        if not waiting:
            self._waiting.pop(tp, None)
        return ready

    def held(self) -> int:
        """Acknowledgements waiting for an earlier offset (for tests and logs)."""
        return sum(len(items) for items in self._waiting.values())


class Checkpoint:
    def __init__(self, ack: Ack, *, flush: Flush | None = None, watermarks: Watermarks | None = None,
                 where: Callable[[Any], tuple[Any, int]] | None = None) -> None:
        self._ack = ack
        self._flush = flush
        self._watermarks = watermarks
        self._where = where or _where
        self._kept: list[Awaitable[Any]] = []
        self._current: list[Awaitable[Any]] | None = None

    async def send(self, topic: Sink, *, key: bytes | None, value: bytes,
                   headers: list[tuple[str, bytes]] | None = None) -> None:
        pending = await topic.send(key=key, value=value, headers=headers)
        (self._current if self._current is not None else self._kept).append(pending)

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[Checkpoint]:
        """Sends made in the block count only if the block ends without an error."""
        outer, self._current = self._current, []
        try:
            yield self
        except BaseException:
            dropped, self._current = self._current, outer
            await _quietly(dropped)
            raise
        else:
            made, self._current = self._current, outer
            (self._current if self._current is not None else self._kept).extend(made)

    async def flush(self) -> None:
        """Step 2: until the broker has every record sent so far (raises if one failed: inside
        an attempt, the attempt fails with it and its records are made again)."""
        pending = [*self._kept, *(self._current or ())]
        if pending:
            await asyncio.gather(*pending)
        if self._flush is not None:
            await self._flush()

    async def commit(self, inputs: Sequence[Any]) -> None:
        """Steps 2 and 3: flush, then acknowledge `inputs` (never an offset that goes backwards)."""
        await self.flush()
        self._kept = []
        if self._watermarks is not None:
            inputs = self._watermarks.forward(inputs, self._where)
        if inputs:
            await self._ack(inputs)

    def __len__(self) -> int:
        return len(self._kept) + len(self._current or ())


def _where(item: Any) -> tuple[Any, int]:
    message = getattr(item, "message", item)
    return message.tp, message.offset


async def _quietly(pending: Sequence[Awaitable[Any]]) -> None:
    for future in pending:
        with suppress(Exception):
            await future
