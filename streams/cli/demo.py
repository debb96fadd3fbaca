"""`streams demo`: the whole topology from nothing, then stop everything it started.

Kafka and Postgres (unless running or external), a fresh `streams_demo` database, migrations,
topics under a fresh prefix, the reference target and one worker; then a few runs of generated
NetBox-like entities with duplicates, live progress per run, and a table of states per run.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from psycopg import sql
from pydantic import SecretStr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.cli.main import Context, console, fail, run_guarded
from streams.client.generate import generate_entities
from streams.client.producer import IngestProducer
from streams.db.connect import conninfo
from streams.db.migrate import migrate
from streams.db.reports import RunStates, run_states
from streams.dev import services
from streams.dev.workers import start_worker, stop_worker
from streams.kafka.admin import create_topics
from streams.settings import Settings
from streams.target.launch import start_target
from streams.topics import topology

DEMO_DATABASE = "streams_demo"
# (run id, generator seed, entities): the last run sweeps dc1 again, so it is all duplicates.
RUNS = (("dc1-sweep", 1, 6000), ("dc2-sweep", 2, 6000), ("dc3-sweep", 3, 6000), ("dc1-resweep", 1, 2000))


def demo(
    ctx: typer.Context,
    keep_services: Annotated[bool, typer.Option(help="Leave Kafka and Postgres running afterwards.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 300.0,
) -> None:
    """Start everything, ingest ~20k entities in four runs, show where every entity ended up."""
    context: Context = ctx.obj
    base = context.settings()
    started_at = time.monotonic()
    with ExitStack() as cleanup:
        with console.status("starting Kafka and Postgres (the first run downloads the Kafka jars)…"):
            running_before = {r.name for r in run_guarded(services.status, base) if r.running}
            run_guarded(services.up, base)
        if not keep_services and not running_before:
            cleanup.callback(lambda: run_guarded(services.down, base))
        settings = _demo_settings(services.with_local_services(base))
        console.print(f"database: {DEMO_DATABASE} (recreated); migrations: "
                      f"{', '.join(run_guarded(migrate, conninfo(settings))) or 'up to date'}")
        run_guarded(create_topics, settings, topology(settings))
        console.print(f"topics: {len(topology(settings))} under prefix {settings.topic_prefix!r}")

        logs = Path(tempfile.mkdtemp(prefix="streams-demo-"))
        target = start_target(conninfo(settings), log_path=logs / "target.log")
        cleanup.callback(target.stop)
        settings = settings.model_copy(update={"target_url": target.url})
        worker = start_worker(settings, log_path=logs / "worker.log")
        cleanup.callback(lambda: stop_worker(worker))
        console.print(f"reference target at {target.url}; worker pid {worker.pid}; logs in {logs}")

        with IngestProducer(settings) as producer:
            for run_id, seed, count in RUNS:
                producer.send_run(run_id, generate_entities(count, seed=seed, duplicate_ratio=0.1), batch_size=500)
        console.print(f"sent {sum(c for _, _, c in RUNS)} entities in {len(RUNS)} runs")
        final = _follow(settings, timeout, alive=lambda: worker.poll() is None)
    _report(final, time.monotonic() - started_at)
    if any(state.in_flight or state.settled < state.entities for state in final):
        fail(f"not every entity settled within {timeout:.0f}s; see the worker log", code=1)


def _demo_settings(settings: Settings) -> Settings:
    url = conninfo(settings)
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
    tag = uuid.uuid4().hex[:6]
    return settings.model_copy(update={
        "database_url": SecretStr(url.rsplit("/", 1)[0] + f"/{DEMO_DATABASE}"),
        "topic_prefix": f"demo-{tag}.", "app_id": f"demo-{tag}", "worker_port": 0, "partitions": 4,
    })


def _follow(settings: Settings, timeout: float, alive) -> list[RunStates]:  # type: ignore[no-untyped-def]
    """Live progress per run until every sent entity has an outcome."""
    wanted = {run_id: count for run_id, _, count in RUNS}
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    states: list[RunStates] = []
    with Progress(*columns, console=console) as progress:
        tasks = {run_id: progress.add_task(run_id, total=count, detail="") for run_id, count in wanted.items()}
        while time.monotonic() < deadline and alive():
            states = run_states(conninfo(settings), list(wanted))
            for state in states:
                progress.update(tasks[state.run_id], completed=state.settled,
                                detail=f"applied {state.applied}  no-change {state.no_changes}  "
                                       f"dup {state.duplicates}  in flight {state.in_flight}")
            if len(states) == len(wanted) and all(
                    s.entities == wanted[s.run_id] and s.settled == s.entities and not s.in_flight for s in states):
                break
            time.sleep(0.5)
    return states


def _report(states: list[RunStates], seconds: float) -> None:
    table = Table("run", "batches", "entities", "applied", "no changes", "duplicates", "failed", "errored",
                  "queued/applying", title=f"where every entity ended up ({seconds:.1f}s in all)")
    for s in states:
        table.add_row(s.run_id, str(s.batches), str(s.entities), str(s.applied), str(s.no_changes),
                      str(s.duplicates), str(s.failed), str(s.errored), str(s.queued + s.applying))
    console.print(table)
