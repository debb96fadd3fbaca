"""Fixtures: one Kafka broker and one Postgres per test session, isolation per test.

The services come from STREAMS_KAFKA_BOOTSTRAP / STREAMS_DATABASE_URL when those are set
(an external broker or database), otherwise they are started here with the same code as
`streams dev up`, in a temporary home, and stopped by pid at the end of the session.
Each test gets its own topic prefix, consumer group and database (a copy of a migrated
template), so tests never see each other's records or rows.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from streams.db.migrate import migrate
from streams.dev import kafka_broker, postgres_server
from streams.dev.processes import stop_pid
from streams.kafka.admin import create_topics
from streams.kafka.topics import topology
from streams.settings import Settings

TEMPLATE_DB = "streams_test_template"


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    database_url: str  # a server-level URL; tests get databases of their own on it
    home: Path


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    # Not under pytest's tmp_path: pytest deletes old basetemp folders while a concurrent
    # session may still be running its broker and database there.
    home = Path(tempfile.mkdtemp(prefix="streams-test-services-"))
    started: list[tuple[int, int]] = []
    bootstrap = os.environ.get("STREAMS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        defaults = Settings()  # STREAMS_KAFKA_VERSION / STREAMS_MAVEN_REPO apply to the tests too
        state, _ = kafka_broker.start(home, version=defaults.kafka_version, heap="512m",
                                      maven_repo=defaults.maven_repo)
        started.append((state.pid, signal.SIGTERM))
        bootstrap = state.url
    database_url = os.environ.get("STREAMS_DATABASE_URL")
    if not database_url:
        # Durability is not under test; fsync off makes per-test databases cheap.
        state, _ = postgres_server.start(home, fsync=False)
        started.append((state.pid, signal.SIGINT))
        database_url = state.url
    with psycopg.connect(_with_database(database_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    migrate(_with_database(database_url, TEMPLATE_DB))
    try:
        yield Services(bootstrap, database_url, home)
    finally:
        for pid, sig in started:
            stop_pid(pid, sig=sig, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def database_url(services: Services) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin_url = _with_database(services.database_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE_DB)))
    try:
        yield _with_database(services.database_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def settings(services: Services, database_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: unique topic prefix and consumer group, short retry tiers."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=services.kafka_bootstrap,
        database_url=database_url,
        topic_prefix=f"t{tag}.",
        app_id=f"test-{tag}",
        partitions=2,
        retry_tiers="2s,4s",
        worker_port=0,
        dev_home=tmp_path / "dev",
    )


@pytest.fixture
def topics(settings: Settings) -> Settings:
    """The topology's topics, created under the test's prefix."""
    create_topics(settings, topology(settings))
    return settings
