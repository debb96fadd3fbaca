"""Headers of retry and dead-letter records (schemas/headers.md).

Every hop builds the whole set again from the failure and the incoming headers: values are
replaced, never appended, so a record that climbs every tier carries one value per header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from streams.pipeline.outcomes import MAX_ERROR_TEXT, ErrorClass

ATTEMPT = "x-attempt"
DUE_AT = "x-due-at"
FIRST_FAILED_AT = "x-first-failed-at"
ERROR_CLASS = "x-error-class"
ERROR = "x-error"
HTTP_STATUS = "x-http-status"
ORIGIN_TOPIC = "x-origin-topic"
ORIGIN_PARTITION = "x-origin-partition"
ORIGIN_OFFSET = "x-origin-offset"
RUN_ID = "x-run-id"
REPLAY_ID = "x-replay-id"
# On a dead letter that holds only the first bytes of its record: the record's whole length.
EXCERPT_OF = "x-excerpt-of"

OURS = (ATTEMPT, DUE_AT, FIRST_FAILED_AT, ERROR_CLASS, ERROR, HTTP_STATUS, ORIGIN_TOPIC,
        ORIGIN_PARTITION, ORIGIN_OFFSET, RUN_ID, REPLAY_ID, EXCERPT_OF)
EXCERPT_BYTES = 4096


@dataclass(frozen=True)
class Origin:
    topic: str
    partition: int
    offset: int


def decode(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> dict[str, str]:
    """Header list → dict of text; for a repeated key the last value wins."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {key: (value or b"").decode("utf-8", errors="replace") for key, value in items}


def cap(text: str) -> str:
    """Error text is capped at 1 KiB of UTF-8."""
    data = text.encode("utf-8")
    return text if len(data) <= MAX_ERROR_TEXT else data[:MAX_ERROR_TEXT].decode("utf-8", errors="ignore")


def bounded(value: bytes | None, limit: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A dead letter's value: the record itself when it is at most `limit` bytes, else its first
    EXCERPT_BYTES and a header with its length. The origin headers say where the whole record is
    (for as long as the origin topic keeps it); a dead letter never fails for its size."""
    value = value or b""
    if len(value) <= limit:
        return value, []
    # An excerpt is always shorter than the record and than the limit, so the header never lies.
    return value[:min(EXCERPT_BYTES, limit)], [(EXCERPT_OF, str(len(value)).encode())]


def failure_headers(
    incoming: Mapping[str, str], *, origin: Origin, attempt: int, error_class: ErrorClass, error: str,
    now_ms: int, run_id: str | None = None, http_status: int | None = None, due_at_ms: int | None = None,
) -> list[tuple[str, bytes]]:
    """The full header set for the next hop of a failed record."""
    values = {
        ATTEMPT: str(attempt),
        FIRST_FAILED_AT: incoming.get(FIRST_FAILED_AT, str(now_ms)),
        ERROR_CLASS: error_class.value,
        ERROR: cap(error),
        # The origin is where the record first entered the topology, kept across hops.
        ORIGIN_TOPIC: incoming.get(ORIGIN_TOPIC, origin.topic),
        ORIGIN_PARTITION: incoming.get(ORIGIN_PARTITION, str(origin.partition)),
        ORIGIN_OFFSET: incoming.get(ORIGIN_OFFSET, str(origin.offset)),
    }
    if due_at_ms is not None:
        values[DUE_AT] = str(due_at_ms)
    if http_status is not None:
        values[HTTP_STATUS] = str(http_status)
    if run_id is not None:
        values[RUN_ID] = run_id
    if REPLAY_ID in incoming:
        values[REPLAY_ID] = incoming[REPLAY_ID]
    return [(key, value.encode("utf-8")) for key, value in values.items()]
