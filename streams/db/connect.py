"""Connection strings and pools for Postgres; the only place that turns settings into conninfo."""

from __future__ import annotations

from streams.errors import SettingsError
from streams.settings import Settings


def conninfo(settings: Settings) -> str:
    if settings.database_url is None:
        raise SettingsError("STREAMS_DATABASE_URL: not set and no `streams dev up` Postgres is running")
    return settings.database_url.get_secret_value()
