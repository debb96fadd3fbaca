"""Typed views of the records and HTTP bodies `streams` exchanges.

The JSON Schema and OpenAPI files in `schemas/` are the source of truth; these frozen pydantic
models mirror them field for field, and `tests/unit/test_schemas.py` runs a table of records
through both to keep them in step (each record is accepted by both or rejected by both).

- `ingest` records: `IngestBatch`, `Seal` (parse either with `parse_ingest_record`).
- `ingest.completions` records: `RunCompleted`.
- Target contract (`schemas/target-api.yaml`): `BulkRequest` is what we send and is strict;
  `BulkResponse` and the models under it ignore fields they do not know, so a real NetBox that
  returns more than the contract does not break parsing.

JSON numbers and strings are not interchangeable here: an integer field rejects `"1"` and
`true`, as the schemas do.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
)

from streams.pipeline.entity_shape import to_diode_shape

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
OBJECT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"
RFC3339_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]"
    r":[0-5][0-9](\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
INT32_MAX = 2_147_483_647
MAX_ENTITIES = 1000
_RFC3339 = re.compile(RFC3339_PATTERN)


def _json_integer(value: Any) -> Any:
    """Refuse what pydantic's lax mode would coerce to int but JSON Schema's `integer` rejects."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("must be a JSON integer")
    return value


def _rfc3339(value: Any) -> Any:
    """Accept a timezone-aware `datetime`, or a string in RFC 3339 shape (not a number)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time string")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
Count = Annotated[JsonInt, Field(ge=0)]
RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN)]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Lenient(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


# --- ingest -----------------------------------------------------------------------------------


class Producer(_Strict):
    app_name: Annotated[str, Field(min_length=1, max_length=100)]
    app_version: Annotated[str, Field(min_length=1, max_length=100)] | None = None


class EntityIn(_Strict):
    """An entity in the diode shape; a flat one is wrapped here (streams.pipeline.entity_shape)."""

    object_type: Annotated[str, Field(pattern=OBJECT_TYPE_PATTERN)]
    entity: dict[str, Any]

    @field_validator("entity")
    @classmethod
    def _diode_shape(cls, entity: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        object_type = info.data.get("object_type")
        if object_type is None:  # invalid itself: that error is the one reported
            return entity
        return to_diode_shape(object_type, entity)  # EntityShapeError is a ValueError


class IngestBatch(_Strict):
    kind: Literal["batch"]
    run_id: RunId
    batch: Annotated[JsonInt, Field(ge=0, le=INT32_MAX)]
    request_id: Annotated[str, Field(min_length=1, max_length=200)]
    producer: Producer | None = None
    entities: Annotated[tuple[EntityIn, ...], Field(min_length=1, max_length=MAX_ENTITIES)]


class Seal(_Strict):
    kind: Literal["seal"]
    run_id: RunId
    batches: Annotated[JsonInt, Field(ge=0, le=INT32_MAX)]
    producer: Producer | None = None


IngestRecord = Annotated[IngestBatch | Seal, Field(discriminator="kind")]
_INGEST_RECORD: TypeAdapter[IngestBatch | Seal] = TypeAdapter(IngestRecord)


def parse_ingest_record(data: dict[str, Any]) -> IngestBatch | Seal:
    """Validate a decoded `ingest` record; raises `pydantic.ValidationError` if it is invalid."""
    return _INGEST_RECORD.validate_python(data)


# --- ingest.completions -----------------------------------------------------------------------


class BatchCounts(_Strict):
    total: Count
    completed: Count
    failed: Count


class EntityCounts(_Strict):
    accepted: Count
    applied: Count
    no_changes: Count
    duplicates: Count
    errored: Count


class RunCompleted(_Strict):
    kind: Literal["run_completed"]
    run_id: RunId
    revision: Annotated[JsonInt, Field(ge=1)]
    status: Literal["succeeded", "failed"]
    batches: BatchCounts
    entities: EntityCounts
    sealed_at: Timestamp
    completed_at: Timestamp


# --- target contract: request ------------------------------------------------------------------


class BulkEntity(_Strict):
    id: str  # the ingestion_log id (a UUID string): the target's idempotency key
    object_type: str
    entity: dict[str, Any]


class BulkRequest(_Strict):
    entities: Annotated[tuple[BulkEntity, ...], Field(min_length=1, max_length=MAX_ENTITIES)]


# --- target contract: response -----------------------------------------------------------------


class Change(_Lenient):
    change_type: Literal["create", "update", "delete", "noop"]
    object_type: str
    object_id: int | None = None
    before: dict[str, Any] | None = None
    data: dict[str, Any] | None = None


class ChangeSet(_Lenient):
    id: str
    changes: tuple[Change, ...]


class TargetError(BaseModel):
    """A per-entity error; any extra fields the target sends are kept (for `last_error`)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    message: str | None = None
    retryable: bool | None = None  # overrides the class streams.pipeline.outcomes gives it


class ResultErrors(_Lenient):
    plan: TargetError | None = None
    apply: TargetError | None = None


class EntityResult(_Lenient):
    id: str
    change_set: ChangeSet | None = None
    errors: ResultErrors | None = None
    # NetBox's plugin: e.g. a create that lost a race and was bound to the existing row.
    warnings: tuple[Any, ...] | None = None


class BulkResponse(_Lenient):
    results: tuple[EntityResult, ...]
