"""Headers of retry and dead-letter records (streams.kafka.headers) and the backoff between
tries of work that must not be skipped (streams.backoff)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from streams import backoff
from streams.backoff import BASE, CAP, delay, until_done
from streams.kafka import headers
from streams.kafka.headers import EXCERPT_BYTES, EXCERPT_OF, Origin, bounded, cap, decode, failure_headers
from streams.pipeline.outcomes import MAX_ERROR_TEXT, ErrorClass

ORIGIN = Origin("ingest.work", 3, 42)
NOW = 1_700_000_000_000

# --- decode ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    (None, {}),
    ([], {}),
    ({}, {}),
    ([("x-attempt", b"2")], {"x-attempt": "2"}),
    ({"x-attempt": b"2", "x-run-id": b"r"}, {"x-attempt": "2", "x-run-id": "r"}),
    ([("a", b"1"), ("b", b"2"), ("a", b"3")], {"a": "3", "b": "2"}),  # the last value wins
    ([("a", None)], {"a": ""}),
    ([("a", b"")], {"a": ""}),
    ([("e", "é".encode())], {"e": "é"}),
    ([("bad", b"\xff\xfe")], {"bad": "\ufffd\ufffd"}),
    ((("t", b"v"),), {"t": "v"}),
])
def test_decode(given: Any, expected: dict[str, str]) -> None:
    assert decode(given) == expected


# --- cap ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "short", "x" * MAX_ERROR_TEXT, "é" * (MAX_ERROR_TEXT // 2)])
def test_text_within_the_cap_is_kept(text: str) -> None:
    assert cap(text) == text


@pytest.mark.parametrize(("text", "kept"), [
    ("x" * (MAX_ERROR_TEXT + 1), "x" * MAX_ERROR_TEXT),
    ("x" * 5000, "x" * MAX_ERROR_TEXT),
    ("x" * (MAX_ERROR_TEXT - 1) + "é", "x" * (MAX_ERROR_TEXT - 1)),  # a 2-byte char across the cap: dropped
    ("é" * MAX_ERROR_TEXT, "é" * (MAX_ERROR_TEXT // 2)),
    ("x" + "€" * 500, "x" + "€" * 341),  # 3-byte chars: 1 + 3 * 341 = 1024
    ("xx" + "😀" * 300, "xx" + "😀" * 255),  # 4-byte chars: 2 + 4 * 255 = 1022
])
def test_longer_text_is_cut_at_1_kib_on_a_utf8_boundary(text: str, kept: str) -> None:
    capped = cap(text)
    assert capped == kept
    assert len(capped.encode("utf-8")) <= MAX_ERROR_TEXT


# --- failure_headers ------------------------------------------------------------------------


def hop(incoming: dict[str, str] | None = None, **kwargs: Any) -> list[tuple[str, bytes]]:
    arguments: dict[str, Any] = {"origin": ORIGIN, "attempt": 2, "error_class": ErrorClass.TRANSIENT,
                                 "error": "target answered 503", "now_ms": NOW, **kwargs}
    return failure_headers(incoming or {}, **arguments)


def test_the_first_failure_gets_the_base_set() -> None:
    assert decode(hop()) == {
        headers.ATTEMPT: "2",
        headers.FIRST_FAILED_AT: str(NOW),
        headers.ERROR_CLASS: "transient",
        headers.ERROR: "target answered 503",
        headers.ORIGIN_TOPIC: "ingest.work",
        headers.ORIGIN_PARTITION: "3",
        headers.ORIGIN_OFFSET: "42",
    }


def test_every_value_is_utf8_bytes_and_each_header_appears_once() -> None:
    made = hop(run_id="r", http_status=503, due_at_ms=NOW + 1, incoming={headers.REPLAY_ID: "rp"})
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in made)
    keys = [k for k, _ in made]
    assert len(keys) == len(set(keys))
    assert set(keys) <= set(headers.OURS)


def test_a_later_hop_keeps_the_first_failure_time_and_the_origin() -> None:
    incoming = decode(hop(now_ms=NOW))
    incoming[headers.ATTEMPT] = "2"
    again = decode(hop(incoming, origin=Origin("retry.30s", 0, 7), attempt=3, now_ms=NOW + 30_000,
                       error_class=ErrorClass.PERMANENT, error="refused"))
    assert again[headers.FIRST_FAILED_AT] == str(NOW)
    assert (again[headers.ORIGIN_TOPIC], again[headers.ORIGIN_PARTITION], again[headers.ORIGIN_OFFSET]) == (
        "ingest.work", "3", "42")
    assert again[headers.ATTEMPT] == "3"  # replaced, not appended
    assert again[headers.ERROR_CLASS] == "permanent"
    assert again[headers.ERROR] == "refused"


def test_values_not_ours_are_not_carried_over() -> None:
    assert "x-custom" not in decode(hop({"x-custom": "v", headers.EXCERPT_OF: "99"}))
    assert headers.EXCERPT_OF not in decode(hop({headers.EXCERPT_OF: "99"}))


def test_headers_of_an_earlier_hop_are_replaced_when_not_given_again() -> None:
    incoming = decode(hop(run_id="r", http_status=503, due_at_ms=NOW))
    again = decode(hop(incoming))
    assert headers.DUE_AT not in again
    assert headers.HTTP_STATUS not in again
    assert headers.RUN_ID not in again


@pytest.mark.parametrize(("kwargs", "header", "value"), [
    ({"due_at_ms": NOW + 30_000}, headers.DUE_AT, str(NOW + 30_000)),
    ({"due_at_ms": 0}, headers.DUE_AT, "0"),
    ({"http_status": 429}, headers.HTTP_STATUS, "429"),
    ({"run_id": "run-9"}, headers.RUN_ID, "run-9"),
    ({"run_id": ""}, headers.RUN_ID, ""),
])
def test_optional_headers_are_set_only_when_given(kwargs: dict[str, Any], header: str, value: str) -> None:
    assert decode(hop(**kwargs))[header] == value
    assert header not in decode(hop())


def test_the_replay_id_is_kept_from_the_incoming_headers() -> None:
    assert decode(hop({headers.REPLAY_ID: "rp-1"}))[headers.REPLAY_ID] == "rp-1"
    assert headers.REPLAY_ID not in decode(hop())


def test_the_error_is_capped() -> None:
    made = decode(hop(error="é" * 2000))
    assert made[headers.ERROR] == "é" * (MAX_ERROR_TEXT // 2)


@pytest.mark.parametrize("error_class", list(ErrorClass))
def test_the_error_class_is_its_value(error_class: ErrorClass) -> None:
    assert decode(hop(error_class=error_class))[headers.ERROR_CLASS] == error_class.value


# --- bounded --------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "limit"), [(0, 0), (10, 10), (10, 100), (EXCERPT_BYTES * 3, EXCERPT_BYTES * 3)])
def test_a_record_within_the_limit_is_kept_whole(size: int, limit: int) -> None:
    value = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    assert bounded(value, limit) == (value, [])


def test_a_missing_value_is_empty() -> None:
    assert bounded(None, 10) == (b"", [])


@pytest.mark.parametrize(("size", "limit"), [(11, 10), (EXCERPT_BYTES - 1, 100), (EXCERPT_BYTES * 2, 1000)])
def test_an_excerpt_is_shorter_than_the_limit_and_the_record(size: int, limit: int) -> None:
    value = bytes(range(256)) * (size // 256 + 1)
    excerpt, extra = bounded(value[:size], limit)
    assert len(excerpt) <= limit < size
    assert excerpt == value[:len(excerpt)]
    assert extra == [(EXCERPT_OF, str(size).encode())]


@pytest.mark.parametrize(("size", "limit", "kept"), [
    (EXCERPT_BYTES + 1, EXCERPT_BYTES, EXCERPT_BYTES),
    (100_000, 50_000, EXCERPT_BYTES),
    (2_000_000, 1_048_576, EXCERPT_BYTES),
])
def test_a_larger_record_is_cut_to_an_excerpt_with_its_length(size: int, limit: int, kept: int) -> None:
    value = b"".join(i.to_bytes(4, "big") for i in range(size // 4 + 1))[:size]
    excerpt, extra = bounded(value, limit)
    assert excerpt == value[:kept]
    assert extra == [(EXCERPT_OF, str(size).encode())]


# --- backoff.delay --------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "step"), [
    (-3, BASE), (0, BASE), (1, BASE * 2), (2, BASE * 4), (5, BASE * 32), (7, min(CAP, BASE * 128)),
    (8, CAP), (16, CAP), (17, CAP), (10_000, CAP),
])
@pytest.mark.parametrize("jitter", [0.5, 0.75, 1.0])
def test_delay_is_the_exponential_step_capped_times_the_jitter(
        monkeypatch: pytest.MonkeyPatch, attempt: int, step: float, jitter: float) -> None:
    monkeypatch.setattr(backoff.random, "uniform", lambda low, high: jitter if (low, high) == (0.5, 1.0) else -1)
    assert delay(attempt) == pytest.approx(step * jitter)


def test_delay_never_exceeds_the_cap_and_is_at_least_half_the_step() -> None:
    for attempt in range(0, 40):
        step = min(CAP, BASE * 2 ** min(attempt, 16))
        for _ in range(20):
            wait = delay(attempt)
            assert step * 0.5 <= wait <= step <= CAP


@pytest.mark.parametrize(("attempt", "base", "cap_", "step"), [(3, 1.0, 100.0, 8.0), (3, 1.0, 5.0, 5.0),
                                                                (0, 0.5, 10.0, 0.5)])
def test_delay_with_its_own_base_and_cap(monkeypatch: pytest.MonkeyPatch, attempt: int, base: float, cap_: float,
                                         step: float) -> None:
    monkeypatch.setattr(backoff.random, "uniform", lambda low, high: high)
    assert delay(attempt, base=base, cap=cap_) == pytest.approx(step)


# --- backoff.until_done ---------------------------------------------------------------------


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Sleeps:
    fake = Sleeps()
    monkeypatch.setattr(backoff.asyncio, "sleep", fake)
    return fake


def failing(times: int, error: type[BaseException] = RuntimeError, result: Any = "done") -> Any:
    calls = {"n": 0}

    async def operation() -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error(f"failure {calls['n']}")
        return result

    operation.calls = calls  # type: ignore[attr-defined]
    return operation


def test_until_done_returns_at_once_when_nothing_fails(sleeps: Sleeps) -> None:
    operation = failing(0, result=42)
    assert asyncio.run(until_done(operation, what="count")) == 42
    assert operation.calls["n"] == 1
    assert sleeps.waits == []


@pytest.mark.parametrize("times", [1, 3, 20])
def test_until_done_retries_until_the_operation_returns(sleeps: Sleeps, times: int) -> None:
    operation = failing(times)
    assert asyncio.run(until_done(operation, what="mirror")) == "done"
    assert operation.calls["n"] == times + 1
    assert len(sleeps.waits) == times
    for attempt, wait in enumerate(sleeps.waits, start=1):
        step = min(CAP, BASE * 2 ** attempt)
        assert step * 0.5 <= wait <= step


def test_until_done_keeps_its_waits_under_its_cap(sleeps: Sleeps) -> None:
    asyncio.run(until_done(failing(12), what="x", cap=2.0))
    assert max(sleeps.waits) <= 2.0


def test_until_done_logs_each_failure_with_context(sleeps: Sleeps, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="streams.backoff"):
        asyncio.run(until_done(failing(3, ValueError), what="the run mirror", extra={"run": "r1"},
                               level=logging.INFO))
    assert [r.getMessage() for r in caplog.records] == ["the run mirror failed; trying again"] * 3
    assert [r.attempt for r in caplog.records] == [1, 2, 3]  # type: ignore[attr-defined]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    assert all(r.run == "r1" and r.error == "ValueError" for r in caplog.records)  # type: ignore[attr-defined]
    assert [r.detail for r in caplog.records] == ["failure 1", "failure 2", "failure 3"]  # type: ignore[attr-defined]
    assert caplog.records[0].exc_info is not None  # the traceback once, on the first failure
    assert all(not r.exc_info for r in caplog.records[1:])


def test_until_done_logs_at_warning_by_default(sleeps: Sleeps, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streams.backoff"):
        asyncio.run(until_done(failing(1), what="x"))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_until_done_reraises_cancellation(sleeps: Sleeps) -> None:
    operation = failing(5, asyncio.CancelledError)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(until_done(operation, what="x"))
    assert operation.calls["n"] == 1
    assert sleeps.waits == []


def test_until_done_can_be_cancelled_while_it_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> int:
        gate = asyncio.Event()

        async def blocked(_: float) -> None:
            gate.set()
            await asyncio.Event().wait()  # never set: only cancellation ends this wait

        monkeypatch.setattr(backoff.asyncio, "sleep", blocked)
        operation = failing(1)
        task = asyncio.ensure_future(until_done(operation, what="x"))
        await gate.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(operation.calls["n"])

    assert asyncio.run(main()) == 1
