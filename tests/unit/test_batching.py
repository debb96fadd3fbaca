"""Batches acked only once their outcome is durable (streams.agents.batching): what `settle`
does with each kind of error, how dead letters are written whatever it takes, how errors are
classified, and `run` over a fake faust stream. No real sleeps: `asyncio` inside the module is
a proxy whose `sleep` records the wait and only yields."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from faust.types import TP

from streams.agents import batching
from streams.agents.batching import (
    BATCH_TRIES,
    RECORD_TRIES,
    GuardedBatches,
    describe_event,
    is_infrastructure,
    is_too_large,
)
from streams.backoff import BASE, CAP
from streams.errors import DatabaseRejected, DatabaseUnavailable, InvalidRecord, RecordError, TargetUnavailable
from streams.kafka.checkpoint import Checkpoint, Watermarks

REAL_SLEEP = asyncio.sleep


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass(frozen=True)
class FakeEvent:
    message: Message
    copy: int = 0  # tells a redelivered copy from the first


@dataclass(frozen=True)
class Origin:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class TierRecord:
    """A retry tier's record (streams.agents.plan_apply.Incoming): its position is `origin`."""

    origin: Origin
    message: Message


def event(offset: int, partition: int = 0, copy: int = 0) -> FakeEvent:
    return FakeEvent(Message("ingest.work", partition, offset), copy)


class Poison(Exception):
    """An error that is about the record: not the infrastructure's."""


