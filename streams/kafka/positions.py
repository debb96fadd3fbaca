"""Where an agent is in each partition it reads, to notice records the consumer skipped.

faust 0.15 can lose records around a rebalance; for the run tracker that is a run that never
completes, for the ingest agent an entity that never gets a row, for plan-apply rows QUEUED
forever:

- `Consumer._drain_messages` drops a record it is handing over while the flow is suspended,
  and counts on the seek to the committed offset after the rebalance to read it again; but
  aiokafka's `seek_to_committed` does not seek a partition whose committed offset is 0 or
  missing, so there the record is gone until the next restart;
- `Consumer._new_offset` commits past the committed offset when it is the only offset not
  acked (`min(acked) - committed > 1` lets a gap of one through), so a record dropped right at
  the committed offset is lost for good.

The tracker counts a partition's records strictly in offset order from the committed offset.
A record after a hole is not counted (not acked, so nothing past the hole can be committed):
the tracker seeks back to the first missing offset and reads again. When the agent is idle
while a partition's end is ahead of what was counted, the records at the end were dropped: it
seeks back too. Reading again is safe: counting is idempotent.

`PartitionGuard` does the same for the batch agents (streams.agents.batching), whose actors
share one queue: a record is admitted when it is the next one of its partition, as it is
handed out (its processing may finish later; it is never dropped, only dead-lettered). A
partition without a committed offset starts at its first offset, so records lost before the
first commit are noticed too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from streams import metrics
from streams.gates import GATES, GateName
from streams.kafka.reader import Reader
from streams.settings import Settings

# A seek that has not brought the missing record after this long is made again.
RESEEK_AFTER = 2.0

Partition = tuple[str, int]  # (topic, partition), as faust's TP compares


@dataclass(frozen=True)
class Verdict:
    count: bool  # count the record now
    seek_to: int | None = None  # else, seek back here first (None: a seek is under way)


COUNT = Verdict(True)


@dataclass
class Positions:
    next: dict[Partition, int] = field(default_factory=dict)  # the offset to count next
    _seeking: dict[Partition, float] = field(default_factory=dict)  # since when (monotonic)

    def reset(self, starts: dict[Partition, int]) -> None:
        """After a rebalance: the committed offsets of the partitions now assigned."""
        self.next = dict(starts)
        self._seeking.clear()

    def check(self, partition: Partition, offset: int, now: float | None = None) -> Verdict:
        """Count the record at `offset`, or not: it is after a hole, and comes again after the
        records before it once the partition is read from the first missing offset."""
        expected = self.next.get(partition)
        if expected is None or offset <= expected:
            # Not tracked (yet), the next one, or one counted already and delivered again.
            if offset == expected:
                self._seeking.pop(partition, None)
            return COUNT
        now = time.monotonic() if now is None else now
        since = self._seeking.get(partition)
        if since is not None and now - since < RESEEK_AFTER:
            return Verdict(False)
        self._seeking[partition] = now
        return Verdict(False, expected)

    def counted(self, partition: Partition, offset: int) -> None:
        expected = self.next.get(partition)
        if expected is not None and offset == expected:
            self.next[partition] = offset + 1

    def behind(self, ends: dict[Partition, int | None], now: float | None = None) -> dict[Partition, int]:
        """Partitions whose end is ahead of what was counted: where to seek them back to."""
        now = time.monotonic() if now is None else now
        found = {}
        for partition, end in ends.items():
            expected = self.next.get(partition)
            since = self._seeking.get(partition)
            if expected is None or end is None or end <= expected:
                continue
            if since is None or now - since >= RESEEK_AFTER:
                self._seeking[partition] = now
                found[partition] = expected
        return found


def committed_offsets(settings: Settings, group: str,
                      partitions: Iterable[Partition]) -> dict[Partition, int]:
    """The group's committed offset of each partition (its first offset when none). Blocking."""
    wanted = list(partitions)
    if not wanted:
        return {}
    with Reader(settings, group=group) as reader:
        return reader.committed(wanted)


log = logging.getLogger(__name__)

# Idle this long while a partition's end is ahead of what was handed out: look for drops.
IDLE_BEHIND = 2.0


