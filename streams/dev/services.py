"""`streams dev up | down | status | env`: the local Kafka and Postgres as one unit.

A service named by STREAMS_KAFKA_BOOTSTRAP or STREAMS_DATABASE_URL is external and never
started or stopped here, unless the value is the address of our own dev service (which is what
`eval "$(streams dev env)"` leaves in a shell).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from streams.dev import kafka_broker, paths, postgres_server
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
    """Stop exactly the processes `up` started, by pid; leave their data for the next `up`."""
    base = home(settings)
    reports = []
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
    return lines


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
