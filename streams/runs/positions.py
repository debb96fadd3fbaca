"""Where the run tracker is in each run-events partition, to notice records the consumer skipped.

faust 0.15 can lose records around a rebalance, which for the tracker means a run that never
completes, or completes with wrong counts:

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
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from confluent_kafka import Consumer, TopicPartition

from streams.kafka.config import confluent_config
from streams.settings import Settings

# A seek that has not brought the missing record after this long is made again.
RESEEK_AFTER = 2.0

Partition = tuple[str, int]  # (topic, partition), as faust's TP compares


class Verdict(NamedTuple):
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
    wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
    if not wanted:
        return {}
    consumer = Consumer(confluent_config(settings, **{"group.id": group, "enable.auto.commit": False}))
    try:
        starts = {}
        for tp in consumer.committed(wanted, timeout=settings.kafka_timeout):
            if tp.offset < 0:
                tp.offset = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                           timeout=settings.kafka_timeout)[0]
            starts[(tp.topic, tp.partition)] = tp.offset
        return starts
    finally:
        consumer.close()

