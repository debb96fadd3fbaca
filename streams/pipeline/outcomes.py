"""What became of each entity sent to the target, classified once (spec §3.2).

Pure functions from an HTTP exchange (status, headers, body) or a transport error to one
`EntityOutcome` per sent id. The target client calls these at the seam; everything after works
with the classification and never looks at status codes or bodies again.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

import orjson
from pydantic import ValidationError

from streams.models import BulkResponse, ChangeSet, EntityResult

MAX_ERROR_TEXT = 1024


class State(IntEnum):
    """ingestion_logs.state: the numbers are diode's."""

    QUEUED = 1
    OPEN = 2
    APPLIED = 3
    FAILED = 4
    NO_CHANGES = 5
    IGNORED = 6
    ERRORED = 7
    APPLYING = 8
    PENDING_RETRY = 9


TERMINAL_STATES = frozenset({State.APPLIED, State.FAILED, State.NO_CHANGES, State.IGNORED, State.ERRORED})


class ErrorClass(str, Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    INVALID = "invalid"


TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})


@dataclass(frozen=True)
class Failure:
    """Why an entity (or a whole request) did not apply."""

    error_class: ErrorClass
    message: str
    http_status: int | None = None
    retry_after: float | None = None  # seconds, from the target's Retry-After
    detail: Mapping[str, Any] | None = None  # the target's error object, if any
    whole_request: bool = False
    credentials: bool = False  # 401/403: no retry, alert

    def as_json(self) -> dict[str, Any]:
        """The `last_error` column / `x-error` header content (text capped at 1 KiB)."""
        out: dict[str, Any] = {"class": self.error_class.value, "message": self.message[:MAX_ERROR_TEXT]}
        if self.http_status is not None:
            out["http_status"] = self.http_status
        if self.detail:
            text = orjson.dumps(self.detail, default=str)
            out["detail"] = self.detail if len(text) <= MAX_ERROR_TEXT else {"truncated": text[:MAX_ERROR_TEXT].decode(errors="ignore")}
        return out


@dataclass(frozen=True)
class EntityOutcome:
    id: str
    state: State | None  # APPLIED / NO_CHANGES on success, None when `failure` says why not
    change_set: ChangeSet | None = None
    failure: Failure | None = None


@dataclass(frozen=True)
class CallResult:
    outcomes: tuple[EntityOutcome, ...]
    request_failure: Failure | None = None  # set when the request failed as a whole
    unknown_ids: tuple[str, ...] = ()  # results for ids we did not send (ignored, logged)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def _whole(ids: Sequence[str], failure: Failure) -> CallResult:
    return CallResult(tuple(EntityOutcome(i, None, failure=failure) for i in ids), request_failure=failure)


def classify_transport_error(ids: Sequence[str], error: BaseException) -> CallResult:
    """Network errors and timeouts: transient for every entity of the request."""
    message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return _whole(ids, Failure(ErrorClass.TRANSIENT, message, whole_request=True))


def classify_response(ids: Sequence[str], status: int, headers: Mapping[str, str], body: bytes, now: float) -> CallResult:
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    if status in (200, 207):
        return _classify_results(ids, status, body)
    snippet = body[:200].decode(errors="replace")
    if status in (401, 403):
        failure = Failure(ErrorClass.PERMANENT, f"target refused the credentials ({status})", status,
                          whole_request=True, credentials=True)
    elif status in TRANSIENT_STATUSES or status >= 500:
        failure = Failure(ErrorClass.TRANSIENT, f"target answered {status}: {snippet}", status, retry_after,
                          whole_request=True)
    else:  # 400 and every other 4xx: the request itself is wrong; sending it again cannot help
        failure = Failure(ErrorClass.PERMANENT, f"target rejected the request ({status}): {snippet}", status,
                          whole_request=True)
    return _whole(ids, failure)


def _classify_results(ids: Sequence[str], status: int, body: bytes) -> CallResult:
    try:
        response = BulkResponse.model_validate_json(body)
    except ValidationError:
        failure = Failure(ErrorClass.TRANSIENT, f"target answered {status} with a body that is not the contract's JSON",
                          status, whole_request=True)
        return _whole(ids, failure)
    by_id: dict[str, EntityResult] = {}
    for result in response.results:
        by_id.setdefault(result.id, result)
    sent = set(ids)
    outcomes = tuple(_entity_outcome(i, by_id.get(i), status) for i in ids)
    unknown = tuple(sorted(i for i in by_id if i not in sent))
    return CallResult(outcomes, unknown_ids=unknown)


def _entity_outcome(entity_id: str, result: EntityResult | None, status: int) -> EntityOutcome:
    if result is None:
        return EntityOutcome(entity_id, None, failure=Failure(ErrorClass.TRANSIENT, "no result for this id", status))
    errors = result.errors
    if errors is not None and errors.plan is not None:
        return EntityOutcome(entity_id, None, failure=_entity_failure(errors.plan, ErrorClass.PERMANENT, "plan", status))
    if errors is not None and errors.apply is not None:
        return EntityOutcome(entity_id, None, failure=_entity_failure(errors.apply, ErrorClass.TRANSIENT, "apply", status))
    if result.change_set is None:
        failure = Failure(ErrorClass.TRANSIENT, "result has neither a change set nor errors", status)
        return EntityOutcome(entity_id, None, failure=failure)
    changed = any(change.change_type != "noop" for change in result.change_set.changes)
    return EntityOutcome(entity_id, State.APPLIED if changed else State.NO_CHANGES, change_set=result.change_set)


def _entity_failure(error: Any, default: ErrorClass, stage: str, status: int) -> Failure:
    detail = error.model_dump(exclude_none=True)
    retryable = detail.get("retryable")
    if retryable is True:
        error_class = ErrorClass.TRANSIENT
    elif retryable is False:
        error_class = ErrorClass.PERMANENT
    else:
        error_class = default
    message = str(detail.get("message") or f"{stage} error")
    return Failure(error_class, f"{stage}: {message}", status, detail=detail)
