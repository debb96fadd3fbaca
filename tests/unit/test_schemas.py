"""The files in `schemas/` are well formed, and `streams.models` agrees with them.

Each row of the record table is checked twice, by the JSON Schema and by the pydantic model,
and both verdicts must equal the expected one; a schema change without the matching model
change (or the reverse) fails here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from streams.models import (
    BulkRequest,
    BulkResponse,
    IngestBatch,
    RunCompleted,
    Seal,
    parse_ingest_record,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
JSON_SCHEMA_FILES = sorted(SCHEMAS.glob("*.schema.json"))
TARGET_API_URI = "urn:streams:target-api"


def _load_json(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


def _target_api() -> dict[str, Any]:
    return yaml.safe_load((SCHEMAS / "target-api.yaml").read_text(encoding="utf-8"))


# --- the files themselves ---------------------------------------------------------------------


def test_the_three_record_schemas_exist() -> None:
    names = {path.name for path in JSON_SCHEMA_FILES}
    assert {
        "ingest-batch.schema.json",
        "ingest-seal.schema.json",
        "run-completed.schema.json",
    } <= names


@pytest.mark.parametrize("path", JSON_SCHEMA_FILES, ids=lambda p: p.name)
def test_schema_file_is_valid_2020_12(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://streams.dev/schemas/{path.name}"
    assert schema["title"] and schema["description"]
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for example in schema.get("examples", []):
        validator.validate(example)


def test_target_api_is_openapi_3_1_with_the_bulk_endpoint() -> None:
    doc = _target_api()
    assert str(doc["openapi"]).startswith("3.1.")
    operation = doc["paths"]["/bulk-plan-apply/"]["post"]
    for status in ("200", "207", "400", "401", "403", "408", "422", "429", "502", "503", "504"):
        assert status in operation["responses"], status
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert {} in operation["security"]  # the token is optional
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def _openapi_validator(component: str) -> Draft202012Validator:
    """A validator for one of target-api.yaml's component schemas, resolving its `$ref`s."""
    resource = Resource.from_contents(_target_api(), default_specification=DRAFT202012)
    registry = Registry().with_resource(TARGET_API_URI, resource)
    ref = {"$ref": f"{TARGET_API_URI}#/components/schemas/{component}"}
    return Draft202012Validator(ref, registry=registry)


def _examples(media: dict[str, Any]) -> list[Any]:
    return [example["value"] for example in media["application/json"]["examples"].values()]


def test_target_api_examples_match_its_schemas_and_the_models() -> None:
    operation = _target_api()["paths"]["/bulk-plan-apply/"]["post"]
    requests = _examples(operation["requestBody"]["content"])
    responses = _examples(operation["responses"]["200"]["content"])
    responses += _examples(operation["responses"]["207"]["content"])
    assert requests and len(responses) >= 2
    for body in requests:
        _openapi_validator("BulkRequest").validate(body)
        assert len(BulkRequest.model_validate(body).entities) == len(body["entities"])
    for body in responses:
        _openapi_validator("BulkResponse").validate(body)
        assert len(BulkResponse.model_validate(body).results) == len(body["results"])


