"""Noticing records the consumer skipped (streams.kafka.positions): `Positions`, the per
partition bookkeeping with an explicit clock, and `PartitionGuard` over a fake faust app."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.kafka import positions as positions_module
from streams.kafka.positions import (
    COUNT,
    IDLE_BEHIND,
    RESEEK_AFTER,
    PartitionGuard,
    Positions,
    Verdict,
    committed_offsets,
)
from streams.settings import Settings

TOPIC = "ingest.work"
P0, P1 = ("t", 0), ("t", 1)
TP0, TP1, OTHER = TP(TOPIC, 0), TP(TOPIC, 1), TP("elsewhere", 0)


# --- Positions ------------------------------------------------------------------------------


def tracked(**starts: int) -> Positions:
    positions = Positions()
    positions.reset({("t", int(p[1:])): offset for p, offset in starts.items()})
    return positions


@pytest.mark.parametrize("offset", [0, 5, 1000])
def test_a_partition_not_tracked_counts_every_record(offset: int) -> None:
    assert Positions().check(P0, offset, now=0.0) == COUNT


@pytest.mark.parametrize(("offset", "verdict"), [
    (5, COUNT),  # the next one
    (4, COUNT),  # counted already, delivered again
    (0, COUNT),
    (6, Verdict(False, 5)),  # after a hole: seek back to the first missing offset
    (99, Verdict(False, 5)),
])
def test_check_of_a_tracked_partition(offset: int, verdict: Verdict) -> None:
    assert tracked(p0=5).check(P0, offset, now=100.0) == verdict


def test_a_hole_is_sought_once_then_again_after_reseek_after() -> None:
    positions = tracked(p0=5)
    assert positions.check(P0, 7, now=100.0) == Verdict(False, 5)
    assert positions.check(P0, 8, now=100.0) == Verdict(False)  # a seek is under way
    assert positions.check(P0, 9, now=100.0 + RESEEK_AFTER - 0.01) == Verdict(False)
    assert positions.check(P0, 9, now=100.0 + RESEEK_AFTER) == Verdict(False, 5)
    assert positions.check(P0, 9, now=100.0 + RESEEK_AFTER + 1) == Verdict(False)


def test_the_missing_record_arriving_ends_the_seek() -> None:
    positions = tracked(p0=5)
    assert positions.check(P0, 7, now=100.0) == Verdict(False, 5)
    assert positions.check(P0, 5, now=100.1) == COUNT
    positions.counted(P0, 5)
    # A new hole right after is sought at once, not held back by the old seek.
    assert positions.check(P0, 8, now=100.2) == Verdict(False, 6)


def test_holes_are_tracked_per_partition() -> None:
    positions = tracked(p0=5, p1=0)
    assert positions.check(P0, 9, now=1.0) == Verdict(False, 5)
    assert positions.check(P1, 3, now=1.0) == Verdict(False, 0)
    assert positions.check(P1, 0, now=1.0) == COUNT


@pytest.mark.parametrize(("offset", "after"), [(5, 6), (4, 5), (6, 5)])
def test_counted_advances_only_on_the_next_offset(offset: int, after: int) -> None:
    positions = tracked(p0=5)
    positions.counted(P0, offset)
    assert positions.next == {P0: after}


def test_counted_of_an_untracked_partition_does_nothing() -> None:
    positions = tracked(p0=5)
    positions.counted(P1, 0)
    assert positions.next == {P0: 5}


def test_counting_in_order_walks_the_partition() -> None:
    positions = tracked(p0=0)
    for offset in range(10):
        assert positions.check(P0, offset, now=0.0) == COUNT
        positions.counted(P0, offset)
    assert positions.next == {P0: 10}


@pytest.mark.parametrize(("end", "found"), [(None, {}), (4, {}), (5, {}), (6, {P0: 5}), (100, {P0: 5})])
def test_behind_finds_partitions_whose_end_is_ahead(end: int | None, found: dict[Any, int]) -> None:
    assert tracked(p0=5).behind({P0: end}, now=10.0) == found


def test_behind_ignores_untracked_partitions() -> None:
    assert tracked(p0=5).behind({P1: 100}, now=10.0) == {}


def test_behind_does_not_seek_again_within_reseek_after() -> None:
    positions = tracked(p0=5, p1=2)
    assert positions.behind({P0: 9, P1: 9}, now=10.0) == {P0: 5, P1: 2}
    assert positions.behind({P0: 9, P1: 9}, now=10.0 + RESEEK_AFTER / 2) == {}
    assert positions.behind({P0: 9, P1: 9}, now=10.0 + RESEEK_AFTER) == {P0: 5, P1: 2}


def test_behind_and_check_share_the_seek_under_way() -> None:
    positions = tracked(p0=5)
    assert positions.check(P0, 8, now=10.0) == Verdict(False, 5)
    assert positions.behind({P0: 9}, now=10.5) == {}


def test_reset_replaces_the_positions_and_forgets_seeks() -> None:
    positions = tracked(p0=5)
    assert positions.check(P0, 9, now=10.0) == Verdict(False, 5)
    positions.reset({P0: 7, P1: 0})
    assert positions.next == {P0: 7, P1: 0}
    assert positions.check(P0, 9, now=10.0) == Verdict(False, 7)  # sought at once again


def test_reset_copies_the_starts() -> None:
    starts = {P0: 1}
    positions = Positions()
    positions.reset(starts)
    positions.counted(P0, 1)
    assert starts == {P0: 1}


def test_committed_offsets_of_no_partition_reads_nothing() -> None:
    assert committed_offsets(Settings(), "group", []) == {}


# --- PartitionGuard over a fake app ----------------------------------------------------------


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[Any, int]] = []
        self.ends: dict[Any, int] = {}
        self.fail_seek = False

    async def seek(self, tp: Any, offset: int) -> None:
        raise AssertionError("faust's seek() races the consumer thread (see streams.kafka.positions.seek)")

    async def seek_wait(self, partitions: dict[Any, int]) -> None:
        if self.fail_seek:
            raise RuntimeError("partition not assigned")
        self.seeks += list(partitions.items())

    def highwater(self, tp: Any) -> int:
        return self.ends[tp]  # KeyError: not fetched yet


class Signal:
    def __init__(self) -> None:
        self.receivers: list[Callable[..., Awaitable[None]]] = []

    def connect(self, receiver: Callable[..., Awaitable[None]]) -> None:
        self.receivers.append(receiver)


class FakeApp:
    def __init__(self) -> None:
        self.conf = SimpleNamespace(id="streams-group")
        self.rebalancing = False
        self.consumer = FakeConsumer()
        self.on_partitions_assigned = Signal()

    async def assign(self, *tps: TP) -> None:
        for receiver in self.on_partitions_assigned.receivers:
            await receiver(self, set(tps))


class Committed:
    """The fake `committed_offsets`: the offsets to return (or an error to raise), and the calls."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}
        self.error: Exception | None = None
        self.calls: list[tuple[Settings, str, list[Any]]] = []

    def __call__(self, settings: Settings, group: str, partitions: Iterable[Any]) -> dict[tuple[str, int], int]:
        wanted = list(partitions)
        self.calls.append((settings, group, wanted))
        if self.error is not None:
            raise self.error
        return {(t, p): offset for (t, p), offset in self.offsets.items() if TP(t, p) in wanted}


