"""The ingest agent's pure logic (streams.pipeline.ingest): decoding an `ingest` record, hashing
a batch, planning a chunk of batches into rows, duplicates and work records, and row ids."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest

from streams.errors import InvalidRecord
from streams.models import IngestBatch, Seal, parse_ingest_record
from streams.pipeline.hashing import entity_hash
from streams.pipeline.ingest import HashedBatch, Source, decode, hash_batch, new_id, plan_chunk
from streams.records import WorkItem

LIMIT = 1_048_576


def batch_dict(run: str = "run-1", number: int = 0, *entities: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"kind": "batch", "run_id": run, "batch": number, "request_id": f"req-{number}",
            "entities": list(entities) or [site("dc1")], **extra}


def site(name: str, **fields: Any) -> dict[str, Any]:
    return {"object_type": "dcim.site", "entity": {"site": {"name": name, **fields}}}


def raw(data: Any) -> bytes:
    return orjson.dumps(data)


# --- decode -----------------------------------------------------------------------------------


def test_a_record_without_a_value_is_invalid() -> None:
    with pytest.raises(InvalidRecord, match="no value") as caught:
        decode(None, LIMIT)
    assert caught.value.error_class == "invalid"


@pytest.mark.parametrize(("size", "limit", "ok"), [(200, 200, True), (201, 200, False), (200, 199, False)])
def test_a_record_over_the_limit_is_invalid(size: int, limit: int, ok: bool) -> None:
    data = raw(batch_dict())
    value = data + b" " * (size - len(data))  # trailing whitespace keeps it JSON
    assert len(value) == size
    if ok:
        assert isinstance(decode(value, limit), IngestBatch)
    else:
        with pytest.raises(InvalidRecord, match=f"record is {size} bytes, above the limit of {limit}"):
            decode(value, limit)


@pytest.mark.parametrize("value", [b"", b"{", b"not json", b"\xff\xfe", b'{"kind": "batch",}'])
def test_a_record_that_is_not_json_is_invalid(value: bytes) -> None:
    with pytest.raises(InvalidRecord, match=r"^not valid JSON: "):
        decode(value, LIMIT)


@pytest.mark.parametrize("value", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_invalid(value: bytes) -> None:
    with pytest.raises(InvalidRecord, match=r"^not a JSON object$"):
        decode(value, LIMIT)


@pytest.mark.parametrize(("data", "where"), [
    ({"kind": "nope", "run_id": "r"}, "record"),
    ({"run_id": "r"}, "record"),
    ({**batch_dict(), "run_id": "has space"}, "batch.run_id"),
    ({**batch_dict(), "batch": "1"}, "batch.batch"),
    ({**batch_dict(), "batch": -1}, "batch.batch"),
    ({**batch_dict(), "entities": []}, "batch.entities"),
    ({**batch_dict(), "unknown": 1}, "batch.unknown"),
    (batch_dict("r", 0, {"object_type": "Bad Type", "entity": {"site": {}}}), "batch.entities.0.object_type"),
    ({"kind": "seal", "run_id": "r", "batches": True}, "seal.batches"),
])
def test_a_schema_failure_names_where_it_is(data: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        decode(raw(data), LIMIT)
    assert str(caught.value).startswith(f"fails the schema at {where}: ")
    assert caught.value.reason == str(caught.value)


def test_a_schema_failure_with_several_errors_says_how_many_more() -> None:
    data = {**batch_dict(), "batch": "1", "request_id": "", "extra": 1}
    with pytest.raises(InvalidRecord, match=r"\(and 2 more\)$"):
        decode(raw(data), LIMIT)


def test_a_single_schema_failure_has_no_more_suffix() -> None:
    with pytest.raises(InvalidRecord) as caught:
        decode(raw({**batch_dict(), "batch": -1}), LIMIT)
    assert "more)" not in str(caught.value)


def test_a_valid_batch_decodes() -> None:
    batch = decode(raw(batch_dict("run-1", 7, site("a"), site("b"), producer={"app_name": "x"})), LIMIT)
    assert isinstance(batch, IngestBatch)
    assert (batch.run_id, batch.batch, batch.request_id) == ("run-1", 7, "req-7")
    assert [e.entity for e in batch.entities] == [{"site": {"name": "a"}}, {"site": {"name": "b"}}]
    assert batch.producer is not None and batch.producer.app_name == "x"


def test_a_valid_seal_decodes() -> None:
    seal = decode(raw({"kind": "seal", "run_id": "run-1", "batches": 3}), LIMIT)
    assert isinstance(seal, Seal)
    assert (seal.run_id, seal.batches) == ("run-1", 3)


def test_a_flat_entity_is_wrapped_to_the_diode_shape() -> None:
    batch = decode(raw(batch_dict("r", 0, {"object_type": "dcim.site", "entity": {"name": "dc1", "slug": "dc1"}})),
                   LIMIT)
    assert isinstance(batch, IngestBatch)
    assert batch.entities[0].entity == {"site": {"name": "dc1", "slug": "dc1"}}


def test_a_flat_entity_of_an_unknown_type_is_refused_with_its_reason() -> None:
    data = batch_dict("r", 0, {"object_type": "custom.thing", "entity": {"name": "x", "slug": "y"}})
    with pytest.raises(InvalidRecord) as caught:
        decode(raw(data), LIMIT)
    message = str(caught.value)
    assert message.startswith("fails the schema at batch.entities.0.entity: ")
    assert "'custom.thing' is not one this version knows" in message
    assert "Value error" not in message


# --- hash_batch -------------------------------------------------------------------------------


def hashed(run: str, number: int, *entities: dict[str, Any], offset: int = 0) -> HashedBatch:
    batch = parse_ingest_record(batch_dict(run, number, *entities))
    assert isinstance(batch, IngestBatch)
    return hash_batch(batch, Source("ingest", 3, offset))


def test_hash_batch_hashes_each_entity_in_order_and_keeps_its_source() -> None:
    result = hashed("r", 2, site("a"), site("b"), offset=11)
    assert result.hashes == (entity_hash("dcim.site", {"site": {"name": "a"}}),
                             entity_hash("dcim.site", {"site": {"name": "b"}}))
    assert all(len(h) == 32 for h in result.hashes)
    assert result.source == Source("ingest", 3, 11)
    assert result.key == ("r", 2)


def test_hash_batch_ignores_metadata_so_equal_entities_hash_equal() -> None:
    result = hashed("r", 0, site("a", metadata={"seen": 1}), site("a", metadata={"seen": 2}), site("a"))
    assert len(set(result.hashes)) == 1


# --- plan_chunk -------------------------------------------------------------------------------


def test_every_new_entity_becomes_a_row_and_a_work_item() -> None:
    plan = plan_chunk([hashed("r", 0, site("a"), site("b"), offset=5)], {})
    assert len(plan.rows) == 2
    assert plan.duplicate_counts == {}
    assert plan.batch_counts == {("r", 0): (2, 0)}
    (work,) = plan.work
    assert (work.run_id, work.batch, work.attempt) == ("r", 0, 1)
    assert [(i.object_type, i.entity) for i in work.items] == [
        ("dcim.site", {"site": {"name": "a"}}), ("dcim.site", {"site": {"name": "b"}})]
    assert [i.id for i in work.items] == [str(r[0]) for r in plan.rows]


def test_rows_carry_their_batch_and_source() -> None:
    chunk = hashed("run-7", 4, site("a"), offset=99)
    plan = plan_chunk([chunk], {})
    (row,) = plan.rows
    row_id, request_id, run_id, number, object_type, entity, digest, topic, partition, offset = row
    assert isinstance(row_id, uuid.UUID)
    assert (request_id, run_id, number, object_type) == ("req-4", "run-7", 4, "dcim.site")
    assert entity == {"site": {"name": "a"}}
    assert digest == chunk.hashes[0]
    assert (topic, partition, offset) == ("ingest", 3, 99)


def test_within_a_chunk_later_occurrences_are_duplicates_of_the_first() -> None:
    plan = plan_chunk([hashed("r", 0, site("a"), site("b"), site("a")), hashed("r", 1, site("a"), site("c"))], {})
    first_a = plan.rows[0][0]
    assert [r[5] for r in plan.rows] == [{"site": {"name": n}} for n in ("a", "b", "c")]
    assert plan.duplicate_counts == {first_a: 2}
    assert plan.batch_counts == {("r", 0): (2, 1), ("r", 1): (1, 1)}
    assert [[i.entity["site"]["name"] for i in w.items] for w in plan.work] == [["a", "b"], ["c"]]


def test_the_first_occurrence_in_record_order_is_the_new_one() -> None:
    plan = plan_chunk([hashed("r", 5, site("x")), hashed("r", 1, site("x"))], {})
    assert [(r[3], r[5]) for r in plan.rows] == [(5, {"site": {"name": "x"}})]
    assert plan.batch_counts == {("r", 5): (1, 0), ("r", 1): (0, 1)}


def test_hashes_that_exist_already_count_as_duplicates_of_that_row() -> None:
    known = uuid.uuid4()
    chunk = hashed("r", 0, site("a"), site("b"), site("a"))
    plan = plan_chunk([chunk], {chunk.hashes[0]: known})
    assert [r[5] for r in plan.rows] == [{"site": {"name": "b"}}]
    assert plan.duplicate_counts == {known: 2}
    assert plan.batch_counts == {("r", 0): (1, 2)}


def test_a_batch_of_only_duplicates_gets_counts_but_no_work_record() -> None:
    known = uuid.uuid4()
    first = hashed("r", 0, site("a"))
    plan = plan_chunk([first, hashed("r", 1, site("a"), site("a"))], {first.hashes[0]: known})
    assert plan.rows == [] and plan.work == []
    assert plan.batch_counts == {("r", 0): (0, 1), ("r", 1): (0, 2)}
    assert plan.duplicate_counts == {known: 3}


def test_plan_chunk_leaves_the_existing_map_alone() -> None:
    existing: dict[bytes, uuid.UUID] = {}
    plan_chunk([hashed("r", 0, site("a"))], existing)
    assert existing == {}


def test_an_empty_chunk_plans_nothing() -> None:
    plan = plan_chunk([], {})
    assert (plan.rows, plan.work, plan.batch_counts, dict(plan.duplicate_counts)) == ([], [], {}, {})


def test_batches_of_different_runs_are_kept_apart() -> None:
    plan = plan_chunk([hashed("r1", 0, site("a")), hashed("r2", 0, site("b"))], {})
    assert plan.batch_counts == {("r1", 0): (1, 0), ("r2", 0): (1, 0)}
    assert [(w.run_id, w.batch) for w in plan.work] == [("r1", 0), ("r2", 0)]


def test_row_ids_are_unique_across_a_chunk() -> None:
    plan = plan_chunk([hashed("r", b, *(site(f"s{b}-{i}") for i in range(50))) for b in range(4)], {})
    ids = [r[0] for r in plan.rows]
    assert len(ids) == 200 == len(set(ids))
    assert all(isinstance(i, WorkItem) for w in plan.work for i in w.items)


# --- new_id -----------------------------------------------------------------------------------


def test_new_id_is_a_version_7_uuid_of_the_rfc_variant() -> None:
    value = new_id()
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_new_id_carries_the_current_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.pipeline.ingest.time.time_ns", lambda: 1_700_000_000_123_456_789)
    assert new_id().int >> 80 == 1_700_000_000_123


def test_new_ids_are_time_ordered_across_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(1_700_000_000_000_000_000, 1_700_000_000_000_000_000 + 50 * 1_000_000, 1_000_000))
    monkeypatch.setattr("streams.pipeline.ingest.time.time_ns", lambda: next(clock))
    ids = [new_id() for _ in range(50)]
    assert ids == sorted(ids)
    assert [i.int >> 80 for i in ids] == list(range(1_700_000_000_000, 1_700_000_000_050))


def test_new_ids_are_unique() -> None:
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000


def test_new_ids_of_successive_calls_never_go_back_in_time() -> None:
    stamps = [new_id().int >> 80 for _ in range(500)]
    assert stamps == sorted(stamps)
    assert abs(stamps[0] - time.time_ns() // 1_000_000) < 60_000
