"""`streams bench`: throughput of the topology on this machine, printed and written as JSON."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from streams import bench
from streams.cli.main import Context, console, run_guarded
from streams.dev import services

TARGETS = {"(a) ingest path, one worker": 50_000.0}
RATIO_TARGET = 0.8


def bench_command(
    ctx: typer.Context,
    entities: Annotated[int, typer.Option(envvar="STREAMS_BENCH_ENTITIES", show_envvar=True,
                                          help="Entities for the ingest scenario.")] = 200_000,
    e2e_entities: Annotated[int, typer.Option(envvar="STREAMS_BENCH_E2E_ENTITIES", show_envvar=True,
                                              help="Entities for the end-to-end scenarios.")] = 50_000,
    output: Annotated[Path, typer.Option(envvar="STREAMS_BENCH_OUTPUT", show_envvar=True,
                                         help="Where the JSON results go.")] = Path("bench-results.json"),
) -> None:
    """Measure (a) the ingest path, (b) end to end against the target's own capacity, (c) baselines."""
    context: Context = ctx.obj
    run_guarded(services.up, context.settings())
    settings = services.with_local_services(context.settings())
    logs = Path(tempfile.mkdtemp(prefix="streams-bench-"))
    step = lambda text: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")  # noqa: E731
    results = [
        bench.ingest_path(settings, entities, logs, step),
        bench.end_to_end(settings, e2e_entities, logs, step),
        bench.target_direct(settings, e2e_entities, logs, step),
        bench.end_to_end(settings, e2e_entities, logs, step, transient_rate=0.1, name="e2e10"),
        *bench.lateness(logs, "e2e10"),
        bench.kafka_consume(settings, 500_000, step),
        bench.copy_rows(settings, entities, step),
    ]
    by_name = {r.scenario: r for r in results}
    ratio = by_name["(b) end to end through the target"].value / by_name["(b) target called directly"].value
    table = Table("scenario", "rate", "unit", "count", "seconds", "target", "note",
                  title=f"streams bench on {platform.node()} ({platform.machine()}, logs in {logs})")
    for result in results:
        goal = TARGETS.get(result.scenario)
        mark = "" if goal is None else ("[green]met[/]" if result.value >= goal else "[red]missed[/]") + f" ≥{goal:,.0f}"
        table.add_row(result.scenario, f"{result.value:,.0f}", result.unit, f"{result.count:,}",
                      f"{result.seconds:.2f}", mark, result.note)
    console.print(table)
    verdict = "[green]met[/]" if ratio >= RATIO_TARGET else "[red]missed[/]"
    console.print(f"end to end / target direct = {ratio:.2f} ({verdict} ≥{RATIO_TARGET})")
    output.write_text(json.dumps({"results": [asdict(r) for r in results], "e2e_ratio": ratio,
                                  "settings": {"batch_size": settings.batch_size,
                                               "http_concurrency": settings.http_concurrency,
                                               "partitions": settings.partitions},
                                  "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
    console.print(f"results written to {output}")
