"""The `streams` command: root options, settings, and the sub-commands' registration.

Options are declared as text and validated by the settings object, so a bad value from the
command line, the environment or `.env` gets the same one-line error naming STREAMS_<NAME>.
"""

from __future__ import annotations

from typing import Annotated

import typer

from streams import logs
from streams.cli import bench, chaos, db, demo, dev, dlq, produce, runs, status, target, topics, trace, worker
from streams.cli.context import Context, option, run_guarded
from streams.settings import Settings, env_name


def _settings_help() -> str:
    lines = ["Settings (environment variables, or a .env file):"]
    for name, info in Settings.model_fields.items():
        lines.append(f"{env_name(name)}: {info.description or ''}".rstrip(": "))
    # typer folds plain text; a blank line between entries keeps one per line.
    return "\n\n".join(lines)


app = typer.Typer(
    help="streams: a Kafka-native ingestion reconciler.",
    epilog=_settings_help(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    kafka_bootstrap: Annotated[str | None, option("STREAMS_KAFKA_BOOTSTRAP", "Kafka bootstrap servers.")] = None,
    database_url: Annotated[str | None, option("STREAMS_DATABASE_URL", "Postgres URL.")] = None,
    target_url: Annotated[str | None, option("STREAMS_TARGET_URL", "Base URL of the target.")] = None,
    topic_prefix: Annotated[str | None, option("STREAMS_TOPIC_PREFIX", "Prefix of every topic name.")] = None,
    partitions: Annotated[str | None, option("STREAMS_PARTITIONS", "Partitions per topic.")] = None,
    retry_tiers: Annotated[str | None, option("STREAMS_RETRY_TIERS", "Retry tier delays, e.g. 30s,5m,1h.")] = None,
    batch_size: Annotated[str | None, option("STREAMS_BATCH_SIZE", "Entities per target call.")] = None,
    log_level: Annotated[str | None, option("STREAMS_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    given = {
        "kafka_bootstrap": kafka_bootstrap, "database_url": database_url, "target_url": target_url,
        "topic_prefix": topic_prefix, "partitions": partitions, "retry_tiers": retry_tiers,
        "batch_size": batch_size, "log_level": log_level,
    }
    context = Context(overrides={key: value for key, value in given.items() if value is not None})
    ctx.obj = context
    settings = run_guarded(context.settings)
    logs.configure(settings.log_level, fmt=settings.log_format)


def register() -> typer.Typer:
    app.add_typer(dev.app, name="dev")
    app.add_typer(topics.app, name="topics")
    app.add_typer(dlq.app, name="dlq")
    app.command("migrate")(db.migrate)
    app.command("worker")(worker.worker)
    app.command("target")(target.target)
    app.command("produce")(produce.produce)
    app.command("runs")(runs.runs)
    app.command("status")(status.status)
    app.command("trace")(trace.trace)
    app.command("demo")(demo.demo)
    app.command("bench")(bench.bench_command)
    app.command("chaos")(chaos.chaos_command)
    return app


def main() -> None:
    register()()
