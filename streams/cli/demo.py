"""`streams demo`: the whole topology from nothing, then stop everything it started.

Kafka and Postgres (unless running or external), a fresh `streams_demo` database, migrations,
topics under a fresh prefix with retry tiers of seconds, the reference target with injected
faults, and one worker. Four runs of generated NetBox-like entities (with duplicates) and one
run of entities the target can never accept. Records climb the retry tiers, some land in the
dead-letter topic, each run's completion event is printed as it arrives; then the target is
"fixed", the dead letters are replayed, and the revised completions follow. At the end every
entity is applied except the truly bad ones.
"""

from __future__ import annotations

import tempfile
import threading
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
from streams.dlq.replay import ReplayOptions, replay
from streams.dlq.select import Filters
from streams.kafka.admin import create_topics
from streams.runs.completions import read_completions
from streams.settings import Settings
from streams.target.faults import Faults
from streams.target.launch import start_target
from streams.topics import topology

DEMO_DATABASE = "streams_demo"
# (run id, generator seed, entities): dc1-resweep sweeps dc1 again, so it is all duplicates.
RUNS = (("dc1-sweep", 1, 6000), ("dc2-sweep", 2, 6000), ("dc3-sweep", 3, 6000), ("dc1-resweep", 1, 2000))
# Sites without a slug: the target's plan refuses them every time (a truly bad import).
BAD_RUN = ("bad-import", 5)
# Transient apply errors send 3% of the entities up the tiers; the target refuses whole
# requests holding a firewall (422) until it is "fixed": those entities are dead-lettered.
FAULTS = Faults(transient_rate=0.03, poison_pattern='"firewall"', seed=42)


def demo(
    ctx: typer.Context,
    keep_services: Annotated[bool, typer.Option(help="Leave Kafka and Postgres running afterwards.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 300.0,
) -> None:
    """Start everything, ingest ~20k entities through faults, replay the dead letters, report."""
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
        console.print(f"topics: {len(topology(settings))} under prefix {settings.topic_prefix!r}, "
                      f"retry tiers {', '.join(settings.tier_names)}")

        logs = Path(tempfile.mkdtemp(prefix="streams-demo-"))
        target = start_target(conninfo(settings), faults=FAULTS, log_path=logs / "target.log")
        cleanup.callback(target.stop)
        settings = settings.model_copy(update={"target_url": target.url})
        worker = start_worker(settings, log_path=logs / "worker.log")
        cleanup.callback(lambda: stop_worker(worker))
        console.print(f"reference target at {target.url} with faults: 3% transient errors, "
                      f"whole requests with a firewall refused (422); worker pid {worker.pid}; logs in {logs}")
        stop_printing = _print_completions(settings, cleanup)

        with IngestProducer(settings) as producer:
            for run_id, seed, count in RUNS:
                producer.send_run(run_id, generate_entities(count, seed=seed, duplicate_ratio=0.1), batch_size=500)
            run_id, count = BAD_RUN
            producer.send_run(run_id, [{"object_type": "dcim.site", "entity": {"name": f"no-slug-{n}"}}
                                       for n in range(count)])
        console.print(f"sent {sum(c for _, _, c in RUNS) + BAD_RUN[1]} entities in {len(RUNS) + 1} runs")
        alive = lambda: worker.poll() is None  # noqa: E731
        first = _follow(settings, timeout, alive, "first pass")
        _report(first, "after the first pass")

        console.print("[bold]fixing the target[/] (no more refused firewalls) and replaying the dead letters…")
        target.set_faults(Faults())
        report = run_guarded(replay, settings, Filters(), ReplayOptions())
        console.print(f"replay {report.replay_id}: {report.replayed} dead letters, {report.entities} entities "
                      f"requeued → {report.destination}")
        final = _follow(settings, timeout, alive, "after replay")
        time.sleep(3)  # let the revised completion events arrive before the printer stops
        stop_printing()
    _report(final, f"where every entity ended up ({time.monotonic() - started_at:.1f}s in all)")
    bad_run, bad_count = BAD_RUN
    if any(s.in_flight for s in final) or any(
            s.errored != (bad_count if s.run_id == bad_run else 0) for s in final):
        fail("the demo did not end as expected; see the worker log", code=1)


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
        "retry_tiers": (2.0, 4.0, 8.0),
    })


def _print_completions(settings: Settings, cleanup: ExitStack):  # type: ignore[no-untyped-def]
    """Print each RunCompleted as it arrives, from a background thread, until told to stop."""
    done = threading.Event()

    def printer() -> None:
        for completed in read_completions(settings, timeout=3600):
            if done.is_set():
                return
            b, e = completed.batches, completed.entities
            colour = "green" if completed.status == "succeeded" else "yellow"
            console.print(f"[{colour}]RunCompleted[/] {completed.run_id} revision {completed.revision}: "
                          f"{completed.status}, batches {b.completed}/{b.total} completed, {b.failed} failed; "
                          f"entities applied {e.applied}, no-change {e.no_changes}, duplicates {e.duplicates}, "
                          f"errored {e.errored}")

    thread = threading.Thread(target=printer, name="completions", daemon=True)
    thread.start()
    cleanup.callback(done.set)
    return done.set


def _follow(settings: Settings, timeout: float, alive, label: str) -> list[RunStates]:  # type: ignore[no-untyped-def]
    """Live progress per run until every sent entity has an outcome."""
    wanted = {run_id: count for run_id, _, count in RUNS} | {BAD_RUN[0]: BAD_RUN[1]}
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    states: list[RunStates] = []
    console.print(f"[bold]{label}[/]")
    with Progress(*columns, console=console) as progress:
        tasks = {run_id: progress.add_task(run_id, total=count, detail="") for run_id, count in wanted.items()}
        while time.monotonic() < deadline and alive():
            states = run_states(conninfo(settings), list(wanted))
            for state in states:
                progress.update(tasks[state.run_id], completed=state.settled,
                                detail=f"applied {state.applied}  dup {state.duplicates}  "
                                       f"in retry {state.pending_retry}  errored {state.errored}  "
                                       f"in flight {state.in_flight}")
            if len(states) == len(wanted) and all(
                    s.entities == wanted[s.run_id] and s.settled == s.entities and not s.in_flight for s in states):
                break
            time.sleep(0.5)
    return states


def _report(states: list[RunStates], title: str) -> None:
    table = Table("run", "batches", "entities", "applied", "no changes", "duplicates", "errored", "in flight",
                  title=title)
    for s in states:
        table.add_row(s.run_id, str(s.batches), str(s.entities), str(s.applied), str(s.no_changes),
                      str(s.duplicates), str(s.errored), str(s.in_flight))
    console.print(table)
