"""`streams status`: is it keeping up, what is stuck and why, from any machine (nothing here
calls a worker: see streams/status/collect.py for where each fact comes from)."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
import typer
from rich.live import Live

from streams.cli.context import Context, console, run_guarded
from streams.status.collect import collect
from streams.status.render import as_json, render


def status(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document, for scripts.")] = False,
    watch: Annotated[float | None, typer.Option(
        "--watch", help="Refresh every this many seconds until interrupted.", min=0.5, show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="Rows shown per list (runs, dead letters by run).", min=1)] = 10,
) -> None:
    """Lag per group and partition, retry tiers, dead letters, rows by state, open runs, and
    every gate holding work back with its reason and since when."""
    context: Context = ctx.obj
    settings = context.services()
    if json_out and watch is None:
        typer.echo(orjson.dumps(as_json(run_guarded(collect, settings, limit=limit))).decode())
        return
    if watch is None:
        console.print(render(run_guarded(collect, settings, limit=limit)))
        return
    try:
        if json_out:
            while True:
                typer.echo(orjson.dumps(as_json(run_guarded(collect, settings, limit=limit))).decode())
                time.sleep(watch)
        with Live(render(run_guarded(collect, settings, limit=limit)), console=console,
                  auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(watch)
                live.update(render(run_guarded(collect, settings, limit=limit)), refresh=True)
    except KeyboardInterrupt:
        pass
