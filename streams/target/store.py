"""The reference target's Postgres seam: a connection pool and the named SQL of `sql/target/`.

Only this module imports psycopg for the target. The server plans in Python and calls the
bulk statements here: one lookup of stored results, one fetch of existing objects, and, in one
transaction, one upsert of every object written and one insert of every new result (which also
appends each id to the receipt log `streams_target.applies`, in the same statement).

Concurrency is optimistic. Reads happen outside the write transaction; the upsert only writes
a row still at the version that was read, and the result insert skips ids stored meanwhile.
Either shortfall raises `WriteConflict` (the transaction rolls back, nothing is written) and the
server plans the request again from fresh reads. A deadlock between two requests is reported
the same way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from streams.db import queries as named_sql
from streams.package_data import sql_dir

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (object_type, natural_key)



class StoreUnavailable(Exception):
    """The database could not serve the request (down, pool exhausted, statement timeout)."""


class StoreRejected(Exception):
    """Postgres refused a value of the request (e.g. `\\u0000` in a string): permanent."""


class WriteConflict(Exception):
    """A concurrent request wrote some of the same objects or ids; plan again and retry."""


@dataclass(frozen=True)
class StoredObject:
    object_id: int
    version: int
    data: dict[str, Any]


@dataclass(frozen=True)
class ObjectWrite:
    object_type: str
    natural_key: str
    data_json: str
    version: int  # the version it will have: the version read + 1, or 1 for a create


def queries() -> dict[str, str]:
    return named_sql.load(sql_dir() / "target" / "queries.sql")


def schema_sql() -> str:
    return (sql_dir() / "target" / "schema.sql").read_text(encoding="utf-8")


class TargetStore:
    """A pool of connections to the target's database. `open()` also applies schema.sql."""

    def __init__(self, database_url: str, *, pool_size: int = 8, statement_timeout: float = 10.0) -> None:
        self._timeout = statement_timeout
        self._conninfo = database_url
        self._connect_timeout = max(1, int(statement_timeout))
        self._pool = AsyncConnectionPool(
            database_url,
            min_size=pool_size,
            max_size=pool_size,
            open=False,
            timeout=statement_timeout,
            kwargs={"autocommit": True, "connect_timeout": self._connect_timeout},
            configure=self._configure,
            name="streams-target",
        )

    async def _configure(self, conn: psycopg.AsyncConnection) -> None:
        # A stuck statement must fail the request (503, retried) rather than hold a connection.
        timeout = f"{int(self._timeout * 1000)}ms"
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout,))
        # The reference target is a test double: not waiting for the WAL flush at each commit
        # keeps it off the critical path of benchmarks. A Postgres crash can then lose the last
        # commits, objects and results together, so the data still holds each id at most once.
        await conn.execute("SET synchronous_commit = off")

    async def open(self) -> None:
        # One plain connection first: a wrong URL fails now with Postgres's own message, where the
        # pool would retry quietly until its timeout.
        probe = await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=self._connect_timeout)
        await probe.close()
        await self._pool.open(wait=True, timeout=self._timeout)
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(queries()["lock_schema"])
                await conn.execute(schema_sql())  # a trusted file from sql/
        except BaseException:
            await self._pool.close()
            raise
        log.info("target schema ready")

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """One connection for the reads and the write of one request."""
        try:
            async with self._pool.connection() as conn:
                yield Session(conn)
        except pg_errors.DataError as exc:
            raise StoreRejected(f"{type(exc).__name__}: {exc.diag.message_primary}") from exc
        except PoolTimeout as exc:
            raise StoreUnavailable("no database connection free") from exc
        except (psycopg.OperationalError, pg_errors.QueryCanceled) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    async def count_results(self) -> int:
        async with self.session() as session:
            return await session.count_results()


class Session:
    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self._conn = conn

    async def _rows(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        cursor = await self._conn.execute(queries()[name], params)
        return await cursor.fetchall()

    async def stored_results(self, ids: Sequence[str]) -> dict[str, str]:
        """{canonical id: change set JSON text} for the ids that already have a result."""
        if not ids:
            return {}
        return dict(await self._rows("fetch_results", {"ids": list(ids)}))

    async def fetch_objects(self, keys: Sequence[Key]) -> dict[Key, StoredObject]:
        if not keys:
            return {}
        rows = await self._rows(
            "fetch_objects", {"object_types": [k[0] for k in keys], "natural_keys": [k[1] for k in keys]}
        )
        return {(t, k): StoredObject(object_id, version, orjson.loads(data))
                for t, k, object_id, version, data in rows}

    async def count_results(self) -> int:
        rows = await self._rows("count_results", {})
        return int(rows[0][0])

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction; `WriteConflict` raised inside (or a deadlock) rolls it back."""
        try:
            async with self._conn.transaction():
                yield Transaction(self)
        except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
            raise WriteConflict(type(exc).__name__) from exc


class Transaction:
    def __init__(self, session: Session) -> None:
        self._session = session

    async def upsert_objects(self, writes: Sequence[ObjectWrite]) -> dict[Key, int]:
        """Write every object; return their ids by key. Raises WriteConflict if any row moved."""
        if not writes:
            return {}
        rows = await self._session._rows("upsert_objects", {
            "object_types": [w.object_type for w in writes],
            "natural_keys": [w.natural_key for w in writes],
            "data": [w.data_json for w in writes],
            "versions": [w.version for w in writes],
        })
        if len(rows) != len(writes):
            raise WriteConflict(f"{len(writes) - len(rows)} objects changed since they were read")
        return {(t, k): object_id for t, k, object_id in rows}

    async def insert_results(self, results: Sequence[tuple[str, str, str]]) -> None:
        """Store (canonical id, change set JSON, change type) and append each id to the receipt
        log `applies`. Raises WriteConflict if an id exists."""
        if not results:
            return
        rows = await self._session._rows("insert_results", {
            "ids": [r[0] for r in results], "change_sets": [r[1] for r in results],
            "change_types": [r[2] for r in results]})
        if len(rows) != len(results):
            raise WriteConflict(f"{len(results) - len(rows)} ids were applied by a concurrent request")
