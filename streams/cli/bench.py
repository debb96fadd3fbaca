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

from streams import bench, bench_netbox
from streams.cli.context import Context, console, fail, run_guarded
from streams.dev import netbox_target, services
from streams.settings import Settings

TARGETS = {"(a) ingest path, one worker": 50_000.0}
RATIO_TARGET = 0.8
NETBOX_RATIO_TARGET = 0.9


def bench_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Option(envvar="STREAMS_BENCH_TARGET", show_envvar=True,
                                        help="reference: every scenario against the reference target; "
                                             "netbox: end to end into NetBox against NetBox called directly.")]
    = "reference",
    entities: Annotated[int, typer.Option(envvar="STREAMS_BENCH_ENTITIES", show_envvar=True,
                                          help="Entities for the ingest scenario.")] = 200_000,
    e2e_entities: Annotated[int, typer.Option(envvar="STREAMS_BENCH_E2E_ENTITIES", show_envvar=True,
                                              help="Entities for the end-to-end scenarios.")] = 50_000,
    netbox_entities: Annotated[int, typer.Option(envvar="STREAMS_BENCH_NETBOX_ENTITIES", show_envvar=True,
                                                 help="Entities for each NetBox measurement.")] = 1500,
    output: Annotated[Path, typer.Option(envvar="STREAMS_BENCH_OUTPUT", show_envvar=True,
                                         help="Where the JSON results go.")] = Path("bench-results.json"),
) -> None:
    """Measure (a) the ingest path, (b) end to end against the target's own capacity, (c) baselines;
    or, with --target netbox, end to end into NetBox against NetBox's own capacity."""
    context: Context = ctx.obj
    if target not in ("reference", "netbox"):
        fail("STREAMS_BENCH_TARGET: expected reference or netbox")
    run_guarded(services.up, context.settings())
    settings = services.with_local_services(context.settings())
    logs = Path(tempfile.mkdtemp(prefix="streams-bench-"))
    step = lambda text: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")  # noqa: E731
    if target == "netbox":
        aimed = run_guarded(netbox_target.resolve, settings, step).settings
        results = bench_netbox.run(aimed, netbox_entities, logs, step)
        ratio = results[1].value / results[0].value
        _report(results, logs, ratio, NETBOX_RATIO_TARGET, "end to end into NetBox / NetBox direct", output, aimed)
        return
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
    _report(results, logs, ratio, RATIO_TARGET, "end to end / target direct", output, settings)


def _report(results: list[bench.Result], logs: Path, ratio: float, goal: float, what: str, output: Path,
            settings: Settings) -> None:
    table = Table("scenario", "rate", "unit", "count", "seconds", "target", "note",
                  title=f"streams bench on {platform.node()} ({platform.machine()}, logs in {logs})")
    for result in results:
        target = TARGETS.get(result.scenario)
        mark = "" if target is None else \
            ("[green]met[/]" if result.value >= target else "[red]missed[/]") + f" ≥{target:,.0f}"
        table.add_row(result.scenario, f"{result.value:,.1f}" if result.value < 100 else f"{result.value:,.0f}",
                      result.unit, f"{result.count:,}", f"{result.seconds:.2f}", mark, result.note)
    console.print(table)
    verdict = "[green]met[/]" if ratio >= goal else "[red]missed[/]"
    console.print(f"{what} = {ratio:.2f} ({verdict} ≥{goal})")
    output.write_text(json.dumps({"results": [asdict(r) for r in results], "ratio": ratio, "ratio_goal": goal,
                                  "settings": {"batch_size": settings.batch_size,
                                               "http_concurrency": settings.http_concurrency,
                                               "partitions": settings.partitions},
                                  "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
    console.print(f"results written to {output}")