class PartitionGuard:
    """Admits an agent's records in offset order per partition and reads holes again.

    `app` is the faust app whose consumer reads `topic` for the agent `name`; `attach()` hooks
    it to assignments (the positions start from the group's committed offsets each time).
    """

    def __init__(self, app: Any, settings: Settings, topic: str, name: str) -> None:
        self.app, self.settings, self.topic, self.name = app, settings, topic, name
        self.positions = Positions()
        self._last_admitted = time.monotonic()
        # Records of a partition whose committed offset is not known yet (faust may hand them out
        # before it says the partition is assigned) are held, and the partition is read again
        # from its start once the offset is known. A partition whose offset could not be read is
        # not guarded: better read on than hold its records forever.
        self._held: set[Any] = set()
        self._unguarded: set[Any] = set()

    def attach(self) -> None:
        self.app.on_partitions_assigned.connect(self._on_assigned)

    async def _on_assigned(self, _sender: Any, assigned: Any, **_kwargs: Any) -> None:
        mine = [tp for tp in assigned if tp.topic == self.topic]
        before = self.positions.next
        # Unknown until read: nothing of these partitions slips through meanwhile.
        self.positions.reset({})
        self._unguarded = set()
        try:
            starts = await asyncio.to_thread(committed_offsets, self.settings, self.app.conf.id, mine)
        except Exception as exc:  # noqa: BLE001 - the agent reads on, without noticing skipped records
            log.warning("committed offsets not read; skipped records will not be noticed", extra={
                "agent": self.name, "error": type(exc).__name__, "detail": str(exc)[:300]})
            starts = {}
        # A partition this worker kept through the rebalance goes on from where it was handed
        # out (everything before was processed, or is being), when that is past the commit.
        known: dict[Partition, int] = {tp: max(offset, before.get(tp, offset))
                 for tp, offset in ((_tp(self.app, partition), offset) for partition, offset in starts.items())}
        self.positions.reset(known)
        self._unguarded = {tp for tp in mine if tp not in known}
        held, self._held = self._held, set()
        self._last_admitted = time.monotonic()
        for tp in held:
            GATES.release(GateName.OFFSETS_UNKNOWN, _scope(tp))
            if tp in known:
                await self._read_again(tp, known[tp], "records held while the assignment was read")

    async def admit(self, tp: Any, offset: int) -> bool:
        """Process the record at `offset` now? Not when it comes after a hole: then the partition
        is read again from the first missing offset, and the record comes again in its turn."""
        if tp in self._unguarded:
            return True
        if tp not in self.positions.next:
            if tp not in self._held:
                GATES.hold(GateName.OFFSETS_UNKNOWN, _scope(tp),
                           f"{self.name}: records wait until the partition's committed offset is read")
            self._held.add(tp)  # its offsets are not known yet: read again once they are
            return False
        verdict = self.positions.check(tp, offset)
        if verdict.count:
            self.positions.counted(tp, offset)
            self._last_admitted = time.monotonic()
            return True
        if verdict.seek_to is not None:
            await self._read_again(tp, verdict.seek_to, "records skipped")
        return False

    async def check_idle(self) -> None:
        """When nothing was handed out for a while but a partition has records past what was,
        the consumer dropped them: read again from there."""
        if time.monotonic() - self._last_admitted < IDLE_BEHIND or self.app.rebalancing:
            return
        ends: dict[Any, int | None] = {}
        for tp in list(self.positions.next):
            try:
                ends[tp] = self.app.consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - not fetched yet: nothing to compare
                ends[tp] = None
        for tp, offset in self.positions.behind(ends).items():
            await self._read_again(tp, offset, "records at the end not delivered")

    async def _read_again(self, tp: Any, offset: int, why: str) -> None:
        metrics.RECORDS.labels(agent=self.name, outcome="read_again").inc()
        log.warning("records read again from a partition", extra={
            "agent": self.name, "reason": why, "topic": tp.topic, "partition": tp.partition, "offset": offset})
        await seek(self.app, tp, offset, self.name)


async def seek(app: Any, tp: Any, offset: int, agent: str) -> None:
    """Move faust's consumer on `tp` to `offset`, in the consumer's own thread.

    faust's `consumer.seek()` calls aiokafka's seek from the event loop's thread while the
    consumer thread may be draining fetched records: both change the fetcher's record map and
    the fetch task dies with a KeyError, taking the worker with it. `seek_wait` runs the seek
    in the consumer thread and waits for the new position."""
    try:
        await app.consumer.seek_wait({tp: offset})
    except Exception as exc:  # noqa: BLE001 - a rebalance took the partition: it seeks by itself
        log.warning("seek failed", extra={"agent": agent, "error": type(exc).__name__,
                                          "partition": tp.partition, "offset": offset})


def _tp(app: Any, partition: Partition) -> TP:
    """faust's TP for a (topic, partition) pair (a NamedTuple that compares equal to it)."""
    return TP(*partition)


def _scope(tp: Any) -> str:
    return f"{tp.topic}[{tp.partition}]"
