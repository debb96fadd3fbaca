"""The one order a unit of work leaves in (streams.kafka.checkpoint): send, flush, then ack;
attempts whose sends are dropped when they fail; offsets that never go backwards."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import pytest

from streams.kafka.checkpoint import Checkpoint, Watermarks


class Input(NamedTuple):
    tp: Any
    offset: int


class Event(NamedTuple):
    """A faust-event-like input: the position is under `.message`."""

    message: Input


class Boom(Exception):
    pass


class FakeTopic:
    """`send` returns a future that the test resolves or fails (or that resolves at once)."""

    def __init__(self, events: list[tuple[str, Any]], *, auto: bool = True) -> None:
        self.events = events
        self.auto = auto
        self.futures: list[asyncio.Future[Any]] = []
        self.sent: list[tuple[bytes | None, bytes, Any]] = []

    async def send(self, *, key: bytes | None, value: bytes, headers: Any = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((key, value, headers))
        self.events.append(("sent", value))
        self.futures.append(future)
        if self.auto:
            self.resolve(len(self.futures) - 1)
        return future

    def resolve(self, index: int) -> None:
        future = self.futures[index]
        future.set_result(index)
        self.events.append(("resolved", self.sent[index][1]))

    def fail(self, index: int, error: BaseException | None = None) -> None:
        self.futures[index].set_exception(error or Boom("broker refused"))
        self.events.append(("failed", self.sent[index][1]))


class Recorder:
    """The ack and the extra flush, both recording into the shared event list."""

    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.events = events
        self.acks: list[list[Any]] = []
        self.flushes = 0

    async def ack(self, inputs: Sequence[Any]) -> None:
        self.acks.append(list(inputs))
        self.events.append(("acked", tuple(inputs)))

    async def flush(self) -> None:
        self.flushes += 1
        self.events.append(("flushed", None))


def setup(*, auto: bool = True, extra_flush: bool = False, watermarks: Watermarks | None = None
          ) -> tuple[Checkpoint, FakeTopic, Recorder, list[tuple[str, Any]]]:
    events: list[tuple[str, Any]] = []
    recorder = Recorder(events)
    topic = FakeTopic(events, auto=auto)
    checkpoint = Checkpoint(recorder.ack, flush=recorder.flush if extra_flush else None, watermarks=watermarks)
    return checkpoint, topic, recorder, events


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def kinds(events: list[tuple[str, Any]]) -> list[str]:
    return [kind for kind, _ in events]


INPUTS = [Input("t0", 0), Input("t0", 1), Input("t1", 7)]


# --- the order ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_commit_acks_the_inputs_once_after_every_send_is_on_the_broker() -> None:
    checkpoint, topic, recorder, events = setup(auto=False)
    for value in (b"a", b"b", b"c"):
        await checkpoint.send(topic, key=b"k", value=value)
    commit = asyncio.create_task(checkpoint.commit(INPUTS))
    await settle()
    assert recorder.acks == []  # nothing resolved yet
    topic.resolve(0)
    topic.resolve(2)
    await settle()
    assert recorder.acks == [] and not commit.done()  # one still pending
    topic.resolve(1)
    await commit
    assert recorder.acks == [INPUTS]
    assert kinds(events)[-1] == "acked"
    assert kinds(events).index("acked") > max(i for i, k in enumerate(kinds(events)) if k == "resolved")


@pytest.mark.asyncio
async def test_send_passes_key_value_and_headers_to_the_topic() -> None:
    checkpoint, topic, _, _ = setup()
    await checkpoint.send(topic, key=b"run:1", value=b"v", headers=[("x-attempt", b"2")])
    await checkpoint.send(topic, key=None, value=b"w")
    assert topic.sent == [(b"run:1", b"v", [("x-attempt", b"2")]), (None, b"w", None)]


@pytest.mark.asyncio
async def test_the_extra_flush_runs_after_the_sends_and_before_the_ack() -> None:
    checkpoint, topic, recorder, events = setup(extra_flush=True)
    await checkpoint.send(topic, key=None, value=b"a")
    await checkpoint.commit(INPUTS[:1])
    assert kinds(events) == ["sent", "resolved", "flushed", "acked"]
    assert recorder.flushes == 1


@pytest.mark.asyncio
async def test_the_extra_flush_waits_for_pending_sends() -> None:
    checkpoint, topic, recorder, events = setup(auto=False, extra_flush=True)
    await checkpoint.send(topic, key=None, value=b"a")
    flush = asyncio.create_task(checkpoint.flush())
    await settle()
    assert recorder.flushes == 0
    topic.resolve(0)
    await flush
    assert kinds(events) == ["sent", "resolved", "flushed"]


@pytest.mark.asyncio
async def test_a_failing_extra_flush_fails_the_commit_and_nothing_is_acked() -> None:
    events: list[tuple[str, Any]] = []
    recorder = Recorder(events)

    async def broken() -> None:
        raise Boom("mirror down")

    checkpoint = Checkpoint(recorder.ack, flush=broken)
    with pytest.raises(Boom):
        await checkpoint.commit(INPUTS)
    assert recorder.acks == []


@pytest.mark.asyncio
async def test_commit_of_nothing_acks_nothing_but_still_flushes() -> None:
    checkpoint, topic, recorder, events = setup(auto=False, extra_flush=True)
    await checkpoint.send(topic, key=None, value=b"a")
    commit = asyncio.create_task(checkpoint.commit([]))
    await settle()
    assert not commit.done()  # waits for the send
    topic.resolve(0)
    await commit
    assert recorder.acks == []
    assert recorder.flushes == 1
    assert kinds(events) == ["sent", "resolved", "flushed"]


@pytest.mark.asyncio
async def test_commit_without_any_send_acks_at_once() -> None:
    checkpoint, _, recorder, events = setup()
    await checkpoint.commit(INPUTS)
    assert recorder.acks == [INPUTS]
    assert kinds(events) == ["acked"]


@pytest.mark.asyncio
@pytest.mark.parametrize("failing", [0, 1, 2])
async def test_a_send_that_fails_makes_the_commit_raise_and_nothing_is_acked(failing: int) -> None:
    checkpoint, topic, recorder, _ = setup(auto=False)
    for value in (b"a", b"b", b"c"):
        await checkpoint.send(topic, key=None, value=value)
    for index in range(3):
        if index == failing:
            topic.fail(index)
        else:
            topic.resolve(index)
    with pytest.raises(Boom):
        await checkpoint.commit(INPUTS)
    assert recorder.acks == []


@pytest.mark.asyncio
async def test_a_send_that_fails_makes_flush_raise() -> None:
    checkpoint, topic, recorder, _ = setup(auto=False, extra_flush=True)
    await checkpoint.send(topic, key=None, value=b"a")
    topic.fail(0)
    with pytest.raises(Boom):
        await checkpoint.flush()
    assert recorder.flushes == 0  # the extra flush is not reached either


@pytest.mark.asyncio
async def test_commit_forgets_the_sends_it_flushed() -> None:
    checkpoint, topic, recorder, _ = setup()
    await checkpoint.send(topic, key=None, value=b"a")
    await checkpoint.send(topic, key=None, value=b"b")
    assert len(checkpoint) == 2
    await checkpoint.commit(INPUTS[:1])
    assert len(checkpoint) == 0
    await checkpoint.commit(INPUTS[1:2])
    assert recorder.acks == [INPUTS[:1], INPUTS[1:2]]


# --- attempts -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sends_of_a_successful_attempt_count() -> None:
    checkpoint, topic, recorder, _ = setup(auto=False)
    async with checkpoint.attempt() as inside:
        assert inside is checkpoint
        await checkpoint.send(topic, key=None, value=b"a")
        await checkpoint.send(topic, key=None, value=b"b")
        assert len(checkpoint) == 2
    assert len(checkpoint) == 2
    commit = asyncio.create_task(checkpoint.commit(INPUTS))
    await settle()
    assert recorder.acks == []  # the attempt's sends are awaited by the commit
    topic.resolve(0)
    topic.resolve(1)
    await commit
    assert recorder.acks == [INPUTS]


@pytest.mark.asyncio
async def test_an_attempt_that_raises_has_its_sends_awaited_and_dropped() -> None:
    checkpoint, topic, recorder, events = setup(auto=False)

    async def failing_attempt() -> None:
        async with checkpoint.attempt():
            await checkpoint.send(topic, key=None, value=b"dropped")
            raise Boom("handler failed")

    attempt = asyncio.create_task(failing_attempt())
    await settle()
    assert not attempt.done()  # its send is awaited before the error goes on
    topic.fail(0)  # even a failed send of a dropped attempt is harmless
    with pytest.raises(Boom, match="handler failed"):
        await attempt
    assert len(checkpoint) == 0
    await checkpoint.commit(INPUTS)  # not flushed again: the failed future does not fail the commit
    assert recorder.acks == [INPUTS]
    assert kinds(events) == ["sent", "failed", "acked"]


@pytest.mark.asyncio
async def test_a_cancelled_attempt_drops_its_sends_too() -> None:
    checkpoint, topic, _, _ = setup()
    with pytest.raises(asyncio.CancelledError):
        async with checkpoint.attempt():
            await checkpoint.send(topic, key=None, value=b"a")
            raise asyncio.CancelledError
    assert len(checkpoint) == 0


@pytest.mark.asyncio
async def test_sends_before_an_attempt_survive_its_failure() -> None:
    checkpoint, topic, recorder, _ = setup()
    await checkpoint.send(topic, key=None, value=b"kept")
    with pytest.raises(Boom):
        async with checkpoint.attempt():
            await checkpoint.send(topic, key=None, value=b"dropped")
            raise Boom
    assert len(checkpoint) == 1
    await checkpoint.commit(INPUTS)
    assert recorder.acks == [INPUTS]


@pytest.mark.asyncio
async def test_successive_attempts_keep_only_the_one_that_succeeded() -> None:
    checkpoint, topic, recorder, _ = setup(auto=False)
    for attempt in range(3):
        try:
            async with checkpoint.attempt():
                await checkpoint.send(topic, key=None, value=f"try{attempt}".encode())
                if attempt < 2:
                    topic.fail(attempt)  # the broker refuses: flush inside the attempt fails it
                    await checkpoint.flush()
        except Boom:
            continue
    assert len(checkpoint) == 1
    commit = asyncio.create_task(checkpoint.commit(INPUTS))
    await settle()
    assert recorder.acks == []  # waits for the send of the third attempt only
    topic.resolve(2)
    await commit
    assert recorder.acks == [INPUTS]


@pytest.mark.asyncio
async def test_flush_inside_an_attempt_waits_for_its_own_sends() -> None:
    checkpoint, topic, _, events = setup(auto=False)
    await checkpoint.send(topic, key=None, value=b"before")
    topic.resolve(0)

    async def run() -> None:
        async with checkpoint.attempt():
            await checkpoint.send(topic, key=None, value=b"inside")
            await checkpoint.flush()
            events.append(("after-flush", None))

    task = asyncio.create_task(run())
    await settle()
    assert ("after-flush", None) not in events
    topic.resolve(1)
    await task
    assert kinds(events)[-2:] == ["resolved", "after-flush"]


@pytest.mark.asyncio
async def test_a_nested_attempt_that_fails_leaves_the_outer_ones_sends() -> None:
    checkpoint, topic, recorder, _ = setup()
    async with checkpoint.attempt():
        await checkpoint.send(topic, key=None, value=b"outer")
        with pytest.raises(Boom):
            async with checkpoint.attempt():
                await checkpoint.send(topic, key=None, value=b"inner")
                assert len(checkpoint) == 1  # only the innermost attempt's sends are current
                raise Boom
        assert len(checkpoint) == 1
    assert len(checkpoint) == 1
    await checkpoint.commit(INPUTS)
    assert recorder.acks == [INPUTS]


@pytest.mark.asyncio
async def test_a_nested_attempt_that_succeeds_joins_the_outer_one() -> None:
    checkpoint, topic, _, _ = setup()
    async with checkpoint.attempt():
        await checkpoint.send(topic, key=None, value=b"outer")
        async with checkpoint.attempt():
            await checkpoint.send(topic, key=None, value=b"inner")
        assert len(checkpoint) == 2
    assert len(checkpoint) == 2


@pytest.mark.asyncio
async def test_an_outer_attempt_that_fails_drops_its_succeeded_inner_attempt_too() -> None:
    checkpoint, topic, recorder, _ = setup(auto=False)
    with pytest.raises(Boom):
        async with checkpoint.attempt():
            await checkpoint.send(topic, key=None, value=b"outer")
            async with checkpoint.attempt():
                await checkpoint.send(topic, key=None, value=b"inner")
            topic.resolve(0)
            topic.fail(1)
            raise Boom
    assert len(checkpoint) == 0
    await checkpoint.commit(INPUTS)  # the failed inner send was dropped with its outer attempt
    assert recorder.acks == [INPUTS]


@pytest.mark.asyncio
async def test_len_counts_kept_and_current_sends() -> None:
    checkpoint, topic, _, _ = setup()
    assert len(checkpoint) == 0
    await checkpoint.send(topic, key=None, value=b"a")
    async with checkpoint.attempt():
        await checkpoint.send(topic, key=None, value=b"b")
        await checkpoint.send(topic, key=None, value=b"c")
        assert len(checkpoint) == 3
    assert len(checkpoint) == 3


# --- positions never go backwards -------------------------------------------------------------


def forward(watermarks: Watermarks, inputs: Sequence[Input]) -> list[Any]:
    return watermarks.forward(inputs, lambda item: (item.tp, item.offset))


@pytest.mark.parametrize(
    ("acked", "inputs", "kept", "after"),
    [
        ({}, [Input("a", 5)], [Input("a", 5)], {"a": 5}),
        ({"a": 5}, [Input("a", 4)], [], {"a": 5}),
        ({"a": 5}, [Input("a", 5)], [Input("a", 5)], {"a": 5}),  # the same offset again is no step back
        ({"a": 5}, [Input("a", 6)], [Input("a", 6)], {"a": 6}),
        ({"a": 5}, [Input("b", 1)], [Input("b", 1)], {"a": 5, "b": 1}),  # partitions are independent
        ({"a": 5, "b": 9}, [Input("a", 7), Input("b", 3)], [Input("a", 7)], {"a": 7, "b": 9}),
        ({}, [Input("a", 8), Input("a", 3), Input("a", 9)], [Input("a", 8), Input("a", 9)], {"a": 9}),
        ({"a": 0}, [Input("a", 0), Input("a", 1)], [Input("a", 0), Input("a", 1)], {"a": 1}),
    ],
)
def test_forward_refuses_offsets_behind_the_highest_acked_of_their_partition(
        acked: dict[str, int], inputs: list[Input], kept: list[Input], after: dict[str, int]) -> None:
    watermarks = Watermarks(dict(acked))
    assert forward(watermarks, inputs) == kept
    assert watermarks.acked == after


def test_a_refused_offset_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    watermarks = Watermarks({"a": 10})
    with caplog.at_level(logging.WARNING, logger="streams.kafka.checkpoint"):
        assert forward(watermarks, [Input("a", 3)]) == []
    (record,) = caplog.records
    assert "behind" in record.getMessage()
    assert record.offset == 3 and record.acked == 10  # type: ignore[attr-defined]


def test_nothing_is_logged_when_every_offset_goes_forward(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streams.kafka.checkpoint"):
        forward(Watermarks(), [Input("a", 1), Input("a", 2)])
    assert caplog.records == []


def test_reset_forgets_every_partition() -> None:
    watermarks = Watermarks({"a": 10, "b": 3})
    watermarks.reset()
    assert watermarks.acked == {}
    assert forward(watermarks, [Input("a", 1)]) == [Input("a", 1)]


@pytest.mark.asyncio
async def test_commit_with_watermarks_acks_only_the_offsets_that_go_forward() -> None:
    watermarks = Watermarks()
    checkpoint, _, recorder, _ = setup(watermarks=watermarks)
    await checkpoint.commit([Input("a", 5), Input("b", 2)])
    await checkpoint.commit([Input("a", 4), Input("b", 3), Input("a", 6)])
    assert recorder.acks == [[Input("a", 5), Input("b", 2)], [Input("b", 3), Input("a", 6)]]
    assert watermarks.acked == {"a": 6, "b": 3}


@pytest.mark.asyncio
async def test_commit_with_only_refused_offsets_acks_nothing_but_flushes() -> None:
    watermarks = Watermarks({"a": 9})
    checkpoint, topic, recorder, events = setup(extra_flush=True, watermarks=watermarks)
    await checkpoint.send(topic, key=None, value=b"x")
    await checkpoint.commit([Input("a", 1), Input("a", 2)])
    assert recorder.acks == []
    assert kinds(events) == ["sent", "resolved", "flushed"]


@pytest.mark.asyncio
async def test_commit_reads_positions_of_faust_events_under_message() -> None:
    watermarks = Watermarks({"a": 5})
    checkpoint, _, recorder, _ = setup(watermarks=watermarks)
    events = [Event(Input("a", 4)), Event(Input("a", 6))]
    await checkpoint.commit(events)
    assert recorder.acks == [[events[1]]]
    assert watermarks.acked == {"a": 6}


@pytest.mark.asyncio
async def test_commit_uses_the_given_where() -> None:
    watermarks = Watermarks({("t", 0): 5})
    events: list[tuple[str, Any]] = []
    recorder = Recorder(events)
    checkpoint = Checkpoint(recorder.ack, watermarks=watermarks, where=lambda item: (("t", 0), item))
    await checkpoint.commit([3, 5, 8])
    assert recorder.acks == [[5, 8]]
    assert watermarks.acked == {("t", 0): 8}


@pytest.mark.asyncio
async def test_without_watermarks_every_input_is_acked_even_backwards() -> None:
    checkpoint, _, recorder, _ = setup()
    await checkpoint.commit([Input("a", 5)])
    await checkpoint.commit([Input("a", 1)])
    assert recorder.acks == [[Input("a", 5)], [Input("a", 1)]]


@pytest.mark.asyncio
async def test_a_failed_commit_leaves_the_watermarks_alone() -> None:
    watermarks = Watermarks({"a": 1})
    checkpoint, topic, recorder, _ = setup(auto=False, watermarks=watermarks)
    await checkpoint.send(topic, key=None, value=b"x")
    topic.fail(0)
    with pytest.raises(Boom):
        await checkpoint.commit([Input("a", 5)])
    assert watermarks.acked == {"a": 1}
    assert recorder.acks == []


# --- acknowledgements in offset order ------------------------------------------------------------

def test_an_ack_waits_for_every_earlier_open_offset_of_its_partition() -> None:
    from streams.kafka.checkpoint import AckOrder
    order = AckOrder()
    for offset in (5, 6, 7):
        order.opened("p0", offset)
    order.opened("p1", 0)
    assert order.done("p0", 6, "six") == []  # 5 is still being processed
    assert order.done("p1", 0, "other partition") == ["other partition"]
    assert order.done("p0", 7, "seven") == []
    assert order.held() == 2
    assert order.done("p0", 5, "five") == ["five", "six", "seven"]
    assert order.held() == 0
    assert order.done("p0", 9, "never opened") == ["never opened"]
    order.opened("p0", 8)
    assert order.done("p0", 8, "eight") == ["eight"]
