"""Which dead letters an operator means, and what they add up to: pure functions, no I/O.

Filters combine with AND across options and OR within one (`--run a --run b`). Selections come
oldest first (record timestamp, then partition and offset), so `--limit` always takes the same
records from the same topic contents.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streams.dlq.letters import DeadLetter
from streams.durations import parse_duration
from streams.records import WorkItem

ERROR_CLASSES = ("transient", "permanent", "invalid")


@dataclass(frozen=True)
class Filters:
    runs: tuple[str, ...] = ()
    error_classes: tuple[str, ...] = ()
    object_types: tuple[str, ...] = ()
    http_statuses: tuple[int, ...] = ()
    since: int | None = None  # epoch ms, inclusive
    until: int | None = None  # epoch ms, exclusive
    limit: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The filters that are set, for the audit row and the output."""
        out: dict[str, Any] = {}
        for name in ("runs", "error_classes", "object_types", "http_statuses"):
            if values := getattr(self, name):
                out[name] = list(values)
        for name in ("since", "until"):
            if (value := getattr(self, name)) is not None:
                out[name] = format_ms(value)
        if self.limit is not None:
            out["limit"] = self.limit
        return out


def parse_time(text: str, now: datetime) -> int:
    """Epoch ms from ISO 8601 (no zone means UTC) or a duration meaning that long before `now`."""
    text = text.strip()
    try:
        return int((now.timestamp() - parse_duration(text)) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time or a duration such as 2h, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def format_ms(epoch_ms: int) -> str:
    when = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def matches(letter: DeadLetter, filters: Filters) -> bool:
    if filters.runs and letter.run_id not in filters.runs:
        return False
    if filters.error_classes and letter.error_class not in filters.error_classes:
        return False
    if filters.object_types and not set(letter.object_types) & set(filters.object_types):
        return False
    if filters.http_statuses and letter.http_status not in filters.http_statuses:
        return False
    if filters.since is not None and letter.timestamp < filters.since:
        return False
    return filters.until is None or letter.timestamp < filters.until


def order_key(letter: DeadLetter) -> tuple[int, int, int]:
    return (letter.timestamp, letter.partition, letter.offset)


def select(letters: Iterable[DeadLetter], filters: Filters) -> list[DeadLetter]:
    """The matching letters, oldest first, at most `filters.limit` of them.

    With a limit only that many are held at a time, however many the topic has.
    """
    return select_counting(letters, filters)[0]


def select_counting(letters: Iterable[DeadLetter], filters: Filters) -> tuple[list[DeadLetter], int]:
    """`select`, and how many letters matched before the limit."""
    count = 0

    def matching() -> Iterator[DeadLetter]:
        nonlocal count
        for letter in letters:
            if matches(letter, filters):
                count += 1
                yield letter

    if filters.limit is not None:
        chosen = heapq.nsmallest(filters.limit, matching(), key=order_key)
    else:
        chosen = sorted(matching(), key=order_key)
    return chosen, count


def selected_items(letter: DeadLetter, filters: Filters) -> tuple[WorkItem, ...]:
    """The items of a work record that the filters select: `--object-type` narrows a record to
    its entities of those types, so a replay never requeues entities the operator left out."""
    if letter.work is None:
        return ()
    if not filters.object_types:
        return letter.work.items
    return tuple(item for item in letter.work.items if item.object_type in filters.object_types)


# --- summaries --------------------------------------------------------------------------------

@dataclass
class Tally:
    records: int = 0
    entities: int = 0
    oldest: int | None = None
    newest: int | None = None

    def add(self, timestamp: int, entities: int, records: int = 1) -> None:
        self.records += records
        self.entities += entities
        self.oldest = timestamp if self.oldest is None else min(self.oldest, timestamp)
        self.newest = timestamp if self.newest is None else max(self.newest, timestamp)


@dataclass
class Summary:
    total: Tally = field(default_factory=Tally)
    by_error_class: dict[str | None, Tally] = field(default_factory=dict)
    by_class_and_run: dict[tuple[str | None, str | None], Tally] = field(default_factory=dict)
    # A record holding several object types counts once under each, with its entities of that type.
    by_object_type: dict[str, Tally] = field(default_factory=dict)

    def add(self, letter: DeadLetter) -> None:
        stamp, count = letter.timestamp, letter.entity_count
        self.total.add(stamp, count)
        self.by_error_class.setdefault(letter.error_class, Tally()).add(stamp, count)
        self.by_class_and_run.setdefault((letter.error_class, letter.run_id), Tally()).add(stamp, count)
        for object_type, entities in letter.entities_by_type().items():
            self.by_object_type.setdefault(object_type, Tally()).add(stamp, entities)


def summarize(letters: Iterable[DeadLetter]) -> Summary:
    """Counts and time span per error class, per (error class, run) and per object type."""
    summary = Summary()
    for letter in letters:
        summary.add(letter)
    return summary


def sorted_groups(groups: dict[Any, Tally]) -> list[tuple[Any, Tally]]:
    """Largest first, then by key (None last), for stable tables."""
    return sorted(groups.items(), key=lambda kv: (-kv[1].records, _key_text(kv[0])))


def _key_text(key: Any) -> tuple[str, ...]:
    parts = key if isinstance(key, tuple) else (key,)
    return tuple("\uffff" if part is None else str(part) for part in parts)
