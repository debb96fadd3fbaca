"""The replay's Postgres work: the lock, the markers, the row requeues and the audit row.

One connection for a whole replay, in autocommit mode with explicit transactions, so the
session lock and the transactions are plainly visible in the order they happen.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from streams.db.connect import conninfo
from streams.db.queries import named
from streams.dlq import DlqError
from streams.dlq.plan import Action, Destination, Marker, assign_ids
from streams.settings import Settings

Q = named("dlq")
# Any constant works; it only has to be the same for every `streams dlq replay`.
_LOCK_KEY = 0x444C5152  # "DLQR"


class ReplayStore:
    def __init__(self, conn: psycopg.Connection[Any], dlq_topic: str) -> None:
        self.conn = conn
        self.topic = dlq_topic

    def try_lock(self) -> bool:
        row = self.conn.execute(Q["try_lock"], {"key": _LOCK_KEY}).fetchone()
        return bool(row and row[0])

    def markers(self) -> dict[tuple[int, int], Marker]:
        rows = self.conn.execute(Q["markers"], {"topic": self.topic}).fetchall()
        return {(p, o): Marker(p, o, str(replay_id), status, Destination(dest), tuple(str(i) for i in ids))
                for p, o, replay_id, status, dest, ids in rows}

    def errored(self, ids: Sequence[str]) -> set[str]:
        """Which of these rows are ERRORED now (read-only)."""
        rows = self.conn.execute(Q["errored_rows"], {"ids": [uuid.UUID(i) for i in ids]}).fetchall()
        return {str(row[0]) for row in rows}

    def start(self, replay_id: str, filters: dict[str, Any], destination: str, requested_by: str,
              again: bool) -> None:
        self.conn.execute(Q["insert_replay"], {
            "id": uuid.UUID(replay_id), "filters": Jsonb(filters), "destination": destination,
            "requested_by": requested_by, "again": again})

    def requeue(self, replay_id: str, actions: Sequence[Action], *, fresh: bool) -> list[tuple[str, ...]]:
        """One transaction: ERRORED rows of `actions` → QUEUED, and a pending marker for every
        action that has something to send. Returns the ids requeued per action, in order."""
        wanted = [uuid.UUID(i) for action in actions for i in action.entity_ids]
        with self.conn.transaction():
            requeued = {str(row[0]) for row in self.conn.execute(
                Q["requeue_rows"], {"ids": wanted, "fresh": fresh, "replay_id": replay_id}).fetchall()
            } if wanted else set()
            per_action = assign_ids(actions, requeued)
            markers = []
            for action, ids in zip(actions, per_action, strict=True):
                if ids or action.destination is Destination.INGEST:
                    markers.append({
                        "topic": self.topic, "partition": action.letter.partition,
                        "offset": action.letter.offset, "replay_id": uuid.UUID(replay_id),
                        "destination": action.destination.value, "entity_ids": [uuid.UUID(i) for i in ids]})
            if markers:
                with self.conn.cursor() as cursor:
                    cursor.executemany(Q["insert_marker"], markers)
        return per_action

    def mark_sent(self, sent_by: str, sent: Sequence[tuple[int, int, str]]) -> None:
        """(partition, offset, replay id) of records the broker confirmed: their markers → sent."""
        if not sent:
            return
        partitions, offsets, replay_ids = zip(*sent, strict=True)
        with self.conn.transaction():
            self.conn.execute(Q["mark_sent"], {
                "topic": self.topic, "sent_by": uuid.UUID(sent_by), "partitions": list(partitions),
                "offsets": list(offsets), "replay_ids": [uuid.UUID(r) for r in replay_ids]})

    def finish(self, replay_id: str, *, matched: int, replayed: int, resent: int, skipped: int,
               error: str | None) -> None:
        self.conn.execute(Q["finish_replay"], {
            "id": uuid.UUID(replay_id), "matched": matched, "replayed": replayed, "resent": resent,
            "skipped": skipped, "error": error})


@contextmanager
def open_store(settings: Settings, dlq_topic: str) -> Iterator[ReplayStore]:
    timeout = settings.database_timeout
    try:
        conn = psycopg.connect(conninfo(settings), autocommit=True, connect_timeout=max(1, int(timeout)),
                               options=f"-c statement_timeout={int(timeout * 1000)}")
    except psycopg.OperationalError as exc:
        raise DlqError(f"cannot connect to Postgres: {_first_line(exc)}") from exc
    try:
        with conn:
            yield ReplayStore(conn, dlq_topic)
    except psycopg.Error as exc:
        raise DlqError(f"Postgres: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    # psycopg messages can carry the connection string's host and user; one line is enough.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
