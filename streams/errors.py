"""Every exception `streams` raises on purpose derives from `StreamsError`.

    StreamsError
    ├── SettingsError          a setting is missing or malformed; raised before any I/O
    ├── DevServiceError        `streams dev` could not fetch, start or stop a local service
    ├── MigrationError         a migration file is malformed or failed to apply
    ├── TopicError             a topic could not be created or does not match its definition
    ├── TargetUnavailable      the target is down (breaker open) or refuses our credentials
    ├── DatabaseUnavailable    Postgres cannot be reached or could not serve a statement now
    ├── DatabaseRejected       Postgres refuses what a record holds (a value it cannot store)
    └── RecordError            an ingest record is unusable; carries an error class
        └── InvalidRecord      not JSON, fails the schema, or too large (error class `invalid`)

Errors are classified once, at the seam that sees them, so the code between seams switches on
types and never parses messages.
"""

from __future__ import annotations


class StreamsError(Exception):
    """Root of the `streams` exception hierarchy."""


class SettingsError(StreamsError):
    """A setting is missing or malformed. The message is one line naming the variable."""


class DevServiceError(StreamsError):
    """A local development service (Kafka, Postgres) could not be prepared, started or stopped."""


class MigrationError(StreamsError):
    """A migration could not be read or applied."""


class TopicError(StreamsError):
    """A topic could not be created, or exists with a definition that does not match."""


class TargetUnavailable(StreamsError):
    """The target cannot take work now. Records wait (unacked) instead of climbing the tiers."""

    def __init__(self, reason: str, retry_in: float) -> None:
        super().__init__(reason)
        self.retry_in = retry_in


class DatabaseUnavailable(StreamsError):
    """Postgres is down, restarting, out of connections, or gave up on a statement (deadlock,
    serialization, timeout): nothing about the record; the same work succeeds later."""


class DatabaseRejected(StreamsError):
    """Postgres refuses a value of the record (a NUL in a string, a number out of range): the
    same work fails again, so the record is dead-lettered."""


class RecordError(StreamsError):
    """An ingest record cannot be processed. `error_class` is the value of `x-error-class`."""

    error_class = "permanent"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidRecord(RecordError):
    """Not JSON, fails the JSON Schema, or larger than `STREAMS_MAX_RECORD_BYTES`."""

    error_class = "invalid"
