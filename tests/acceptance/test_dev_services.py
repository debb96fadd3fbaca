"""`streams dev up | status | env | down` as a user runs them, including a broker killed mid-way."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.acceptance.conftest import Run

pytestmark = pytest.mark.acceptance


def _pid(home: Path, service: str) -> int:
    return int(json.loads((home / service / "state.json").read_text())["pid"])


def _env(lines: str) -> dict[str, str]:
    pairs = [line.removeprefix("export ").split("=", 1) for line in lines.splitlines() if line.startswith("export ")]
    return dict(pairs)


def test_up_status_env_restart_down(streams_cli: Run, tmp_path: Path) -> None:
    home = tmp_path / "dev-home"
    env = {"STREAMS_DEV_HOME": str(home), "STREAMS_PARTITIONS": "2", "STREAMS_TOPIC_PREFIX": "acc."}

    up = streams_cli("dev", "up", env=env)
    assert up.returncode == 0, up.stderr
    kafka_pid, postgres_pid = _pid(home, "kafka"), _pid(home, "postgres")
    try:
        again = streams_cli("dev", "up", env=env)
        assert again.returncode == 0 and "already running" in again.stdout
        assert _pid(home, "kafka") == kafka_pid  # not started twice

        status = streams_cli("dev", "status", env=env)
        assert status.returncode == 0, status.stdout
        assert "4.2.1" in status.stdout and "18." in status.stdout  # Kafka and Postgres versions
        assert str(kafka_pid) in status.stdout and str(postgres_pid) in status.stdout

        exported = _env(streams_cli("dev", "env", env=env).stdout)
        assert set(exported) == {"STREAMS_KAFKA_BOOTSTRAP", "STREAMS_DATABASE_URL"}
        # The exported addresses work for the other commands, and `up` still sees its own services.
        with_env = {**env, **exported}
        assert streams_cli("migrate", env=with_env).returncode == 0
        created = streams_cli("topics", "create", env=with_env)
        assert created.returncode == 0, created.stderr
        assert streams_cli("dev", "up", env=with_env).returncode == 0
        assert _pid(home, "kafka") == kafka_pid

        # A broker killed hard comes back with its topics.
        os.kill(kafka_pid, signal.SIGKILL)
        psutil.Process(kafka_pid).wait(10) if psutil.pid_exists(kafka_pid) else None
        stale = streams_cli("dev", "status", env=env)
        assert stale.returncode == 3 and "stale" in stale.stdout
        restarted = streams_cli("dev", "up", env=env)
        assert restarted.returncode == 0, restarted.stderr
        new_kafka_pid = _pid(home, "kafka")
        assert new_kafka_pid != kafka_pid
        kafka_pid = new_kafka_pid
        described = streams_cli("topics", "describe", env={**env, **_env(streams_cli("dev", "env", env=env).stdout)})
        assert described.returncode == 0, described.stdout
        assert "acc.ingest.dlq" in described.stdout and "missing" not in described.stdout
    finally:
        down = streams_cli("dev", "down", env=env)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (psutil.pid_exists(kafka_pid) or psutil.pid_exists(postgres_pid)):
        time.sleep(0.1)
    assert not psutil.pid_exists(kafka_pid)
    assert not psutil.pid_exists(postgres_pid)
    assert streams_cli("dev", "env", env=env).stdout == ""
    assert streams_cli("dev", "status", env=env).returncode == 3


def test_external_services_are_not_started(streams_cli: Run, tmp_path: Path) -> None:
    env = {"STREAMS_DEV_HOME": str(tmp_path / "h"), "STREAMS_KAFKA_BOOTSTRAP": "broker.example:9092",
           "STREAMS_DATABASE_URL": "postgresql://u:secret@db.example/streams"}
    status = streams_cli("dev", "status", env=env)
    assert status.returncode == 0
    assert status.stdout.count("external") == 2
    assert "secret" not in status.stdout
    assert not (tmp_path / "h" / "kafka").exists()
