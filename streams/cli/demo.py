"""`streams demo`: everything from nothing, then stop what it started.

Until the ingest topology exists, the demo brings the services up, creates the topics and runs
the smoke pipeline through a real faust worker.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from streams.cli.main import Context, console, run_guarded
from streams.db.connect import conninfo
from streams.db.migrate import migrate
from streams.dev import services
from streams.dev.workers import start_worker, stop_worker
from streams.kafka.admin import create_topics
from streams.topics import TopicSpec, topology


def demo(
    ctx: typer.Context,
    records: Annotated[int, typer.Option(help="Records to send through the smoke pipeline.")] = 5000,
    keep_services: Annotated[bool, typer.Option(help="Leave Kafka and Postgres running afterwards.")] = False,
) -> None:
    """Start Kafka and Postgres, migrate, create topics, run a worker, send records, report."""
    from topologies import smoke

    context: Context = ctx.obj
    base = context.settings()
    started_at = time.monotonic()
    with console.status("starting Kafka and Postgres…"):
        before = {report.name for report in run_guarded(services.status, base) if report.running}
        run_guarded(services.up, base)
    settings = services.with_local_services(base)
    # A fresh prefix and group per demo run, so a second demo starts from a clean slate.
    settings = settings.model_copy(update={"topic_prefix": f"demo-{uuid.uuid4().hex[:6]}.",
                                            "app_id": f"demo-{uuid.uuid4().hex[:6]}", "worker_port": 0})
    worker = None
    try:
        applied = run_guarded(migrate, conninfo(settings))
        console.print(f"migrations: {', '.join(applied) or 'up to date'}")
        source, sink = smoke.topic_names(settings)
        specs = topology(settings)
        extra = [TopicSpec(name, specs[0].role, settings.partitions, 1, {}) for name in (source, sink)]
        run_guarded(create_topics, settings, specs + extra)
        console.print(f"topics: {len(specs) + 2} under prefix {settings.topic_prefix!r}")
        log_path = Path(tempfile.gettempdir()) / f"streams-demo-worker-{settings.app_id}.log"
        worker = start_worker(settings, topology="smoke", log_path=log_path)
        with console.status(f"sending {records} records through the smoke pipeline…"):
            result = smoke.check(settings, count=records, alive=lambda: worker.poll() is None)
    finally:
        if worker is not None:
            stop_worker(worker)
        if not keep_services:
            # Stop only what this demo started; services that ran before it keep running.
            if not before:
                run_guarded(services.down, base)
    table = Table("sent", "copied by the worker", "offsets committed", "seconds")
    table.add_row(str(result["sent"]), str(result["copied"]), str(result["committed"]),
                  f"{time.monotonic() - started_at:.1f}")
    console.print(table)
    if result["copied"] != records or result["committed"] < records:
        raise typer.Exit(1)
