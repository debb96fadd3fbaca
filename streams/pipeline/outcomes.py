"""What became of each entity sent to the target, classified once (spec §3.2, NETBOX.md).

Pure functions from an HTTP exchange (status, headers, body) or a transport error to one
`EntityOutcome` per sent id, plus what the request as a whole says (`RequestFault`). The
target client calls these at the seam; everything after works with the classification and
never looks at status codes or bodies again.

The rules follow what the NetBox diode plugin really answers:

    200/207       per entity: a change set (APPLIED, or NO_CHANGES when nothing but `noop`),
                  or errors:
                    plan  `{"request": {"__all__": ["internal error"]}}`   transient (NetBox's
                          database is down or just restarted; when most entities of a response
                          get it, the target as a whole is UNAVAILABLE)
                    plan  anything else (validation)                       permanent
                    apply the plugin's database-contention codes           transient
                    apply anything else (integrity, validation)            permanent
                  `"retryable": true|false` in an error object overrides the class.
    408 429 502 503 504, network errors, timeouts       UNAVAILABLE   transient, breaker
    500, 413      something in the request broke it         BROKEN        isolate the entity
    401 403       credentials                               CREDENTIALS   refresh once, then stop
    400 404 405   wrong URL or envelope                     MISCONFIGURED stop, never dead-letter
    other 4xx     the request is refused for good           REFUSED       bisect, permanent
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


class RequestFault(str, Enum):
    """What a failed request as a whole says, and so what the plan-apply step does about it."""

    UNAVAILABLE = "unavailable"  # the target cannot serve now: retry later; counts for the breaker
    BROKEN = "broken"  # an entity broke the server (500) or the body is too big: isolate it
    REFUSED = "refused"  # refused for good because of its content (422, …): bisect
    CREDENTIALS = "credentials"  # 401/403: refresh the token once, then stop the flow
    MISCONFIGURED = "misconfigured"  # 400/404/405: wrong URL or envelope: stop the flow

    @property
    def stops_the_flow(self) -> bool:
        """Nothing about the entities: no record may be routed or dead-lettered because of it."""
        return self in (RequestFault.CREDENTIALS, RequestFault.MISCONFIGURED)


UNAVAILABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
BROKEN_STATUSES = frozenset({500, 413})
CREDENTIAL_STATUSES = frozenset({401, 403})
MISCONFIGURED_STATUSES = frozenset({400, 404, 405})
# The plugin's apply error codes for database contention (api/views.py::_db_error_code).
CONTENTION_CODES = frozenset({"db_deadlock_after_retries", "db_error"})
INTERNAL_ERROR = "internal error"
# A response in which at least this many, and more than half, of the entities got the plan
# error `internal error` is the target failing as a whole, not those entities.
WHOLE_TARGET_MIN = 2


@dataclass(frozen=True)
class Failure:
    """Why an entity (or a whole request) did not apply."""

    error_class: ErrorClass
    message: str
    http_status: int | None = None
    retry_after: float | None = None  # seconds, from the target's Retry-After
    detail: Mapping[str, Any] | None = None  # the target's error object, if any
    request: RequestFault | None = None  # set when the request failed as a whole

    @property
    def whole_request(self) -> bool:
        return self.request is not None

    def as_json(self) -> dict[str, Any]:
        """The `last_error` column / `x-error` header content (text capped at 1 KiB)."""
        out: dict[str, Any] = {"class": self.error_class.value, "message": self.message[:MAX_ERROR_TEXT]}
        if self.http_status is not None:
            out["http_status"] = self.http_status
        if self.detail:
            text = orjson.dumps(self.detail, default=str)
            fits = len(text) <= MAX_ERROR_TEXT
            out["detail"] = self.detail if fits else {"truncated": text[:MAX_ERROR_TEXT].decode(errors="ignore")}
        return out


@dataclass(frozen=True)
class EntityOutcome:
    id: str
    state: State | None  # APPLIED / NO_CHANGES on success, None when `failure` says why not
    change_set: ChangeSet | None = None  # also with an apply error: what was planned
    failure: Failure | None = None
    warnings: tuple[Any, ...] = ()  # e.g. a create bound to an existing row without its payload

    @property
    def fields_dropped(self) -> bool:
        """Applied, but some of its fields were not stored: the plugin bound a create that lost a
        race (or matched a row it will not write to) to the existing row, and says to plan the
        entity again so an update stores them."""
        return self.state is not None and any(
            isinstance(w, Mapping) and w.get("fields") and w.get("object_id") is not None for w in self.warnings)


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


def whole(ids: Sequence[str], failure: Failure) -> CallResult:
    """Every entity of the request failed with `failure`."""
    return CallResult(tuple(EntityOutcome(i, None, failure=failure) for i in ids), request_failure=failure)


def classify_transport_error(ids: Sequence[str], error: BaseException) -> CallResult:
    """Network errors and timeouts: the target did not answer; transient for every entity."""
    message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return whole(ids, Failure(ErrorClass.TRANSIENT, message, request=RequestFault.UNAVAILABLE))


def classify_response(ids: Sequence[str], status: int, headers: Mapping[str, str], body: bytes,
                      now: float) -> CallResult:
    if status in (200, 207):
        return _classify_results(ids, status, body)
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    snippet = _snippet(body)
    if status in CREDENTIAL_STATUSES:
        failure = Failure(ErrorClass.TRANSIENT, f"target refused the credentials ({status}): {snippet}", status,
                          request=RequestFault.CREDENTIALS)
    elif status in MISCONFIGURED_STATUSES:
        failure = Failure(ErrorClass.TRANSIENT, f"target answered {status}: wrong URL or request envelope: {snippet}",
                          status, request=RequestFault.MISCONFIGURED)
    elif status in BROKEN_STATUSES:
        failure = Failure(ErrorClass.TRANSIENT, f"target failed on the request ({status}): {snippet}", status,
                          retry_after, request=RequestFault.BROKEN)
    elif status in UNAVAILABLE_STATUSES or status >= 500:
        failure = Failure(ErrorClass.TRANSIENT, f"target answered {status}: {snippet}", status, retry_after,
                          request=RequestFault.UNAVAILABLE)
    else:  # every other 4xx: refused for what it holds; sending it again cannot help
        failure = Failure(ErrorClass.PERMANENT, f"target rejected the request ({status}): {snippet}", status,
                          request=RequestFault.REFUSED)
    return whole(ids, failure)


def _snippet(body: bytes) -> str:
    # The plugin's own error body is JSON; a gunicorn timeout page is HTML: keep it short.
    text = body[:200].decode(errors="replace").strip()
    return text if not text.lstrip().startswith("<") else "(an HTML page)"


def _classify_results(ids: Sequence[str], status: int, body: bytes) -> CallResult:
    try:
        response = BulkResponse.model_validate_json(body)
    except ValidationError:
        failure = Failure(ErrorClass.TRANSIENT, f"target answered {status} with a body that is not the contract's JSON",
                          status, request=RequestFault.UNAVAILABLE)
        return whole(ids, failure)
    by_id: dict[str, EntityResult] = {}
    for result in response.results:
        by_id.setdefault(result.id, result)
    sent = set(ids)
    outcomes = tuple(_entity_outcome(i, by_id.get(i), status) for i in ids)
    unknown = tuple(sorted(i for i in by_id if i not in sent))
    internal = sum(1 for i in ids if _is_internal_error(by_id.get(i)))
    if internal >= WHOLE_TARGET_MIN and internal * 2 > len(ids):
        # NetBox with its database down or just restarted answers this for every entity.
        failure = Failure(ErrorClass.TRANSIENT, f"target failed internally for {internal} of {len(ids)} entities "
                          "(its database may be down)", status, request=RequestFault.UNAVAILABLE)
        outcomes = tuple(EntityOutcome(o.id, None, failure=failure) if _is_internal_error(by_id.get(o.id)) else o
                         for o in outcomes)
        return CallResult(outcomes, request_failure=failure, unknown_ids=unknown)
    return CallResult(outcomes, unknown_ids=unknown)


def _entity_outcome(entity_id: str, result: EntityResult | None, status: int) -> EntityOutcome:
    if result is None:
        return EntityOutcome(entity_id, None, failure=Failure(ErrorClass.TRANSIENT, "no result for this id", status))
    errors, warnings = result.errors, tuple(result.warnings or ())
    if errors is not None and errors.plan is not None:
        plan = errors.plan.model_dump(exclude_none=True)
        default = ErrorClass.TRANSIENT if _is_internal(plan) else ErrorClass.PERMANENT
        return EntityOutcome(entity_id, None, result.change_set, _entity_failure(plan, default, "plan", status),
                             warnings)
    if errors is not None and errors.apply is not None:
        apply = errors.apply.model_dump(exclude_none=True)
        default = ErrorClass.TRANSIENT if _codes(apply) & CONTENTION_CODES else ErrorClass.PERMANENT
        return EntityOutcome(entity_id, None, result.change_set, _entity_failure(apply, default, "apply", status),
                             warnings)
    if result.change_set is None:
        failure = Failure(ErrorClass.TRANSIENT, "result has neither a change set nor errors", status)
        return EntityOutcome(entity_id, None, failure=failure)
    changed = any(change.change_type != "noop" for change in result.change_set.changes)
    return EntityOutcome(entity_id, State.APPLIED if changed else State.NO_CHANGES, result.change_set,
                         warnings=warnings)


def _is_internal_error(result: EntityResult | None) -> bool:
    if result is None or result.errors is None or result.errors.plan is None:
        return False
    return _is_internal(result.errors.plan.model_dump(exclude_none=True))


def _is_internal(error: Mapping[str, Any]) -> bool:
    """The plugin's `{"request": {"__all__": ["internal error"]}}`: not about the data."""
    request = error.get("request")
    return isinstance(request, Mapping) and INTERNAL_ERROR in (request.get("__all__") or ())


