"""`streams dev up | down | status | env`: the local Kafka and Postgres as one unit, and
`streams dev netbox up | down | status`: a real NetBox with the diode plugin beside them.

A service named by STREAMS_KAFKA_BOOTSTRAP or STREAMS_DATABASE_URL is external and never
started or stopped here, unless the value is the address of our own dev service (which is what
`eval "$(streams dev env)"` leaves in a shell). NetBox keeps its database on the dev Postgres
(started if needed) or on the external server, in a database of its own named `netbox`.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streams.dev import kafka_broker, netbox, netbox_install, paths, postgres_server
from streams.dev.processes import ServiceState, is_running, stop_pid
from streams.settings import Settings


@dataclass(frozen=True)
class ServiceReport:
    name: str
    running: bool
    external: bool
    url: str | None
    pid: int | None
    version: str | None
    note: str = ""


def home(settings: Settings) -> Path:
    return settings.dev_home or paths.default_dev_home()


def _database_url(settings: Settings) -> str | None:
    return settings.database_url.get_secret_value() if settings.database_url else None


def _external(configured: str | None, local: ServiceState | None) -> bool:
    return bool(configured) and not (local is not None and configured == local.url)


def up(settings: Settings) -> list[ServiceReport]:
    base = home(settings)
    base.mkdir(parents=True, exist_ok=True)
    reports = []
    if _external(settings.kafka_bootstrap, kafka_broker.state(base)):
        reports.append(ServiceReport("kafka", True, True, settings.kafka_bootstrap, None, None, "external"))
    else:
        state, started = kafka_broker.start(
            base, version=settings.kafka_version, heap=settings.kafka_heap, maven_repo=settings.maven_repo
        )
        reports.append(_report(state, "started" if started else "already running"))
    if _external(_database_url(settings), postgres_server.state(base)):
        reports.append(ServiceReport("postgres", True, True, "(from STREAMS_DATABASE_URL)", None, None, "external"))
    else:
        state, started = postgres_server.start(base)
        reports.append(_report(state, "started" if started else "already running"))
    return reports


def down(settings: Settings) -> list[ServiceReport]:
    """Stop exactly the processes `up` started, by pid; leave their data for the next `up`. A dev
    NetBox keeps its database on this Postgres, so it is stopped first when it runs."""
    base = home(settings)
    reports = [report for report in netbox_down(settings) if report.note == "stopped"]
    # Postgres: SIGINT is its "fast" shutdown (roll back, checkpoint, exit).
    for name, current, sig in (
        ("kafka", kafka_broker.state(base), signal.SIGTERM),
        ("postgres", postgres_server.state(base), signal.SIGINT),
    ):
        if current is not None and is_running(current):
            stop_pid(current.pid, sig=sig, timeout=60)
            reports.append(ServiceReport(name, False, False, current.url, current.pid, current.version, "stopped"))
        else:
            reports.append(ServiceReport(name, False, False, None, None, None, "not running"))
    return reports


def status(settings: Settings) -> list[ServiceReport]:
    base = home(settings)
    reports = []
    for name, current, configured in (
        ("kafka", kafka_broker.state(base), settings.kafka_bootstrap),
        ("postgres", postgres_server.state(base), _database_url(settings)),
    ):
        if _external(configured, current):
            shown = configured if name == "kafka" else "(from STREAMS_DATABASE_URL)"
            reports.append(ServiceReport(name, True, True, shown, None, None, "external"))
        elif current is not None and is_running(current):
            reports.append(_report(current, ""))
        else:
            stale = " (stale state file)" if current is not None else ""
            reports.append(ServiceReport(name, False, False, None, None, None, "not running" + stale))
    return reports


def env_lines(settings: Settings) -> list[str]:
    """`export` lines for the running local services (nothing for a stopped one)."""
    base = home(settings)
    lines = []
    kafka = kafka_broker.state(base)
    if is_running(kafka):
        assert kafka is not None
        lines.append(f"export STREAMS_KAFKA_BOOTSTRAP={kafka.url}")
    postgres = postgres_server.state(base)
    if is_running(postgres):
        assert postgres is not None
        lines.append(f"export STREAMS_DATABASE_URL={postgres.url}")
    stack = netbox.state(base)
    if stack is not None:
        lines += [f"export {name}={shlex.quote(value)}" for name, value in netbox_env(stack).items()]
    return lines


def netbox_env(stack: netbox.NetBoxState) -> dict[str, str]:
    """The variables that point `streams` (the target) and a shell (NetBox's REST API) at NetBox."""
    return {
        "STREAMS_TARGET_URL": stack.target_url,
        "STREAMS_TARGET_TOKEN_URL": stack.token_url,
        "STREAMS_TARGET_CLIENT_ID": stack.client_id,
        "STREAMS_TARGET_CLIENT_SECRET": stack.client_secret,
        "STREAMS_TARGET_SCOPE": stack.scope,
        "NETBOX_URL": stack.url,
        "NETBOX_API_TOKEN": stack.api_token,
    }


def with_local_services(settings: Settings) -> Settings:
    """Fill unset service addresses from running `streams dev` services."""
    base = home(settings)
    updates: dict[str, object] = {}
    kafka = kafka_broker.state(base)
    if not settings.kafka_bootstrap and is_running(kafka):
        assert kafka is not None
        updates["kafka_bootstrap"] = kafka.url
    postgres = postgres_server.state(base)
    if settings.database_url is None and is_running(postgres):
        assert postgres is not None
        from pydantic import SecretStr

        updates["database_url"] = SecretStr(postgres.url)
    return settings.model_copy(update=updates) if updates else settings


def _report(state: ServiceState, note: str) -> ServiceReport:
    return ServiceReport(state.name, True, False, state.url, state.pid, state.version, note)


# --- NetBox ---------------------------------------------------------------------------------

_NETBOX_NAMES = {"valkey": "valkey", "oauth": "oauth2", "gunicorn": "netbox"}


@dataclass(frozen=True)
class NetBoxUp:
    reports: list[ServiceReport]
    warm: bool  # the virtualenv and the migrated template came from the cache


def netbox_up(settings: Settings, progress: Callable[[str], None] = lambda _: None) -> NetBoxUp:
    """Start NetBox, its helpers and (unless external) the dev Postgres its database lives on."""
    _, python_version = netbox_install.find_python(settings.netbox_python)
    warm = netbox_install.is_warm(python_version, settings.netbox_cache)
    base = home(settings)
    base.mkdir(parents=True, exist_ok=True)
    configured = _database_url(settings)
    if configured and _external(configured, postgres_server.state(base)):
        server_url = configured
        reports = [ServiceReport("postgres", True, True, "(from STREAMS_DATABASE_URL)", None, None, "external")]
    else:
        if not is_running(postgres_server.state(base)):
            progress("starting Postgres…")
        pg, started = postgres_server.start(base)
        server_url = pg.url
        reports = [_report(pg, "started" if started else "already running")]
    was_running = netbox.state(base) is not None
    netbox.start(base, server_url, python=settings.netbox_python, cache=settings.netbox_cache, progress=progress)
    return NetBoxUp(reports + _netbox_reports(base, "already running" if was_running else "started"), warm)


def netbox_down(settings: Settings) -> list[ServiceReport]:
    """Stop NetBox's processes by pid. Postgres is shared with `streams dev up`: `streams dev down` stops it."""
    reports = []
    for name, current, was_running in netbox.stop(home(settings)):
        shown = _NETBOX_NAMES[name]
        if was_running and current is not None:
            reports.append(ServiceReport(shown, False, False, current.url, current.pid, current.version, "stopped"))
        else:
            reports.append(ServiceReport(shown, False, False, None, None, None, "not running"))
    return reports


def netbox_status(settings: Settings) -> list[ServiceReport]:
    postgres = [report for report in status(settings) if report.name == "postgres"]
    return postgres + _netbox_reports(home(settings), "")


def _netbox_reports(base: Path, note: str) -> list[ServiceReport]:
    reports = []
    for name, current in netbox.components(base).items():
        if current is not None and is_running(current):
            reports.append(ServiceReport(_NETBOX_NAMES[name], True, False, current.url, current.pid, current.version,
                                         note))
        else:
            stale = " (stale state file)" if current is not None else ""
            reports.append(ServiceReport(_NETBOX_NAMES[name], False, False, None, None, None, "not running" + stale))
    return reports