def test_a_realistic_207_parses_and_keeps_what_matters() -> None:
    body = {
        "results": [
            {
                "id": "0b6f3c52-7d1e-4f0a-9c3b-5a2e8d41f7a0",
                "change_set": {
                    "id": "5d0c1f9e-8a47-4b2e-b6d3-2f71e9c8a054",
                    "changes": [
                        {
                            "change_type": "noop",
                            "object_type": "dcim.site",
                            "object_id": 1,
                            "before": {"name": "dc1", "slug": "dc1"},
                            "data": {"name": "dc1", "slug": "dc1"},
                            "object_primary_value": "dc1",  # not in the contract: ignored
                        }
                    ],
                    "branch_id": None,
                },
                "errors": None,
            },
            {
                "id": "9e27a4d8-16c5-4b8e-a0f3-c4d95b7e2a61",
                "change_set": None,
                "errors": {
                    "plan": {"message": "site: not found", "field": "site"},
                    "apply": None,
                },
            },
            {
                "id": "3c8d5e1f-2a94-4b7c-8e06-d1f4a7b9c253",
                "change_set": {"id": "aa41", "changes": []},
                "errors": {
                    "plan": None,
                    "apply": {"message": "deadlock detected", "retryable": True},
                },
            },
        ],
        "took_ms": 41,
    }
    _openapi_validator("BulkResponse").validate(body)
    response = BulkResponse.model_validate(body)
    noop, invalid, deadlock = response.results
    assert noop.errors is None and noop.change_set is not None
    assert [change.change_type for change in noop.change_set.changes] == ["noop"]
    assert invalid.change_set is None and invalid.errors is not None
    assert invalid.errors.plan is not None and invalid.errors.plan.retryable is None
    assert invalid.errors.plan.model_extra == {"field": "site"}  # kept for last_error
    assert deadlock.errors is not None and deadlock.errors.apply is not None
    assert deadlock.errors.apply.retryable is True


# --- records: the schema and the model give the same verdict -----------------------------------

