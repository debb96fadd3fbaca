"""How many entities go into one bulk-plan-apply request, and which ones.

Targets differ by four orders of magnitude: the reference target plans and applies an entity in
a fraction of a millisecond, NetBox in 18 to 65 ms (NETBOX.md), so 500 entities are 0.1 s for
one and 30 s for the other. A fixed size either starves the fast target or times out on the
slow one. `RequestSizer` keeps each call near `target_seconds` from the latency it measures:

    size = clamp(target_seconds / seconds per entity, 1, ceiling)

with seconds per entity an exponentially weighted average over answered calls, so a target
that slows down (or queues our calls) gets smaller requests within a few calls. Before the
first answer it sends `initial` entities, small enough for the slowest target to answer well
within a timeout. A call that timed out counts as having taken the whole timeout.

`split` cuts a list of entities into request bodies of at most that many entities and at most
`max_bytes` of JSON (NetBox refuses bodies over 2.5 MiB with a 500).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streams.records import WorkItem

INITIAL_SIZE = 100
WEIGHT = 0.3  # of the newest measurement in the average
ENVELOPE_BYTES = 16  # {"entities":[ … ]}


@dataclass
class RequestSizer:
    ceiling: int  # STREAMS_BATCH_SIZE
    target_seconds: float
    initial: int = INITIAL_SIZE
    per_entity: float | None = None  # seconds, averaged

    def size(self) -> int:
        if self.per_entity is None:
            return max(1, min(self.ceiling, self.initial))
        fitting = int(self.target_seconds / max(self.per_entity, 1e-6))
        return max(1, min(self.ceiling, fitting))

    def observe(self, entities: int, seconds: float) -> None:
        """A call of `entities` entities took `seconds` (answered, or timed out)."""
        if entities <= 0 or seconds < 0:
            return
        sample = seconds / entities
        self.per_entity = sample if self.per_entity is None else WEIGHT * sample + (1 - WEIGHT) * self.per_entity


def body_of(item: WorkItem) -> dict[str, Any]:
    return {"id": item.id, "object_type": item.object_type, "entity": item.entity}


def split(items: Sequence[WorkItem], size: int, max_bytes: int) -> list[list[dict[str, Any]]]:
    """Request bodies of at most `size` entities and `max_bytes` bytes each, in order. An entity
    larger than `max_bytes` on its own still gets a request of its own (the target decides)."""
    bodies: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    used = ENVELOPE_BYTES
    for item in items:
        body = body_of(item)
        length = len(orjson.dumps(body)) + 1
        if current and (len(current) >= size or used + length > max_bytes):
            bodies.append(current)
            current, used = [], ENVELOPE_BYTES
        current.append(body)
        used += length
    if current:
        bodies.append(current)
    return bodies