class AsyncioProxy:
    """`asyncio` for the module under test, with a `sleep` that records and only yields."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await REAL_SLEEP(0)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    proxy = AsyncioProxy()
    monkeypatch.setattr(batching, "asyncio", proxy)
    return proxy.sleeps


class Topic:
    """Sends whose futures resolve on the next loop iteration (or fail with the next error given)."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.errors: list[BaseException] = []

    async def send(self, *, key: bytes | None, value: bytes, headers: Any = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        error = self.errors.pop(0) if self.errors else None

        def done() -> None:
            if error is not None:
                future.set_exception(error)
                self.log.append(("failed", value))
            else:
                future.set_result(None)
                self.log.append(("resolved", value))

        self.log.append(("sent", value))
        asyncio.get_running_loop().call_soon(done)
        return future


class Handler:
    """Sends one record per event; `fail(batch, call)` says which error (if any) to raise first."""

    def __init__(self, topic: Topic, fail: Callable[[list[Any], int], BaseException | None] | None = None) -> None:
        self.topic = topic
        self.fail = fail or (lambda batch, call: None)
        self.calls: list[list[Any]] = []

    async def __call__(self, batch: Sequence[Any], out: Checkpoint) -> None:
        self.calls.append(list(batch))
        error = self.fail(list(batch), len(self.calls))
        if error is not None:
            raise error
        for item in batch:
            await out.send(self.topic, key=None, value=f"out:{item.message.offset}".encode())


class DeadLetters:
    """Writes a dead letter through `out`; raises the queued errors first."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.errors: list[BaseException] = []
        self.calls: list[tuple[Any, BaseException, bool]] = []

    async def __call__(self, event: Any, error: BaseException, out: Checkpoint, *, excerpt: bool = False) -> None:
        self.calls.append((event, error, excerpt))
        if self.errors:
            raise self.errors.pop(0)
        await out.send(self.topic, key=None, value=f"dead:{event.message.offset}".encode())


class Acks:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.calls: list[list[Any]] = []

    async def __call__(self, inputs: Sequence[Any]) -> None:
        self.calls.append(list(inputs))
        self.log.append(("acked", [i.message.offset for i in inputs]))


@dataclass
class Rig:
    batches: GuardedBatches
    handler: Handler
    dead: DeadLetters
    acks: Acks
    topic: Topic
    log: list[tuple[str, Any]]


def rig(fail: Callable[[list[Any], int], BaseException | None] | None = None) -> Rig:
    log: list[tuple[str, Any]] = []
    topic = Topic(log)
    handler = Handler(topic, fail)
    dead = DeadLetters(topic)
    return Rig(GuardedBatches("tests", handler, dead, max_records=10, within=0.01), handler, dead, Acks(log), topic,
               log)


def poisoned_by(offset: int, error: Callable[[], BaseException] = lambda: Poison("bad record")
                ) -> Callable[[list[Any], int], BaseException | None]:
    return lambda batch, call: error() if any(e.message.offset == offset for e in batch) else None


BATCH = [event(0), event(1), event(2)]


# --- settle: success ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_batch_that_succeeds_is_acked_once_after_its_sends_are_on_the_broker(sleeps: list[float]) -> None:
    r = rig()
    await r.batches.settle(BATCH, r.acks)
    assert r.handler.calls == [BATCH]
    assert r.acks.calls == [BATCH]
    assert r.dead.calls == []
    assert [kind for kind, _ in r.log] == ["sent"] * 3 + ["resolved"] * 3 + ["acked"]
    assert sleeps == []


@pytest.mark.asyncio
async def test_settle_with_watermarks_acks_no_position_behind_the_last(sleeps: list[float]) -> None:
    r = rig()
    watermarks = Watermarks()
    await r.batches.settle([event(5), event(6)], r.acks, watermarks)
    await r.batches.settle([event(4), event(7)], r.acks, watermarks)
    assert [[e.message.offset for e in call] for call in r.acks.calls] == [[5, 6], [7]]


@pytest.mark.asyncio
async def test_settle_reads_the_position_of_a_tier_record_from_its_origin(sleeps: list[float]) -> None:
    r = rig()
    watermarks = Watermarks({("retry.30s", 2): 10})
    records = [TierRecord(Origin("retry.30s", 2, 9), Message("x", 0, 100)),
               TierRecord(Origin("retry.30s", 2, 11), Message("x", 0, 1))]
    await r.batches.settle(records, r.acks, watermarks)
    assert r.acks.calls == [[records[1]]]
    assert watermarks.acked == {("retry.30s", 2): 11}


# --- settle: infrastructure errors ------------------------------------------------------------


INFRASTRUCTURE: list[Callable[[], BaseException]] = [
    lambda: DatabaseUnavailable("postgres down"),
    lambda: TargetUnavailable("breaker open", retry_in=7.0),
    lambda: KafkaError("broker gone"),
    lambda: KafkaConnectionError("no route"),
    lambda: ConnectionError("reset"),
    lambda: TimeoutError(),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("error", INFRASTRUCTURE)
async def test_an_infrastructure_error_is_retried_until_it_succeeds_and_never_dead_letters(
        sleeps: list[float], error: Callable[[], BaseException]) -> None:
    failures = BATCH_TRIES * 3
    r = rig(lambda batch, call: error() if call <= failures else None)
    await r.batches.settle(BATCH, r.acks)
    assert r.handler.calls == [BATCH] * (failures + 1)  # always the whole batch: never split
    assert r.dead.calls == []
    assert r.acks.calls == [BATCH]
    assert len(sleeps) == failures


@pytest.mark.asyncio
@pytest.mark.parametrize(("retry_in", "wait"), [(7.0, 7.0), (0.1, 0.5), (0.5, 0.5), (120.0, 120.0)])
async def test_an_open_breaker_says_how_long_to_wait(sleeps: list[float], retry_in: float, wait: float) -> None:
    r = rig(lambda batch, call: TargetUnavailable("open", retry_in=retry_in) if call == 1 else None)
    await r.batches.settle(BATCH, r.acks)
    assert sleeps == [wait]


@pytest.mark.asyncio
async def test_an_infrastructure_error_backs_off_with_jitter_at_a_fixed_step(sleeps: list[float]) -> None:
    r = rig(lambda batch, call: DatabaseUnavailable("down") if call <= 20 else None)
    await r.batches.settle(BATCH, r.acks)
    step = batching_step(3)
    assert all(step * 0.5 <= s <= step for s in sleeps)


def batching_step(attempt: int) -> float:
    """The step of streams.backoff.delay for `attempt` (the wait is within [0.5, 1] of it)."""
    return float(min(CAP, BASE * 2 ** attempt))


@pytest.mark.asyncio
async def test_a_send_the_broker_cannot_take_for_now_retries_the_batch(sleeps: list[float]) -> None:
    r = rig()
    r.topic.errors = [KafkaTimeoutError(), KafkaTimeoutError()]  # the first attempt's first two sends
    await r.batches.settle(BATCH, r.acks)
    assert len(r.handler.calls) == 2
    assert r.dead.calls == []
    assert r.acks.calls == [BATCH]


@pytest.mark.asyncio
async def test_infrastructure_errors_do_not_use_up_the_tries(sleeps: list[float]) -> None:
    # Poison on calls 1 and 3, the database down in between: two failures of BATCH_TRIES.
    errors = {1: Poison("x"), 2: DatabaseUnavailable("down"), 3: Poison("y"), 4: DatabaseUnavailable("down")}
    r = rig(lambda batch, call: errors.get(call))
    await r.batches.settle(BATCH, r.acks)
    assert r.handler.calls == [BATCH] * 5
    assert r.dead.calls == []


# --- settle: errors about a record ----------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("poison", [0, 1, 2])
async def test_a_record_that_keeps_failing_is_dead_lettered_and_the_others_processed(
        sleeps: list[float], poison: int) -> None:
    r = rig(poisoned_by(poison))
    await r.batches.settle(BATCH, r.acks)
    alone = [[e] for e in BATCH for _ in range(RECORD_TRIES if e.message.offset == poison else 1)]
    assert r.handler.calls == [BATCH] * BATCH_TRIES + alone
    ((item, error, excerpt),) = r.dead.calls
    assert item == BATCH[poison] and isinstance(error, Poison) and excerpt is False
    assert r.acks.calls == [BATCH]  # the whole batch, once, after everything
    assert r.log[-1] == ("acked", [0, 1, 2])
    sent = [value for kind, value in r.log if kind == "resolved"]
    assert sorted(sent) == sorted([f"out:{o}".encode() for o in range(3) if o != poison] + [f"dead:{poison}".encode()])


@pytest.mark.asyncio
async def test_two_poisoned_records_are_both_dead_lettered(sleeps: list[float]) -> None:
    r = rig(lambda batch, call: Poison("x") if any(e.message.offset in (0, 2) for e in batch) else None)
    await r.batches.settle(BATCH, r.acks)
    assert [item for item, _, _ in r.dead.calls] == [BATCH[0], BATCH[2]]
    assert r.acks.calls == [BATCH]


@pytest.mark.asyncio
async def test_an_error_that_goes_away_is_no_dead_letter(sleeps: list[float]) -> None:
    r = rig(lambda batch, call: Poison("flaky") if call < BATCH_TRIES else None)
    await r.batches.settle(BATCH, r.acks)
    assert r.handler.calls == [BATCH] * BATCH_TRIES
    assert r.dead.calls == []
    assert r.acks.calls == [BATCH]


@pytest.mark.asyncio
async def test_a_failing_batch_whose_records_each_succeed_alone_is_not_dead_lettered(sleeps: list[float]) -> None:
    r = rig(lambda batch, call: Poison("together") if len(batch) > 1 else None)
    await r.batches.settle(BATCH, r.acks)
    assert r.handler.calls == [BATCH] * BATCH_TRIES + [[e] for e in BATCH]
    assert r.dead.calls == []


@pytest.mark.asyncio
async def test_sends_of_a_failed_attempt_are_dropped_even_when_the_broker_refused_them(sleeps: list[float]) -> None:
    class SendsThenFails(Handler):
        async def __call__(self, batch: Sequence[Any], out: Checkpoint) -> None:
            self.calls.append(list(batch))
            for item in batch:
                await out.send(self.topic, key=None, value=f"try{len(self.calls)}:{item.message.offset}".encode())
            if len(self.calls) == 1:
                raise Poison("after its sends")

    log: list[tuple[str, Any]] = []
    topic = Topic(log)
    topic.errors = [RuntimeError("refused")]  # the first attempt's first send fails too
    handler = SendsThenFails(topic)
    acks = Acks(log)
    await GuardedBatches("tests", handler, DeadLetters(topic), max_records=10, within=0.01).settle(BATCH, acks)
    assert len(handler.calls) == 2
    assert acks.calls == [BATCH]  # the refused send belonged to the dropped attempt: no error at the commit
    assert ("failed", b"try1:0") in log
    assert log.index(("failed", b"try1:0")) < log.index(("sent", b"try2:0"))  # awaited before the next try


@pytest.mark.asyncio
async def test_a_record_error_backs_off_more_with_each_failure(sleeps: list[float]) -> None:
    r = rig(poisoned_by(0))
    await r.batches.settle([event(0)], r.acks)
    batch_waits, record_waits = sleeps[:BATCH_TRIES - 1], sleeps[BATCH_TRIES - 1:]
    assert len(batch_waits) == BATCH_TRIES - 1 and len(record_waits) == RECORD_TRIES - 1
    for failures, wait in enumerate(batch_waits, start=1):
        assert batching_step(failures) * 0.5 <= wait <= batching_step(failures)


@pytest.mark.asyncio
async def test_cancellation_ends_settle_without_an_ack(sleeps: list[float]) -> None:
    r = rig(lambda batch, call: asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await r.batches.settle(BATCH, r.acks)
    assert r.acks.calls == [] and r.dead.calls == []
    assert len(r.handler.calls) == 1


# --- settle: writing the dead letter --------------------------------------------------------


@pytest.mark.asyncio
async def test_a_dead_letter_too_large_is_written_again_as_an_excerpt(sleeps: list[float]) -> None:
    r = rig(poisoned_by(1))
    r.dead.errors = [MessageSizeTooLargeError()]
    await r.batches.settle(BATCH, r.acks)
    assert [(item, excerpt) for item, _, excerpt in r.dead.calls] == [(BATCH[1], False), (BATCH[1], True)]
    assert all(isinstance(error, Poison) for _, error, _ in r.dead.calls)  # the record's error, not the size
    assert r.acks.calls == [BATCH]


@pytest.mark.asyncio
async def test_a_dead_letter_the_broker_refuses_for_its_size_goes_as_an_excerpt(sleeps: list[float]) -> None:
    r = rig(lambda batch, call: Poison("x"))
    original = r.dead.__call__

    async def dead(event: Any, error: BaseException, out: Checkpoint, *, excerpt: bool = False) -> None:
        if not excerpt:
            r.topic.errors = [MessageSizeTooLargeError()]  # the send's future fails at the flush
        await original(event, error, out, excerpt=excerpt)

    r.batches.dead_letter = dead
    await r.batches.settle([event(4)], r.acks)
    assert [excerpt for _, _, excerpt in r.dead.calls] == [False, True]
    assert r.acks.calls == [[event(4)]]


@pytest.mark.asyncio
async def test_a_dead_letter_that_keeps_failing_is_written_as_an_excerpt_after_record_tries(
        sleeps: list[float]) -> None:
    r = rig(poisoned_by(0))
    r.dead.errors = [Poison("letter")] * RECORD_TRIES
    await r.batches.settle([event(0)], r.acks)
    assert [excerpt for _, _, excerpt in r.dead.calls] == [False] * RECORD_TRIES + [True]
    assert r.acks.calls == [[event(0)]]


@pytest.mark.asyncio
async def test_a_dead_letter_waits_for_the_infrastructure_and_stays_whole(sleeps: list[float]) -> None:
    r = rig(poisoned_by(0))
    r.dead.errors = [KafkaConnectionError()] * 5
    await r.batches.settle([event(0)], r.acks)
    assert [excerpt for _, _, excerpt in r.dead.calls] == [False] * 6
    assert r.acks.calls == [[event(0)]]


@pytest.mark.asyncio
async def test_an_excerpt_that_fails_is_tried_again_as_an_excerpt(sleeps: list[float]) -> None:
    r = rig(poisoned_by(0))
    r.dead.errors = [MessageSizeTooLargeError(), Poison("a"), Poison("b")]
    await r.batches.settle([event(0)], r.acks)
    assert [excerpt for _, _, excerpt in r.dead.calls] == [False, True, True, True]
    assert r.acks.calls == [[event(0)]]


# --- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "infrastructure", "too_large"), [
    (DatabaseUnavailable("down"), True, False),
    (TargetUnavailable("open", retry_in=3.0), True, False),
    (KafkaError(), True, False),
    (KafkaConnectionError(), True, False),
    (KafkaTimeoutError(), True, False),
    (ConnectionError(), True, False),
    (ConnectionRefusedError(), True, False),
    (TimeoutError(), True, False),
    (TimeoutError(), True, False),
    (MessageSizeTooLargeError(), False, True),
    (RecordListTooLargeError(), False, True),
    (RecordTooLargeError(), False, True),
    (DatabaseRejected("NUL in a string"), False, False),
    (InvalidRecord("not JSON"), False, False),
    (RecordError("bad"), False, False),
    (ValueError(), False, False),
    (RuntimeError(), False, False),
    (KeyError("x"), False, False),
    (Exception(), False, False),
])
def test_error_classification(error: BaseException, infrastructure: bool, too_large: bool) -> None:
    assert is_infrastructure(error) is infrastructure
    assert is_too_large(error) is too_large


def test_describe_event_names_its_position() -> None:
    assert describe_event(event(9, partition=3)) == {"topic": "ingest.work", "partition": 3, "offset": 9}  # type: ignore[arg-type]


# --- run over a fake stream -----------------------------------------------------------------


STOP = object()


class FakeStream:
    """Events from a queue (STOP ends the stream), acked one by one."""

    def __init__(self) -> None:
        self.enable_acks = True
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.acked: list[Any] = []

    def put(self, *items: Any) -> None:
        for item in items:
            self.queue.put_nowait(item)

    async def events(self) -> AsyncIterator[Any]:
        while True:
            item = await self.queue.get()
            if item is STOP:
                return
            yield item

    async def ack(self, item: Any) -> None:
        self.acked.append(item)


class Recorded:
    """A handler that records each batch and can hold a batch in flight until released."""

    def __init__(self, hold: set[int] | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.hold = hold or set()
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.called = asyncio.Event()

    async def __call__(self, batch: Sequence[Any], out: Checkpoint) -> None:
        self.batches.append(list(batch))
        self.called.set()
        if any(e.message.offset in self.hold for e in batch):
            self.holding.set()
            await self.release.wait()


async def no_dead_letter(event: Any, error: BaseException, out: Checkpoint, *, excerpt: bool = False) -> None:
    raise AssertionError("no dead letter expected")


async def finish(task: asyncio.Task[None]) -> None:
    await asyncio.wait_for(task, timeout=2)


@pytest.mark.asyncio
async def test_run_handles_a_batch_and_acks_it_then_ends_with_the_stream(sleeps: list[float]) -> None:
    stream = FakeStream()
    handler = Recorded()
    batches = GuardedBatches("tests", handler, no_dead_letter, max_records=3, within=5.0)
    stream.put(event(0), event(1), event(2), STOP)
    await finish(asyncio.create_task(batches.run(stream)))  # type: ignore[arg-type]
    assert stream.enable_acks is False
    assert handler.batches == [[event(0), event(1), event(2)]]
    assert stream.acked == [event(0), event(1), event(2)]


@pytest.mark.asyncio
async def test_run_splits_events_into_batches_of_max_records(sleeps: list[float]) -> None:
    stream = FakeStream()
    handler = Recorded()
    batches = GuardedBatches("tests", handler, no_dead_letter, max_records=2, within=5.0)
    stream.put(*(event(o) for o in range(4)), STOP)
    await finish(asyncio.create_task(batches.run(stream)))  # type: ignore[arg-type]
    assert handler.batches == [[event(0), event(1)], [event(2), event(3)]]
    assert stream.acked == [event(o) for o in range(4)]


@pytest.mark.asyncio
async def test_run_handles_a_partial_batch_when_its_window_closes(sleeps: list[float]) -> None:
    stream = FakeStream()
    handler = Recorded()
    batches = GuardedBatches("tests", handler, no_dead_letter, max_records=100, within=0.01)
    task = asyncio.create_task(batches.run(stream))  # type: ignore[arg-type]
    stream.put(event(0))
    await asyncio.wait_for(handler.called.wait(), timeout=2)
    stream.put(STOP)
    await finish(task)
    assert handler.batches == [[event(0)]]
    assert stream.acked == [event(0)]


@pytest.mark.asyncio
async def test_a_batch_being_gathered_when_the_stream_ends_is_left_unacked(sleeps: list[float]) -> None:
    stream = FakeStream()
    handler = Recorded()
    batches = GuardedBatches("tests", handler, no_dead_letter, max_records=100, within=5.0)
    stream.put(event(0), STOP)
    await finish(asyncio.create_task(batches.run(stream)))  # type: ignore[arg-type]
    assert handler.batches == [] and stream.acked == []


@pytest.mark.asyncio
async def test_a_copy_delivered_in_the_same_batch_is_left_to_the_first(sleeps: list[float]) -> None:
    stream = FakeStream()
    handler = Recorded()
    batches = GuardedBatches("tests", handler, no_dead_letter, max_records=2, within=5.0)
    stream.put(event(0), event(0, copy=1), event(1), STOP)
    await finish(asyncio.create_task(batches.run(stream)))  # type: ignore[arg-type]
    assert handler.batches == [[event(0), event(1)]]
    assert handler.batches[0][0].copy == 0


@pytest.mark.asyncio
async def test_a_copy_delivered_while_the_first_is_in_flight_is_left_to_the_first(sleeps: list[float]) -> None:
    first, second = FakeStream(), FakeStream()  # two actors of one agent share the batches
    handler = Recorded(hold={5})
    batches = GuardedBatches("tests", handler, no_dead_letter, max_records=1, within=5.0)
    one = asyncio.create_task(batches.run(first))  # type: ignore[arg-type]
    first.put(event(5))
    await asyncio.wait_for(handler.holding.wait(), timeout=2)
    two = asyncio.create_task(batches.run(second))  # type: ignore[arg-type]
    second.put(event(5, copy=1), event(6), STOP)
    await finish(two)
    assert handler.batches == [[event(5)], [event(6)]]  # the copy never reached the handler
    # 6 is done, but faust would commit past 5 (AckOrder): its ack waits for 5's.
    assert second.acked == []
    handler.release.set()
    first.put(STOP)
    await finish(one)
    assert first.acked == [event(5)]
    assert second.acked == [event(6)]  # through the stream that processed it


@pytest.mark.asyncio
async def test_a_record_delivered_again_after_its_batch_settled_is_processed_again(sleeps: list[float]) -> None:
    stream = FakeStream()
    handler = Recorded()
    batches = GuardedBatches("tests", handler, no_dead_letter, max_records=1, within=5.0)
    stream.put(event(0), event(0, copy=1), STOP)
    await finish(asyncio.create_task(batches.run(stream)))  # type: ignore[arg-type]
    assert [b[0].copy for b in handler.batches] == [0, 1]


class FakeGuard:
    def __init__(self, refuse: set[int]) -> None:
        self.refuse = refuse
        self.asked: list[tuple[Any, int]] = []
        self.idle_checks = 0
        self.idle = asyncio.Event()

    async def admit(self, tp: Any, offset: int) -> bool:
        self.asked.append((tp, offset))
        return offset not in self.refuse

    async def check_idle(self) -> None:
        self.idle_checks += 1
        self.idle.set()


@pytest.mark.asyncio
async def test_run_leaves_out_records_the_guard_does_not_admit(sleeps: list[float]) -> None:
    stream = FakeStream()
    handler = Recorded()
    guard = FakeGuard(refuse={1})
    batches = GuardedBatches("tests", handler, no_dead_letter, max_records=2, within=5.0,
                             guard=guard)  # type: ignore[arg-type]
    stream.put(event(0), event(1), event(2), STOP)
    await finish(asyncio.create_task(batches.run(stream)))  # type: ignore[arg-type]
    assert guard.asked == [(TP("ingest.work", 0), 0), (TP("ingest.work", 0), 1), (TP("ingest.work", 0), 2)]
    assert handler.batches == [[event(0), event(2)]]
    assert stream.acked == [event(0), event(2)]


@pytest.mark.asyncio
async def test_an_idle_stream_asks_the_guard_to_look_for_drops(sleeps: list[float],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "IDLE_CHECK", 0.001)
    stream = FakeStream()
    guard = FakeGuard(refuse=set())
    batches = GuardedBatches("tests", Recorded(), no_dead_letter, max_records=2, within=5.0,
                             guard=guard)  # type: ignore[arg-type]
    task = asyncio.create_task(batches.run(stream))  # type: ignore[arg-type]
    await asyncio.wait_for(guard.idle.wait(), timeout=2)
    stream.put(STOP)
    await finish(task)
    assert guard.idle_checks >= 1


@pytest.mark.asyncio
async def test_cancelling_run_cancels_its_pending_read(sleeps: list[float]) -> None:
    stream = FakeStream()
    batches = GuardedBatches("tests", Recorded(), no_dead_letter, max_records=2, within=5.0)
    task = asyncio.create_task(batches.run(stream))  # type: ignore[arg-type]
    for _ in range(3):
        await REAL_SLEEP(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.acked == []
