"""Plain-SQL migrations from `sql/migrations/NNNN_name.sql`, applied in order, once each.

Applied versions and a checksum of each file are recorded in `schema_migrations`. A session
advisory lock serialises concurrent runs (several workers starting at once), each file applies
in its own transaction, and a file changed after it was applied stops the run: editing history
would leave databases that claim the same version with different schemas.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from streams.errors import MigrationError
from streams.package_data import sql_dir

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same for every `streams migrate`.
_LOCK_KEY = 0x5354524D  # "STRM"

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text        PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(folder: Path | None = None) -> list[Migration]:
    folder = folder or sql_dir() / "migrations"
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        migrations.append(Migration(match.group(1), match.group(2), path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def migrate(conninfo: str, migrations: list[Migration] | None = None, *, timeout: float = 30.0) -> list[str]:
    """Apply what is missing; return the versions applied now (empty when up to date)."""
    migrations = discover() if migrations is None else migrations
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=int(timeout)) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_BOOKKEEPING)
            done = {
                version: checksum
                for version, checksum in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"{migration.version}_{migration.name}.sql changed after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                _apply(conn, migration)
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def _apply(conn: psycopg.Connection, migration: Migration) -> None:
    try:
        with conn.transaction():
            conn.execute(migration.sql)  # a trusted file from sql/
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as exc:
        raise MigrationError(f"{migration.version}_{migration.name}.sql failed: {exc}") from exc
    log.info("migration applied", extra={"version": migration.version, "migration": migration.name})
