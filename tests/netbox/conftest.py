"""A real NetBox with the diode plugin for the session, started like `streams dev netbox up`.

Its home is inside the session's temporary service home and its database (a restore of the
cached migrated template, see streams/dev/netbox_db.py) on the session's Postgres. The first
session on a machine builds the cache (virtualenv and migration, minutes); later ones take
seconds. STREAMS_NETBOX_PYTHON and STREAMS_NETBOX_CACHE apply here too.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from streams.dev import netbox as dev_netbox
from streams.dev import netbox_db
from streams.dev.netbox import NetBoxState
from streams.settings import Settings
from tests.conftest import Services


@pytest.fixture(scope="session", name="netbox")
def netbox_stack(services: Services) -> Iterator[NetBoxState]:
    defaults = Settings()
    # A database name of its own, so sessions sharing an external Postgres do not share data.
    database = f"netbox_{uuid.uuid4().hex[:8]}"
    try:
        yield dev_netbox.start(services.home, services.database_url, database=database,
                               python=defaults.netbox_python, cache=defaults.netbox_cache)
    finally:
        dev_netbox.stop(services.home)
        with contextlib.suppress(psycopg.Error):  # never hide why the start failed
            netbox_db.drop(services.database_url, database)