@pytest.fixture
def committed(monkeypatch: pytest.MonkeyPatch) -> Committed:
    fake = Committed()
    monkeypatch.setattr(positions_module, "committed_offsets", fake)
    return fake


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


@pytest.fixture
def guard(app: FakeApp) -> PartitionGuard:
    made = PartitionGuard(app, Settings(), TOPIC, "plan_apply")
    made.attach()
    return made


@pytest.mark.asyncio
async def test_attach_connects_to_assignments(app: FakeApp, guard: PartitionGuard) -> None:
    assert len(app.on_partitions_assigned.receivers) == 1


@pytest.mark.asyncio
async def test_records_are_held_until_the_assignment_is_known_then_read_again_from_its_start(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    assert await guard.admit(TP0, 5) is False
    assert await guard.admit(TP0, 6) is False
    assert app.consumer.seeks == []
    committed.offsets = {(TOPIC, 0): 3}
    await app.assign(TP0)
    assert app.consumer.seeks == [(TP0, 3)]
    assert await guard.admit(TP0, 3) is True


@pytest.mark.asyncio
async def test_a_held_partition_of_an_earlier_assignment_is_not_sought_again(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    await guard.admit(TP0, 5)
    committed.offsets = {(TOPIC, 0): 3}
    await app.assign(TP0)
    await app.assign(TP0)
    assert app.consumer.seeks == [(TP0, 3)]


@pytest.mark.asyncio
async def test_the_assignment_reads_the_groups_offsets_of_its_own_topic_only(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    committed.offsets = {(TOPIC, 0): 0, (TOPIC, 1): 4}
    await app.assign(TP0, TP1, OTHER)
    ((settings, group, wanted),) = committed.calls
    assert settings is guard.settings
    assert group == "streams-group"
    assert sorted(wanted) == [TP0, TP1]
    assert guard.positions.next == {TP0: 0, TP1: 4}
    assert all(isinstance(tp, TP) for tp in guard.positions.next)


@pytest.mark.asyncio
async def test_in_order_records_are_admitted(app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    committed.offsets = {(TOPIC, 0): 10, (TOPIC, 1): 0}
    await app.assign(TP0, TP1)
    assert [await guard.admit(TP0, o) for o in range(10, 15)] == [True] * 5
    assert [await guard.admit(TP1, o) for o in range(3)] == [True] * 3
    assert guard.positions.next == {TP0: 15, TP1: 3}
    assert app.consumer.seeks == []


@pytest.mark.asyncio
async def test_a_record_delivered_again_is_admitted(app: FakeApp, guard: PartitionGuard,
                                                    committed: Committed) -> None:
    committed.offsets = {(TOPIC, 0): 0}
    await app.assign(TP0)
    for offset in (0, 1, 0, 1, 2):
        assert await guard.admit(TP0, offset) is True
    assert guard.positions.next == {TP0: 3}


@pytest.mark.asyncio
async def test_a_record_after_a_hole_is_not_admitted_and_the_partition_is_sought_back_once(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    committed.offsets = {(TOPIC, 0): 0}
    await app.assign(TP0)
    assert await guard.admit(TP0, 0) is True
    assert await guard.admit(TP0, 2) is False
    assert await guard.admit(TP0, 3) is False
    assert app.consumer.seeks == [(TP0, 1)]  # not again within RESEEK_AFTER
    assert await guard.admit(TP0, 1) is True
    assert await guard.admit(TP0, 2) is True
    assert guard.positions.next == {TP0: 3}


@pytest.mark.asyncio
async def test_a_seek_that_brought_nothing_is_made_again_after_reseek_after(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    committed.offsets = {(TOPIC, 0): 0}
    await app.assign(TP0)
    assert await guard.admit(TP0, 4) is False
    guard.positions._seeking[TP0] = time.monotonic() - RESEEK_AFTER - 1  # the seek was long ago
    assert await guard.admit(TP0, 5) is False
    assert app.consumer.seeks == [(TP0, 0), (TP0, 0)]


@pytest.mark.asyncio
@pytest.mark.parametrize(("committed_at", "handed_out", "starts_at"), [(4, 10, 10), (12, 10, 12), (10, 10, 10)])
async def test_a_partition_kept_through_a_rebalance_goes_on_from_where_it_was(
        app: FakeApp, guard: PartitionGuard, committed: Committed,
        committed_at: int, handed_out: int, starts_at: int) -> None:
    committed.offsets = {(TOPIC, 0): 0}
    await app.assign(TP0)
    for offset in range(handed_out):
        assert await guard.admit(TP0, offset)
    committed.offsets = {(TOPIC, 0): committed_at, (TOPIC, 1): 7}
    await app.assign(TP0, TP1)
    assert guard.positions.next == {TP0: starts_at, TP1: 7}
    assert app.consumer.seeks == []


@pytest.mark.asyncio
async def test_a_partition_lost_in_a_rebalance_is_no_longer_tracked(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    committed.offsets = {(TOPIC, 0): 0, (TOPIC, 1): 0}
    await app.assign(TP0, TP1)
    await app.assign(TP1)
    assert guard.positions.next == {TP1: 0}
    assert await guard.admit(TP0, 9) is False  # held: not this worker's (yet)


@pytest.mark.asyncio
async def test_a_partition_whose_offsets_could_not_be_read_is_unguarded(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    committed.error = RuntimeError("broker down")
    await app.assign(TP0)
    assert guard.positions.next == {}
    assert [await guard.admit(TP0, o) for o in (9, 3, 100)] == [True, True, True]
    assert app.consumer.seeks == []


@pytest.mark.asyncio
async def test_a_partition_missing_from_the_answer_is_unguarded_the_others_guarded(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    committed.offsets = {(TOPIC, 1): 5}
    await guard.admit(TP0, 3)  # held before the assignment
    await app.assign(TP0, TP1)
    assert app.consumer.seeks == []  # no known offset to read it again from
    assert await guard.admit(TP0, 3) is True
    assert await guard.admit(TP1, 9) is False
    assert app.consumer.seeks == [(TP1, 5)]


@pytest.mark.asyncio
async def test_unguarded_partitions_are_guarded_again_after_a_good_assignment(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    committed.error = RuntimeError("broker down")
    await app.assign(TP0)
    committed.error = None
    committed.offsets = {(TOPIC, 0): 2}
    await app.assign(TP0)
    assert await guard.admit(TP0, 5) is False
    assert app.consumer.seeks == [(TP0, 2)]


@pytest.mark.asyncio
async def test_a_failed_seek_is_logged_not_raised(app: FakeApp, guard: PartitionGuard, committed: Committed,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    committed.offsets = {(TOPIC, 0): 0}
    await app.assign(TP0)
    app.consumer.fail_seek = True
    assert await guard.admit(TP0, 3) is False
    assert "seek failed" in [r.getMessage() for r in caplog.records]


# --- check_idle -----------------------------------------------------------------------------


async def idle_guard(app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    committed.offsets = {(TOPIC, 0): 5, (TOPIC, 1): 2}
    await app.assign(TP0, TP1)
    guard._last_admitted = time.monotonic() - IDLE_BEHIND - 1


@pytest.mark.asyncio
async def test_check_idle_seeks_partitions_whose_end_is_ahead(app: FakeApp, guard: PartitionGuard,
                                                              committed: Committed) -> None:
    await idle_guard(app, guard, committed)
    app.consumer.ends = {TP0: 9, TP1: 2}
    await guard.check_idle()
    assert app.consumer.seeks == [(TP0, 5)]


@pytest.mark.asyncio
async def test_check_idle_does_not_seek_the_same_partition_again_at_once(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    await idle_guard(app, guard, committed)
    app.consumer.ends = {TP0: 9, TP1: 3}
    await guard.check_idle()
    await guard.check_idle()
    assert sorted(app.consumer.seeks) == [(TP0, 5), (TP1, 2)]


@pytest.mark.asyncio
async def test_check_idle_does_nothing_while_rebalancing(app: FakeApp, guard: PartitionGuard,
                                                         committed: Committed) -> None:
    await idle_guard(app, guard, committed)
    app.consumer.ends = {TP0: 9, TP1: 9}
    app.rebalancing = True
    await guard.check_idle()
    assert app.consumer.seeks == []


@pytest.mark.asyncio
async def test_check_idle_does_nothing_soon_after_a_record_was_admitted(
        app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    await idle_guard(app, guard, committed)
    assert await guard.admit(TP0, 5)
    app.consumer.ends = {TP0: 9, TP1: 9}
    await guard.check_idle()
    assert app.consumer.seeks == []


@pytest.mark.asyncio
async def test_check_idle_skips_partitions_without_a_highwater(app: FakeApp, guard: PartitionGuard,
                                                               committed: Committed) -> None:
    await idle_guard(app, guard, committed)
    app.consumer.ends = {TP1: 8}  # TP0's end is not fetched yet
    await guard.check_idle()
    assert app.consumer.seeks == [(TP1, 2)]


@pytest.mark.asyncio
async def test_an_assignment_counts_as_activity(app: FakeApp, guard: PartitionGuard, committed: Committed) -> None:
    await idle_guard(app, guard, committed)
    await app.assign(TP0, TP1)
    app.consumer.ends = {TP0: 9, TP1: 9}
    await guard.check_idle()
    assert app.consumer.seeks == []