BATCH: dict[str, Any] = {
    "kind": "batch",
    "run_id": "dc1-sweep-2026-11-22",
    "batch": 0,
    "request_id": "6f1c0a9e-3b1d-4c47-9a55-0d2f8e1b7c21",
    "producer": {"app_name": "netbox-discovery", "app_version": "1.4.2"},
    "entities": [{"object_type": "dcim.site", "entity": {"name": "dc1", "slug": "dc1"}}],
}
SEAL: dict[str, Any] = {"kind": "seal", "run_id": "dc1-sweep-2026-11-22", "batches": 42}
COMPLETED: dict[str, Any] = {
    "kind": "run_completed",
    "run_id": "dc1-sweep-2026-11-22",
    "revision": 1,
    "status": "failed",
    "batches": {"total": 42, "completed": 41, "failed": 1},
    "entities": {
        "accepted": 41000,
        "applied": 1200,
        "no_changes": 39690,
        "duplicates": 100,
        "errored": 10,
    },
    "sealed_at": "2026-11-22T10:04:12.318Z",
    "completed_at": "2026-11-22T11:09:57+01:00",
}
ENTITY = {"object_type": "dcim.interface", "entity": {"name": "eth0"}}
DAY = "2026-11-22"
LOWER = f"{DAY}t10:04:12z"
MONTH_13 = "2026-13-01T00:00:00Z"


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of `base` with top-level keys replaced; a value of `...` deletes the key."""
    record = copy.deepcopy(base)
    for key, value in changes.items():
        if value is ...:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def _entities(object_type: str, entity: Any, **extra: Any) -> dict[str, Any]:
    """BATCH with one entity; an `entity` of `...` leaves the key out."""
    item = {"object_type": object_type, **extra}
    if entity is not ...:
        item["entity"] = entity
    return _with(BATCH, entities=[item])


def _producer(**producer: Any) -> dict[str, Any]:
    return _with(BATCH, producer=producer)


def _batches(**counts: Any) -> dict[str, Any]:
    return _with(COMPLETED, batches=counts)


SCHEMA_FILES = {
    IngestBatch: "ingest-batch.schema.json",
    Seal: "ingest-seal.schema.json",
    RunCompleted: "run-completed.schema.json",
}

CASES: list[tuple[str, type[BaseModel], dict[str, Any], bool]] = [
    # batch
    ("batch: spec example", IngestBatch, BATCH, True),
    ("batch: no producer", IngestBatch, _with(BATCH, producer=...), True),
    ("batch: producer, no version", IngestBatch, _with(BATCH, producer={"app_name": "x"}), True),
    ("batch: 1000 entities", IngestBatch, _with(BATCH, entities=[ENTITY] * 1000), True),
    ("batch: largest batch number", IngestBatch, _with(BATCH, batch=2147483647), True),
    ("batch: run_id of 200 chars", IngestBatch, _with(BATCH, run_id="r" + "-" * 199), True),
    ("batch: run_id with . _ :", IngestBatch, _with(BATCH, run_id="a.b_c:d-9"), True),
    ("batch: empty entity", IngestBatch, _entities("ipam.vlan", {}), True),
    ("batch: diode shape", IngestBatch, _entities("dcim.site", {"site": {"name": "dc1"}}), True),
    ("batch: lowerCamel key", IngestBatch, _entities("ipam.ipaddress", {"ipAddress": {"address": "10.0.0.1/8"}}), True),
    ("batch: unknown type, diode shape", IngestBatch, _entities("acme.widget", {"widget": {"name": "w"}}), True),
    ("batch: unknown type, flat", IngestBatch, _entities("acme.widget", {"name": "w"}), False),
    ("batch: unknown type, two keys", IngestBatch, _entities("acme.widget", {"widget": {}, "x": {}}), False),
    ("batch: unknown type, key to a string", IngestBatch, _entities("acme.widget", {"widget": "w"}), False),
    ("batch: empty entities", IngestBatch, _with(BATCH, entities=[]), False),
    ("batch: 1001 entities", IngestBatch, _with(BATCH, entities=[ENTITY] * 1001), False),
    ("batch: run_id with a space", IngestBatch, _with(BATCH, run_id="dc1 sweep"), False),
    ("batch: run_id starting with -", IngestBatch, _with(BATCH, run_id="-dc1"), False),
    ("batch: run_id of 201 chars", IngestBatch, _with(BATCH, run_id="r" * 201), False),
    ("batch: empty run_id", IngestBatch, _with(BATCH, run_id=""), False),
    ("batch: negative batch", IngestBatch, _with(BATCH, batch=-1), False),
    ("batch: batch above int32", IngestBatch, _with(BATCH, batch=2147483648), False),
    ("batch: batch as a string", IngestBatch, _with(BATCH, batch="0"), False),
    ("batch: batch as a boolean", IngestBatch, _with(BATCH, batch=True), False),
    ("batch: fractional batch", IngestBatch, _with(BATCH, batch=1.5), False),
    ("batch: missing request_id", IngestBatch, _with(BATCH, request_id=...), False),
    ("batch: empty request_id", IngestBatch, _with(BATCH, request_id=""), False),
    ("batch: long request_id", IngestBatch, _with(BATCH, request_id="x" * 201), False),
    ("batch: unknown top-level field", IngestBatch, _with(BATCH, priority=1), False),
    ("batch: wrong kind", IngestBatch, _with(BATCH, kind="seal"), False),
    ("batch: object_type without app", IngestBatch, _entities("site", {}), False),
    ("batch: object_type in capitals", IngestBatch, _entities("DCIM.Site", {}), False),
    ("batch: entity not an object", IngestBatch, _entities("dcim.site", ["dc1"]), False),
    ("batch: entity missing", IngestBatch, _entities("dcim.site", ...), False),
    ("batch: extra field in an entity", IngestBatch, _entities("dcim.site", {}, id=1), False),
    ("batch: producer, no app_name", IngestBatch, _producer(app_version="1"), False),
    ("batch: producer, extra field", IngestBatch, _producer(app_name="x", host="h"), False),
    ("batch: app_name of 101 chars", IngestBatch, _producer(app_name="x" * 101), False),
    # seal
    ("seal: spec example", Seal, SEAL, True),
    ("seal: zero batches", Seal, _with(SEAL, batches=0), True),
    ("seal: with producer", Seal, _with(SEAL, producer={"app_name": "importer"}), True),
    ("seal: negative batches", Seal, _with(SEAL, batches=-1), False),
    ("seal: missing run_id", Seal, _with(SEAL, run_id=...), False),
    ("seal: missing batches", Seal, _with(SEAL, batches=...), False),
    ("seal: batches as a string", Seal, _with(SEAL, batches="42"), False),
    ("seal: unknown field", Seal, _with(SEAL, entities=[]), False),
    # run completed
    ("completed: failed run", RunCompleted, COMPLETED, True),
    ("completed: revision 2", RunCompleted, _with(COMPLETED, revision=2, status="succeeded"), True),
    ("completed: no seconds", RunCompleted, _with(COMPLETED, sealed_at=f"{DAY}T10:04Z"), False),
    ("completed: lower t and z", RunCompleted, _with(COMPLETED, sealed_at=LOWER), True),
    ("completed: other status", RunCompleted, _with(COMPLETED, status="partial"), False),
    ("completed: revision 0", RunCompleted, _with(COMPLETED, revision=0), False),
    ("completed: missing kind", RunCompleted, _with(COMPLETED, kind=...), False),
    ("completed: no completed_at", RunCompleted, _with(COMPLETED, completed_at=...), False),
    ("completed: negative count", RunCompleted, _batches(total=1, completed=-1, failed=0), False),
    ("completed: extra count", RunCompleted, _batches(total=1, completed=1, failed=0, x=0), False),
    ("completed: missing count", RunCompleted, _batches(total=1, completed=1), False),
    ("completed: no entity counts", RunCompleted, _with(COMPLETED, entities={}), False),
    ("completed: no offset", RunCompleted, _with(COMPLETED, sealed_at=f"{DAY}T10:04:12"), False),
    ("completed: space for T", RunCompleted, _with(COMPLETED, sealed_at=f"{DAY} 10:04:12Z"), False),
    ("completed: epoch number", RunCompleted, _with(COMPLETED, sealed_at=1795342000), False),
    ("completed: date only", RunCompleted, _with(COMPLETED, completed_at=DAY), False),
    ("completed: month 13", RunCompleted, _with(COMPLETED, completed_at=MONTH_13), False),
]


def _model_accepts(model: type[BaseModel], record: dict[str, Any]) -> bool:
    try:
        if model is RunCompleted:
            RunCompleted.model_validate(record)
        else:
            parsed = parse_ingest_record(record)
            # a record of the other kind is not a valid instance of this model
            return isinstance(parsed, model)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("model", "record", "valid"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_schema_and_model_agree(
    model: type[BaseModel], record: dict[str, Any], valid: bool
) -> None:
    schema_accepts = Draft202012Validator(_load_json(SCHEMA_FILES[model])).is_valid(record)
    model_accepts = _model_accepts(model, record)
    assert (schema_accepts, model_accepts) == (valid, valid)
    if valid:  # a valid record round-trips through the model unchanged in meaning
        dumped = model.model_validate(record).model_dump(mode="json", exclude_none=True)
        assert Draft202012Validator(_load_json(SCHEMA_FILES[model])).is_valid(dumped)


def test_parse_ingest_record_dispatches_on_kind() -> None:
    assert isinstance(parse_ingest_record(BATCH), IngestBatch)
    assert isinstance(parse_ingest_record(SEAL), Seal)
    for record in ({"run_id": "r", "batches": 1}, _with(SEAL, kind="run_completed")):
        with pytest.raises(ValidationError):
            parse_ingest_record(record)


def test_models_are_frozen() -> None:
    seal = parse_ingest_record(SEAL)
    with pytest.raises(ValidationError):
        seal.batches = 1  # type: ignore[misc]


def test_run_id_with_trailing_newline_is_rejected_by_the_model() -> None:
    # Python's `re` lets `$` match before a final newline, so the jsonschema library accepts
    # this run_id although ECMA-262 regex semantics (which JSON Schema specifies) reject it.
    # The model (Rust regex, `$` = end of text) rejects it, as the schema intends.
    with pytest.raises(ValidationError):
        parse_ingest_record(_with(SEAL, run_id="dc1\n"))


def test_the_flat_object_types_of_the_schema_are_the_known_netbox_types() -> None:
    from streams.pipeline.netbox_types import ENTITY_KEYS

    enum = _load_json("ingest-batch.schema.json")["$defs"]["netbox_object_type"]["enum"]
    assert enum == list(ENTITY_KEYS)
