"""A worker's report of itself: what only it knows, as one record of the worker-status topic.

Keyed by the worker's id; the topic is compacted, so the latest report of each worker is kept
and a tombstone (a record without value) says the worker stopped cleanly. A report that is
older than a few publishing intervals is from a worker that died or is cut off.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.gates import Gate, GateName
from streams.settings import Settings

# Reports older than this many publishing intervals are from a worker that is gone.
SILENT_AFTER_INTERVALS = 3


def worker_id(settings: Settings) -> str:
    """Stable across restarts with static membership (instance_id), else host and process."""
    return settings.instance_id or f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class WorkerReport:
    worker: str
    started_at: float
    published_at: float
    interval: float
    assigned: dict[str, list[int]] = field(default_factory=dict)  # topic → partitions
    gates: tuple[Gate, ...] = ()
    leader: bool = False

    def silent(self, now: float) -> bool:
        return now - self.published_at > self.interval * SILENT_AFTER_INTERVALS

    def encode(self) -> bytes:
        return orjson.dumps({
            "worker": self.worker, "started_at": self.started_at, "published_at": self.published_at,
            "interval": self.interval, "assigned": self.assigned, "leader": self.leader,
            "gates": [gate.as_dict() for gate in self.gates],
        })

    @classmethod
    def decode(cls, value: bytes) -> WorkerReport:
        """Raises ValueError on anything that is not a report (the topic is ours, but be strict)."""
        try:
            raw: Any = orjson.loads(value)
            return cls(
                worker=str(raw["worker"]), started_at=float(raw["started_at"]),
                published_at=float(raw["published_at"]), interval=float(raw["interval"]),
                assigned={str(t): [int(p) for p in ps] for t, ps in dict(raw.get("assigned") or {}).items()},
                leader=bool(raw.get("leader", False)),
                gates=tuple(_gate(g) for g in raw.get("gates") or ()),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a worker report: {exc}") from exc


def _gate(raw: dict[str, Any]) -> Gate:
    until = raw.get("until")
    return Gate(GateName(raw["gate"]), str(raw["scope"]), str(raw["reason"]), float(raw["since"]),
                None if until is None else float(until))
