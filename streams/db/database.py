"""The Postgres seam of a worker: one pool, transactions, and psycopg's errors turned into ours.

Stores (streams/db/*_store.py) run their statements in `Database.transaction()`; what fails in
there leaves as DatabaseUnavailable (retry later: the server is down or busy, a deadlock, a
timeout) or DatabaseRejected (the data itself is refused), never as a psycopg exception, so the
code above the stores classifies failures by our own types. The pool opens on first use,
inside the event loop that uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import psycopg
from psycopg.types.json import set_json_dumps
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from streams.db.connect import conninfo
from streams.errors import DatabaseRejected, DatabaseUnavailable, StreamsError
from streams.settings import Settings

# serialization_failure, deadlock_detected, lock_not_available, query_canceled (statement timeout),
# admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections, read_only_sql_transaction
# (a replica promoted meanwhile).
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "53300", "25006"})


def translate(error: BaseException) -> StreamsError | None:
    """Our error for a psycopg (or pool) error; None for anything else."""
    if isinstance(error, PoolTimeout):
        return DatabaseUnavailable(f"no database connection free: {error}")
    if isinstance(error, psycopg.OperationalError):
        return DatabaseUnavailable(f"{type(error).__name__}: {str(error)[:300]}")
    if isinstance(error, psycopg.Error):
        if getattr(error, "sqlstate", None) in TRANSIENT_SQLSTATES:
            return DatabaseUnavailable(f"{type(error).__name__}: {str(error)[:300]}")
        return DatabaseRejected(f"{type(error).__name__}: {str(error)[:300]}")
    return None


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # orjson instead of the standard json module for every jsonb parameter and COPY value.
    set_json_dumps(orjson.dumps, context=conn)


class Database:
    def __init__(self, settings: Settings, *, name: str = "streams-worker") -> None:
        self.settings = settings
        self.name = name
        self._pool: AsyncConnectionPool | None = None
        self._lock = asyncio.Lock()

    async def _open(self) -> AsyncConnectionPool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    timeout = self.settings.database_timeout
                    pool = AsyncConnectionPool(
                        conninfo(self.settings), min_size=1, max_size=self.settings.database_pool_size,
                        open=False, timeout=timeout, configure=_configure, name=self.name,
                        kwargs={"connect_timeout": int(timeout),
                                "options": f"-c statement_timeout={int(timeout * 1000)}"},
                    )
                    await pool.open(wait=True, timeout=timeout)
                    self._pool = pool
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection in autocommit-free mode; errors translated."""
        try:
            pool = await self._open()
            async with pool.connection() as conn:
                yield conn
        except (psycopg.Error, PoolTimeout) as exc:
            raise translate(exc) from exc  # type: ignore[misc]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        async with self.connection() as conn:
            try:
                async with conn.transaction():
                    yield conn
            except (psycopg.Error, PoolTimeout) as exc:
                raise translate(exc) from exc  # type: ignore[misc]

    async def healthy(self) -> bool:
        try:
            async with asyncio.timeout(self.settings.database_timeout), self.connection() as conn:
                await conn.execute("SELECT 1")
        except (StreamsError, TimeoutError, OSError):
            return False
        return True

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
