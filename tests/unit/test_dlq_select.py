"""Dead letters without Kafka: parsing, filters, ordering and limits, summaries, replay plans."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from streams.dlq.letters import DeadLetter, dead_letter
from streams.dlq.plan import Action, Destination, Marker, Skip, assign_ids, make_plan, outgoing
from streams.dlq.replay import ReplayOptions, _Pacer
from streams.dlq.select import (
    Filters,
    matches,
    parse_time,
    select,
    select_counting,
    selected_items,
    sorted_groups,
    summarize,
)
from streams.kafka import headers as h
from streams.kafka.topics import topic_names
from streams.records import RunEvent, WorkItem, WorkRecord
from streams.settings import Settings

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
HOUR_MS = 3_600_000
TOPICS = topic_names(Settings(retry_tiers="30s,5m"))


def _ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def work_letter(offset: int, *, run: str = "r1", batch: int = 0, types: tuple[str, ...] = ("dcim.site",),
                error_class: str = "permanent", http_status: int | None = 422, age_hours: float = 1,
                partition: int = 0, headers: dict[str, str] | None = None, attempt: int = 3,
                replay_id: str | None = None) -> DeadLetter:
    ids = _ids(len(types))
    items = tuple(WorkItem(i, t, {"name": f"n{i[:4]}"}) for i, t in zip(ids, types, strict=True))
    errors = {i: {"class": error_class, "message": "plan: invalid slug", "http_status": http_status}
              for i in ids}
    value = WorkRecord(run, batch, items, attempt, replay_id, errors).encode()
    text = {h.ERROR_CLASS: error_class, h.ERROR: "plan: invalid slug", h.RUN_ID: run, h.ATTEMPT: str(attempt),
            h.ORIGIN_TOPIC: TOPICS.work, h.ORIGIN_PARTITION: "1", h.ORIGIN_OFFSET: "7",
            h.FIRST_FAILED_AT: str(NOW_MS - 5 * HOUR_MS)}
    if http_status is not None:
        text[h.HTTP_STATUS] = str(http_status)
    text.update(headers or {})
    stamp = NOW_MS - int(age_hours * HOUR_MS)
    return dead_letter(TOPICS.dlq, partition, offset, stamp, f"{run}:{batch}".encode(),
                       [(k, v.encode()) for k, v in text.items()], value)


def ingest_letter(offset: int, value: bytes = b"\x00not json", *, error_class: str = "invalid",
                  origin: str | None = None, run: str | None = None, age_hours: float = 2) -> DeadLetter:
    text = {h.ERROR_CLASS: error_class, h.ERROR: "not JSON", h.ORIGIN_TOPIC: origin or TOPICS.ingest,
            h.ORIGIN_PARTITION: "0", h.ORIGIN_OFFSET: str(offset), h.ATTEMPT: "1"}
    if run:
        text[h.RUN_ID] = run
    return dead_letter(TOPICS.dlq, 1, offset, NOW_MS - int(age_hours * HOUR_MS), b"k",
                       [(k, v.encode()) for k, v in text.items()], value)


# --- parsing a dead letter --------------------------------------------------------------------

def test_a_work_record_is_parsed_with_its_headers() -> None:
    letter = work_letter(5, run="dc1", batch=3, types=("dcim.site", "dcim.device", "dcim.site"),
                         headers={h.REPLAY_ID: "abc"})
    assert letter.work is not None and len(letter.work.items) == 3
    assert (letter.run_id, letter.batch) == ("dc1", 3)
    assert (letter.error_class, letter.http_status) == ("permanent", 422)
    assert letter.object_types == ("dcim.device", "dcim.site")
    assert letter.entity_count == 3 and letter.entities_by_type() == {"dcim.site": 2, "dcim.device": 1}
    assert (letter.replay_id, letter.attempt, letter.origin_topic) == ("abc", 3, TOPICS.work)


def test_the_replay_id_and_run_fall_back_to_the_work_record() -> None:
    items = (WorkItem(_ids(1)[0], "ipam.prefix", {}),)
    value = WorkRecord("from-value", 1, items, replay_id="r-7").encode()
    letter = dead_letter("dlq", 0, 0, NOW_MS, None, None, value)
    assert (letter.run_id, letter.replay_id) == ("from-value", "r-7")
    assert (letter.error_class, letter.http_status) == (None, None)


@pytest.mark.parametrize("value, run, types, count", [
    (b"\xff\xfe not json at all", None, (), 0),
    (b"[1, 2]", None, (), 0),
    (orjson.dumps({"kind": "batch", "run_id": "raw-run", "batch": 0,
                   "entities": [{"object_type": "dcim.site"}, {"object_type": "dcim.rack"}, {"oops": 1}]}),
     "raw-run", ("dcim.rack", "dcim.site"), 3),
    (b"", None, (), 0),
])
def test_an_original_ingest_record_is_parsed_as_far_as_it_goes(value: bytes, run: str | None,
                                                                 types: tuple[str, ...], count: int) -> None:
    letter = ingest_letter(0, value)
    assert letter.work is None
    assert (letter.run_id, letter.object_types, letter.entity_count) == (run, types, count)
    assert letter.error_class == "invalid" and letter.value == value


# --- filters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("2h", NOW_MS - 2 * HOUR_MS),
    ("90m", NOW_MS - 90 * 60_000),
    ("2026-11-22T10:00:00Z", NOW_MS - 2 * HOUR_MS),
    ("2026-11-22T10:00:00", NOW_MS - 2 * HOUR_MS),  # no zone: UTC
    ("2026-11-22T11:00:00+01:00", NOW_MS - 2 * HOUR_MS),
    ("2026-11-22", NOW_MS - 12 * HOUR_MS),
])
def test_times_are_iso_8601_or_a_duration_ago(text: str, expected: int) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-2h", "2026-13-01", ""])
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time(text, NOW)


def test_each_filter_and_their_combination() -> None:
    site = work_letter(0, run="a", types=("dcim.site",), error_class="permanent", http_status=422,
                       age_hours=5)
    device = work_letter(1, run="b", types=("dcim.device", "dcim.site"), error_class="transient",
                         http_status=503, age_hours=1)
    no_status = work_letter(2, run="a", error_class="transient", http_status=None, age_hours=0.5)
    raw = ingest_letter(3)
    letters = [site, device, no_status, raw]

    def chosen(**kwargs: object) -> list[int]:
        return [letter.offset for letter in letters if matches(letter, Filters(**kwargs))]  # type: ignore[arg-type]

    assert chosen() == [0, 1, 2, 3]
    assert chosen(runs=("a",)) == [0, 2]
    assert chosen(runs=("a", "b")) == [0, 1, 2]
    assert chosen(error_classes=("transient",)) == [1, 2]
    assert chosen(error_classes=("invalid", "permanent")) == [0, 3]
    assert chosen(object_types=("dcim.device",)) == [1]
    assert chosen(object_types=("dcim.site",)) == [0, 1, 2]
    assert chosen(http_statuses=(503, 422)) == [0, 1]
    assert chosen(since=NOW_MS - 2 * HOUR_MS) == [1, 2, 3]  # since is inclusive: offset 3 is exactly 2h old
    assert chosen(until=NOW_MS - HOUR_MS) == [0, 3]  # until is exclusive: offset 1 is exactly 1h old
    assert chosen(runs=("a",), error_classes=("transient",), since=NOW_MS - HOUR_MS) == [2]
    assert chosen(runs=("nope",)) == []


def test_selection_is_oldest_first_and_limited() -> None:
    letters = [work_letter(offset, age_hours=age, partition=offset % 2)
               for offset, age in enumerate([3, 1, 5, 2, 5, 4])]
    assert [x.offset for x in select(letters, Filters())] == [2, 4, 5, 0, 3, 1]  # equal times: by partition
    assert [x.offset for x in select(letters, Filters(limit=2))] == [2, 4]
    chosen, matching = select_counting(iter(letters), Filters(limit=3, since=NOW_MS - 4 * HOUR_MS))
    assert [x.offset for x in chosen] == [5, 0, 3] and matching == 4


def test_an_object_type_filter_narrows_a_record_to_those_entities() -> None:
    letter = work_letter(0, types=("dcim.site", "dcim.device", "dcim.site"))
    def types(filters: Filters) -> list[str]:
        return [item.object_type for item in selected_items(letter, filters)]

    assert types(Filters()) == ["dcim.site", "dcim.device", "dcim.site"]
    assert types(Filters(object_types=("dcim.site",))) == ["dcim.site"] * 2
    assert selected_items(ingest_letter(1), Filters()) == ()


def test_filters_as_json_holds_only_what_is_set() -> None:
    assert Filters().as_json() == {}
    assert Filters(runs=("a",), http_statuses=(503,), since=NOW_MS, limit=5).as_json() == {
        "runs": ["a"], "http_statuses": [503], "since": "2026-11-22T12:00:00Z", "limit": 5}


# --- summaries --------------------------------------------------------------------------------

def test_summaries_count_records_and_entities_with_their_time_span() -> None:
    letters = [
        work_letter(0, run="a", types=("dcim.site", "dcim.site"), error_class="permanent", age_hours=3),
        work_letter(1, run="a", types=("dcim.device",), error_class="permanent", age_hours=1),
        work_letter(2, run="b", types=("dcim.site", "dcim.device"), error_class="transient", age_hours=2),
        ingest_letter(3, age_hours=10),
    ]
    summary = summarize(letters)
    assert (summary.total.records, summary.total.entities) == (4, 5)
    assert (summary.total.oldest, summary.total.newest) == (NOW_MS - 10 * HOUR_MS, NOW_MS - HOUR_MS)
    by_class_run = {key: (t.records, t.entities) for key, t in summary.by_class_and_run.items()}
    assert by_class_run == {("permanent", "a"): (2, 3), ("transient", "b"): (1, 2), ("invalid", None): (1, 0)}
    by_class = {key: tally.records for key, tally in summary.by_error_class.items()}
    assert by_class == {"permanent": 2, "transient": 1, "invalid": 1}
    by_type = {key: (t.records, t.entities) for key, t in summary.by_object_type.items()}
    assert by_type == {"dcim.site": (2, 3), "dcim.device": (2, 2)}
    site = summary.by_object_type["dcim.site"]
    assert (site.oldest, site.newest) == (NOW_MS - 3 * HOUR_MS, NOW_MS - 2 * HOUR_MS)
    assert [key for key, _ in sorted_groups(summary.by_class_and_run)] == [
        ("permanent", "a"), ("invalid", None), ("transient", "b")]
    assert summarize([]).total.records == 0


# --- replay plans -----------------------------------------------------------------------------

def _plan(letters: list[DeadLetter], filters: Filters = Filters(), markers: dict | None = None,  # noqa: B008
          *, again: bool = False):  # type: ignore[no-untyped-def]
    return make_plan(iter(letters), filters, markers or {}, destination=Destination.WORK, again=again,
                     ingest_topic=TOPICS.ingest)


REPLAY = "11111111-1111-1111-1111-111111111111"


def _marker(letter: DeadLetter, status: str, replay_id: str = REPLAY) -> Marker:
    assert letter.work is not None
    return Marker(letter.partition, letter.offset, replay_id, status, Destination.TIER,
                  (letter.work.items[0].id,))


def test_a_plan_skips_what_was_replayed_unless_again() -> None:
    old, new = work_letter(0, age_hours=2), work_letter(1)
    markers = {(0, 0): _marker(old, "sent")}
    plan = _plan([old, new], markers=markers)
    assert [a.letter.offset for a in plan.replay] == [1] and plan.matched == 2
    assert plan.skipped == {Skip.ALREADY_REPLAYED: 1}
    again = _plan([old, new], markers=markers, again=True)
    assert [a.letter.offset for a in again.replay] == [0, 1] and not again.skipped


def test_a_pending_marker_is_resent_whatever_the_filters() -> None:
    pending = work_letter(0, run="other", types=("dcim.site", "dcim.rack"))
    marker = _marker(pending, "pending")
    plan = _plan([pending, work_letter(1, run="mine")], Filters(runs=("mine",)), {(0, 0): marker}, again=True)
    assert [a.letter.offset for a in plan.replay] == [1]
    [resend] = plan.resend
    assert (resend.replay_id, resend.destination, resend.entity_ids) == (
        marker.replay_id, Destination.TIER, marker.entity_ids)
    assert plan.matched == 1 and plan.lost == []


def test_a_pending_marker_whose_record_is_gone_is_reported() -> None:
    gone = work_letter(9)
    plan = _plan([], markers={(0, 9): _marker(gone, "pending"), (0, 8): _marker(gone, "sent")})
    assert [(m.partition, m.offset) for m in plan.lost] == [(0, 9)]


def test_ingest_records_need_their_error_class_named() -> None:
    letters = [work_letter(0), ingest_letter(1), ingest_letter(2, b"{}", origin=TOPICS.work),
               ingest_letter(3, error_class="permanent")]
    plan = _plan(letters)
    assert [a.letter.offset for a in plan.replay] == [0]
    assert plan.skipped == {Skip.INGEST_NOT_SELECTED: 2, Skip.UNREADABLE: 1}
    chosen = _plan(letters, Filters(error_classes=("invalid",)))
    assert [(a.letter.offset, a.destination) for a in chosen.replay] == [(1, Destination.INGEST)]
    assert chosen.skipped == {Skip.UNREADABLE: 1} and chosen.matched == 2


def test_the_limit_applies_to_what_is_left_to_replay() -> None:
    letters = [work_letter(offset, age_hours=10 - offset) for offset in range(5)]
    markers = {(0, 0): _marker(letters[0], "sent")}
    plan = _plan(letters, Filters(limit=2), markers)
    assert [a.letter.offset for a in plan.replay] == [1, 2]
    assert plan.skipped == {Skip.ALREADY_REPLAYED: 1, Skip.LIMIT: 2} and plan.matched == 5


def test_a_work_record_with_ids_that_are_not_uuids_is_not_replayed() -> None:
    value = WorkRecord("r", 0, (WorkItem("not-a-uuid", "dcim.site", {}),)).encode()
    letter = dead_letter(TOPICS.dlq, 0, 0, NOW_MS, None, [(h.ERROR_CLASS, b"permanent")], value)
    assert _plan([letter]).skipped == {Skip.UNREADABLE: 1}


def test_an_entity_held_by_two_dead_letters_is_requeued_once() -> None:
    first, second = work_letter(0), work_letter(1)
    shared = first.work.items[0].id  # type: ignore[union-attr]
    actions = [Action(first, Destination.WORK, (shared,)), Action(second, Destination.WORK, (shared, "x"))]
    assert assign_ids(actions, {shared, "x"}) == [(shared,), ("x",)]
    assert assign_ids(actions, set()) == [(), ()]


# --- the records a replay sends ---------------------------------------------------------------

def test_to_work_a_fresh_record_with_the_replay_id() -> None:
    letter = work_letter(4, run="dc1", batch=2, types=("dcim.site", "dcim.device"), attempt=3,
                         headers={h.REPLAY_ID: "old"}, partition=1)
    wanted = [letter.work.items[1].id]  # type: ignore[union-attr]
    out = outgoing(Action(letter, Destination.WORK, tuple(wanted)), wanted, replay_id="new", topics=TOPICS,
                   first_tier_delay=30, now_ms=NOW_MS, budget=1_000_000)[0]
    record = WorkRecord.decode(out.value)
    assert (out.topic, out.key, out.headers) == (TOPICS.work, b"dc1:2", [(h.REPLAY_ID, b"new")])
    assert (record.run_id, record.batch, record.attempt) == ("dc1", 2, 1)
    assert (record.replay_id, record.errors) == ("new", {})
    # Its own id: the dead letter's, and the replay's (two dead letters of a batch stay two records).
    assert [i.id for i in record.items] == wanted and record.work_id == f"{letter.work.work_id}+rnew"  # type: ignore[union-attr]
    counts = {"requeued": 1, "retry_in": 0}
    assert out.event == RunEvent("entities_requeued", "requeued:new:1:4", "dc1", 2, counts)


def test_to_the_first_tier_the_failure_headers_with_a_due_time() -> None:
    letter = work_letter(4, run="dc1", types=("dcim.site", "dcim.device"), attempt=3, error_class="transient",
                         http_status=503, headers={h.REPLAY_ID: "old"})
    ids = [i.id for i in letter.work.items]  # type: ignore[union-attr]
    out = outgoing(Action(letter, Destination.TIER, tuple(ids)), ids, replay_id="new", topics=TOPICS,
                   first_tier_delay=30, now_ms=NOW_MS, budget=1_000_000)[0]
    sent = h.decode(out.headers)
    assert out.topic == TOPICS.retry[0] == "ingest.retry.30s"
    assert sent[h.REPLAY_ID] == "new" and sent[h.DUE_AT] == str(NOW_MS + 30_000)
    assert sent[h.ATTEMPT] == "3" and sent[h.ERROR_CLASS] == "transient" and sent[h.HTTP_STATUS] == "503"
    assert sent[h.ORIGIN_TOPIC] == TOPICS.work and sent[h.FIRST_FAILED_AT] == str(NOW_MS - 5 * HOUR_MS)
    assert sent[h.RUN_ID] == "dc1" and len(out.headers) == len(sent)  # one value per header
    record = WorkRecord.decode(out.value)
    assert record.attempt == 3 and record.replay_id == "new" and set(record.errors) == set(ids)
    assert out.event is not None and out.event.counts == {"requeued": 2, "retry_in": 2}


def test_an_ingest_record_goes_back_as_it_was() -> None:
    letter = ingest_letter(3, b"\x00raw")
    out = outgoing(Action(letter, Destination.INGEST, ()), (), replay_id="new", topics=TOPICS,
                   first_tier_delay=30, now_ms=NOW_MS, budget=1_000_000)[0]
    assert (out.topic, out.key, out.value, out.headers, out.event) == (
        TOPICS.ingest, b"k", b"\x00raw", [(h.REPLAY_ID, b"new")], None)


def test_options_and_pacing() -> None:
    with pytest.raises(ValueError):
        ReplayOptions(rate=0, requested_by="me")
    with pytest.raises(ValueError):
        ReplayOptions(destination=Destination.INGEST, requested_by="me")
    assert ReplayOptions(requested_by="me").chunk == 100
    assert ReplayOptions(rate=5, requested_by="me").chunk == 5
    assert ReplayOptions(rate=0.2, requested_by="me").chunk == 1
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 3))
        now[0] += seconds

    pacer = _Pacer(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        pacer.wait()
    assert slept == [0.25, 0.25, 0.25, 0.25]
    free = _Pacer(None, clock=lambda: now[0], sleep=sleep)
    free.wait()
    assert len(slept) == 4
