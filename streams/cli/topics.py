"""`streams topics create | describe`: every topic of the topology, from streams.kafka.topics."""

from __future__ import annotations

import typer
from rich.table import Table

from streams.cli.context import Context, console, run_guarded
from streams.kafka.admin import create_topics, describe_topics
from streams.kafka.topics import topology

app = typer.Typer(help="Create or describe the topology's topics.", no_args_is_help=True)


@app.command()
def create(ctx: typer.Context) -> None:
    """Create every missing topic (idempotent; a partition-count mismatch is an error)."""
    context: Context = ctx.obj
    settings = context.services()
    specs = run_guarded(topology, settings)
    outcome = run_guarded(create_topics, settings, specs)
    table = Table("topic", "role", "partitions", "outcome")
    for spec in specs:
        table.add_row(spec.name, spec.role.value, str(spec.partitions), outcome[spec.name])
    console.print(table)


@app.command()
def describe(ctx: typer.Context) -> None:
    """Partitions, replication and key configs of each topic, against the definition."""
    context: Context = ctx.obj
    settings = context.services()
    states = run_guarded(describe_topics, settings, run_guarded(topology, settings))
    table = Table("topic", "role", "partitions", "replicas", "cleanup", "retention.ms", "max.message.bytes")
    for state in states:
        if not state.exists:
            table.add_row(state.name, state.role, "[red]missing[/]", "-", "-", "-", "-")
            continue
        parts = str(state.partitions)
        if state.partitions != state.wanted_partitions:
            parts = f"[red]{parts} (want {state.wanted_partitions})[/]"
        table.add_row(
            state.name, state.role, parts, str(state.replication_factor),
            state.config.get("cleanup.policy", "-"), state.config.get("retention.ms", "-"),
            state.config.get("max.message.bytes", "-"),
        )
    console.print(table)
    if not all(state.exists for state in states):
        raise typer.Exit(3)
