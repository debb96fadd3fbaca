"""The connections a worker holds: one Postgres pool and one target client, opened on first use
inside faust's event loop and closed when the worker stops."""

from __future__ import annotations

import asyncio

import mode
import orjson
import psycopg
from psycopg.types.json import set_json_dumps
from psycopg_pool import AsyncConnectionPool

from streams.db.connect import conninfo
from streams.settings import Settings
from streams.target.client import TargetClient


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # orjson instead of the standard json module for every jsonb parameter and COPY value.
    set_json_dumps(orjson.dumps, context=conn)


class Resources:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: AsyncConnectionPool | None = None
        self._target: TargetClient | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    timeout = self.settings.database_timeout
                    pool = AsyncConnectionPool(
                        conninfo(self.settings),
                        min_size=1,
                        max_size=self.settings.database_pool_size,
                        open=False,
                        timeout=timeout,
                        configure=_configure,
                        kwargs={"connect_timeout": int(timeout),
                                "options": f"-c statement_timeout={int(timeout * 1000)}"},
                        name="streams-worker",
                    )
                    await pool.open(wait=True, timeout=timeout)
                    self._pool = pool
        return self._pool

    def target(self) -> TargetClient:
        if self._target is None:
            self._target = TargetClient(self.settings)
        return self._target

    async def healthy(self) -> bool:
        try:
            pool = await asyncio.wait_for(self.pool(), self.settings.database_timeout)
            async with pool.connection(timeout=5) as conn:
                await conn.execute("SELECT 1")
        except Exception:  # noqa: BLE001 - health is a yes/no answer
            return False
        return True

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._target is not None:
            await self._target.aclose()
            self._target = None


def closing_service(resources: Resources) -> type[mode.Service]:
    """A mode service that closes `resources` when the faust app stops."""

    class CloseResources(mode.Service):
        async def on_stop(self) -> None:
            await resources.close()

    return CloseResources
