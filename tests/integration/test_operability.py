"""What an operator sees, on a real broker, Postgres and reference target: `streams status --json`,
`streams trace`, and a running worker's `/metrics` and `/health`, each checked against the
state a scenario put the pipeline in."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.client.generate import generate_entities
from streams.dev.processes import free_port
from streams.kafka.topics import topic_names
from streams.pipeline.outcomes import State
from streams.settings import Settings, to_env
from streams.target.faults import Faults
from streams.target.launch import TargetProcess
from tests.helpers import rows, send_run, settled, state_counts, wait_for
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration


def cli(settings: Settings, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("STREAMS_")}
    env.update(to_env(settings))
    env["STREAMS_DLQ_REQUESTED_BY"] = "tester@ci"
    done = subprocess.run([sys.executable, "-m", "streams", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"streams {' '.join(args)}: {done.stderr[-2000:]}"
    return done


def status_json(settings: Settings, cwd: Path) -> dict[str, Any]:
    return orjson.loads(cli(settings, "status", "--json", cwd=cwd).stdout)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def metric(port: int, name: str, **labels: str) -> float | None:
    return scrape(port).get((name, tuple(sorted(labels.items()))))


def health(port: int, path: str = "/health") -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=15)


def answers(port: int) -> bool:
    try:
        return health(port, "/health/live").status_code == 200
    except httpx.HTTPError:
        return False


def test_status_metrics_and_health_follow_the_pipeline_and_name_the_open_breaker(
        pipeline: Settings, workers: Workers, target: TargetProcess, tmp_path: Path) -> None:
    port = free_port()
    settings = pipeline.model_copy(update={"worker_port": port, "metrics_interval": 1.0, "status_interval": 1.0,
                                           "breaker_threshold": 2, "breaker_cooldown": 30.0})
    names = topic_names(settings)
    target.set_faults(Faults(permanent_rate=0.2, seed=3))
    workers.start(settings)
    wait_for(lambda: answers(port), timeout=60, what="the worker's HTTP port", alive=workers.alive)
    send_run(settings, "run-o", list(generate_entities(400, seed=21, duplicate_ratio=0.0)), batch_size=100)
    wait_for(lambda: settled(settings, "run-o", 400), timeout=90, what="run-o settled", alive=workers.alive)
    counts = state_counts(settings, "run-o")
    applied, errored = counts.get(State.APPLIED, 0), counts.get(State.ERRORED, 0)
    assert applied and errored

    # /metrics: the leader's backlog gauges agree with the database and the groups' offsets.
    def backlog_exported() -> bool:
        found = scrape(port)
        return (found.get(("streams_rows", (("state", "APPLIED"),))) == applied
                and found.get(("streams_rows_errored", (("error_class", "permanent"),))) == errored
                and found.get(("streams_consumer_lag", (("topic", "ingest"),))) == 0
                and found.get(("streams_consumer_lag", (("topic", "work"),))) == 0
                and found.get(("streams_open_runs", ())) == 0)
    wait_for(backlog_exported, timeout=60, what="the backlog gauges", alive=workers.alive)
    found = scrape(port)
    assert found[("streams_entities_total", (("outcome", "applied"),))] == applied
    assert found[("streams_target_request_seconds_count", ())] >= 1
    statuses = {dict(labels)["status"] for name, labels in found if name == "streams_target_requests_total"}
    assert statuses and statuses <= {"200", "207"}
    assert found[("streams_tier_depth", (("tier", "retry-1"),))] == 0
    assert found[("streams_dlq_topic_records", ())] >= 1
    assert found[("streams_gates_open", (("gate", "breaker_open"),))] == 0

    ok = health(port)
    assert ok.status_code == 200, ok.text
    checks = ok.json()["checks"]
    assert {name: check["ok"] for name, check in checks.items()} == {"kafka": True, "postgres": True, "target": True}
    assert health(port, "/health/ready").status_code == 200

    # status --json: drained lag, the dead letters by class and run, the worker and its partitions.
    status = status_json(settings, tmp_path)
    assert status["problems"] == [] and status["gates"] == []
    lag = {entry["topic"]: entry["total"] for entry in status["lag"]}
    assert lag[names.ingest] == 0 and lag[names.work] == 0
    assert {entry["key"]: entry["count"] for entry in status["dead_letters"]["errored_by_class"]} == {
        "permanent": errored}
    assert [entry["key"] for entry in status["dead_letters"]["errored_by_run"]] == ["run-o"]
    assert status["rows"]["by_state"]["APPLIED"] == applied
    [worker] = status["workers"]
    assert worker["leader"] and not worker["silent"] and sorted(worker["assigned"][names.work]) == [0, 1]

    # The target stops: the breaker opens, and every view names it as the reason nothing moves.
    target.stop()
    stopped_at = time.time()
    send_run(settings, "run-b", list(generate_entities(50, seed=22, duplicate_ratio=0.0)), batch_size=50)

    def breaker_named() -> dict[str, Any] | None:
        response = health(port)
        if response.status_code != 503:
            return None
        target_check = response.json()["checks"]["target"]
        return target_check if not target_check["ok"] else None
    target_check = wait_for(breaker_named, timeout=60, what="/health to report the target", alive=workers.alive)
    assert target_check["detail"].startswith("breaker_open")
    assert stopped_at - 1 <= target_check["since"] <= time.time()
    assert health(port, "/health/ready").json()["failing"] == ["target"]
    assert health(port, "/health/live").status_code == 200  # waiting out a target is no reason to restart
    assert metric(port, "streams_gates_open", gate="breaker_open") == 1
    assert stopped_at - 1 <= (metric(port, "streams_gate_open_since_seconds", gate="breaker_open") or 0)

    def gate_in_status() -> dict[str, Any] | None:
        gates = [gate for gate in status_json(settings, tmp_path)["gates"] if gate["gate"] == "breaker_open"]
        return gates[0] if gates else None
    gate = wait_for(gate_in_status, timeout=30, what="status to show the open breaker", alive=workers.alive)
    assert gate["scope"] == "target" and gate["reason"] and stopped_at - 1 <= gate["since"] <= time.time()
    rendered = cli(settings, "status", cwd=tmp_path).stdout
    assert "breaker_open" in rendered


def test_trace_shows_every_step_of_an_entity_through_two_tiers_and_a_replay(
        pipeline: Settings, workers: Workers, target: TargetProcess, tmp_path: Path) -> None:
    # Every entity fails its first three receipts (the plugin's deadlock code, transient): attempt
    # 1, tier 1, tier 2, then the dead letter; a replay applies it.
    target.set_faults(Faults(fail_first=3))
    workers.start()
    entities = list(generate_entities(3, seed=31, duplicate_ratio=0.0))
    send_run(pipeline, "run-t", entities, batch_size=3)
    wait_for(lambda: state_counts(pipeline, "run-t").get(State.ERRORED, 0) == 3, timeout=90,
             what="the run dead-lettered after both tiers", alive=workers.alive)
    target.set_faults(Faults())
    cli(pipeline, "dlq", "replay", "--run", "run-t", cwd=tmp_path)
    wait_for(lambda: settled(pipeline, "run-t", 3) and state_counts(pipeline, "run-t").get(State.APPLIED) == 3,
             timeout=60, what="the replayed entities applied", alive=workers.alive)
    [(entity_id, request_id)] = rows(pipeline, "SELECT id::text, request_id FROM ingestion_logs"
                                               " WHERE run_id = 'run-t' ORDER BY id LIMIT 1")

    [traced] = orjson.loads(cli(pipeline, "trace", entity_id, "--json", cwd=tmp_path).stdout)
    entity = traced["entity"]
    assert entity["state"] == "APPLIED" and entity["source_topic"] == topic_names(pipeline).ingest
    assert entity["source_offset"] is not None
    steps = [(step["step"], step["attempt"], step["tier"]) for step in traced["steps"]]
    # A failed attempt's step is where it went: a tier (with its due time) or the dead letter.
    assert steps == [
        ("retry", 1, 1), ("retry", 2, 2), ("dead_letter", 3, None), ("errored", 3, None),
        ("requeued", 0, None), ("outcome", 1, None),
    ], steps
    failed = traced["steps"][:3]
    assert all(step["error"]["class"] == "transient" and step["error"]["message"] == "apply: db_deadlock_after_retries"
               for step in failed)
    assert [step["state"] for step in traced["steps"]] == [
        "PENDING_RETRY", "PENDING_RETRY", "FAILED", "ERRORED", "QUEUED", "APPLIED"]
    assert [replay["requested_by"] for replay in traced["replays"]] == ["tester@ci"]
    assert traced["change_sets"] and traced["change_sets"][-1]["changes"]

    # The same entity found by its producer's request and its hash; the table names every step.
    by_request = orjson.loads(cli(pipeline, "trace", "--request", request_id, "--json", cwd=tmp_path).stdout)
    assert any(entity_id in orjson.dumps(item).decode() for item in by_request)
    table = cli(pipeline, "trace", entity_id, cwd=tmp_path).stdout
    for word in ("dead_letter", "requeued", "retry", "db_deadlock_after_retries"):
        assert word in table