def _codes(error: Mapping[str, Any]) -> set[str]:
    """The messages directly under `__all__` (where the plugin puts its stable codes)."""
    found = error.get("__all__")
    return {code for code in found if isinstance(code, str)} if isinstance(found, list) else set()


def _entity_failure(detail: dict[str, Any], default: ErrorClass, stage: str, status: int) -> Failure:
    retryable = detail.get("retryable")
    if retryable is True:
        error_class = ErrorClass.TRANSIENT
    elif retryable is False:
        error_class = ErrorClass.PERMANENT
    else:
        error_class = default
    return Failure(error_class, f"{stage}: {describe_errors(detail)}", status, detail=detail)


def describe_errors(detail: Mapping[str, Any], limit: int = 3) -> str:
    """One line from an error object: its `message`, or the plugin's nested field errors
    (`{"dcim.site": {"status": ["not a valid choice"]}}` -> `dcim.site.status: not a valid choice`)."""
    message = detail.get("message")
    if isinstance(message, str) and message:
        return message
    parts: list[str] = []
    _walk(detail, "", parts)
    if not parts:
        return "error"
    more = f" (and {len(parts) - limit} more)" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def _walk(value: Any, where: str, parts: list[str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in ("retryable", "message"):
                continue
            name = where if key == "__all__" else f"{where}.{key}" if where else str(key)
            _walk(item, name, parts)
    elif isinstance(value, list):
        for item in value:
            _walk(item, where, parts)
    elif value is not None:
        parts.append(f"{where}: {value}" if where else str(value))
