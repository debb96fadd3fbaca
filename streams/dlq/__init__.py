"""Dead-letter tooling: read the DLQ topic, select and summarise dead letters, replay them.

    letters.py   the DeadLetter record, built from a Kafka message (pure)
    reader.py    reads the DLQ topic from its start to its current end (the Kafka seam)
    select.py    filters, ordering, limits and summaries (pure)
    plan.py      what a replay does with each selected record, and the records it sends (pure)
    store.py     the replay's Postgres work: row requeues, markers, the audit row
    sender.py    an idempotent producer whose delivery is checked at flush
    replay.py    the replay itself: plan, then per batch requeue → produce → flush → mark sent
"""

from __future__ import annotations

from streams.errors import StreamsError


class DlqError(StreamsError):
    """The DLQ topic cannot be read, a replay cannot start, or its records were not delivered."""
