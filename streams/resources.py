"""What a worker holds open: the Postgres seam and the target client, made on first use inside
faust's event loop and closed when the worker stops."""

from __future__ import annotations

import mode

from streams.db.database import Database
from streams.settings import Settings
from streams.target.client import TargetClient


class Resources:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings)
        self._target: TargetClient | None = None

    def target(self) -> TargetClient:
        """Made on first use: a topology without plan-apply needs no target URL."""
        if self._target is None:
            self._target = TargetClient(self.settings)
        return self._target

    async def close(self) -> None:
        await self.db.close()
        if self._target is not None:
            await self._target.aclose()
            self._target = None


def closing_service(resources: Resources) -> type[mode.Service]:
    """A mode service that closes `resources` when the faust app stops."""

    class CloseResources(mode.Service):
        async def on_stop(self) -> None:
            await resources.close()

    return CloseResources
