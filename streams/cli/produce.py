"""`streams produce`: send runs of entities to the ingest topic, from JSON Lines files or generated."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.cli.context import Context, console, fail, run_guarded
from streams.client.generate import generate_entities, read_jsonl
from streams.client.producer import IngestProducer, RunSummary
from streams.kafka.admin import admin_client, existing_topics
from streams.kafka.topics import topic_names
from streams.models import MAX_ENTITIES, RUN_ID_PATTERN
from streams.settings import Settings


def _opt(name: str, help_text: str, *decls: str, **extra: Any) -> Any:
    return typer.Option(*decls, envvar=f"STREAMS_PRODUCE_{name}", show_envvar=True, help=help_text, **extra)


def produce(
    ctx: typer.Context,
    files: Annotated[list[Path] | None, typer.Argument(
        help='JSON Lines files, one {"object_type", "entity"} item a line.',
        exists=True, dir_okay=False, readable=True, show_default=False)] = None,
    generate: Annotated[int, _opt(
        "GENERATE", "Generate N NetBox-like entities per run instead of reading files.",
        min=0, metavar="N")] = 0,
    run_id: Annotated[str | None, _opt(
        "RUN", "Run id; with --runs N, runs are <run>-1 … <run>-N. Default: run-<UTC timestamp>.",
        "--run")] = None,
    batch_size: Annotated[int, _opt(
        "BATCH_SIZE", "Entities per ingest record.", min=1, max=MAX_ENTITIES)] = 500,
    duplicate_ratio: Annotated[float, _opt(
        "DUPLICATE_RATIO", "With --generate: share of repeated entities, 0 ≤ r < 1.")] = 0.1,
    seed: Annotated[int, _opt(
        "SEED", "With --generate: seed of the first run; run i uses seed + i - 1.")] = 0,
    seal: Annotated[bool, _opt("SEAL", "Seal each run with its batch count at the end.")] = True,
    runs: Annotated[int, _opt(
        "RUNS", "How many runs to send, one after the other (files are sent again in each).", min=1)] = 1,
) -> None:
    """Send runs of entities to the ingest topic, each sealed with its batch count."""
    context: Context = ctx.obj
    if bool(files) == bool(generate):
        fail("give JSON Lines files or --generate N: exactly one source of entities")
    if not 0 <= duplicate_ratio < 1:
        fail(f"STREAMS_PRODUCE_DUPLICATE_RATIO: must be at least 0 and below 1 (got {duplicate_ratio})")
    base = run_id or "run-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_ids = [base] if runs == 1 else [f"{base}-{number}" for number in range(1, runs + 1)]
    invalid = next((rid for rid in run_ids if not re.match(RUN_ID_PATTERN, rid)), None)
    if invalid is not None:
        fail(f"STREAMS_PRODUCE_RUN: {invalid!r} is not a run id "
             "(letters, digits and . _ : -, starting with a letter or digit, at most 200)")
    settings = context.services()
    # Read the files once before sending anything, so a bad line never leaves half a run behind.
    per_run = _count(files) if files else generate
    run_guarded(_require_ingest_topic, settings)

    def entities(index: int) -> Iterator[dict[str, Any]]:
        if files:
            return itertools.chain.from_iterable(read_jsonl(path) for path in files)
        return generate_entities(generate, seed=seed + index, duplicate_ratio=duplicate_ratio)

    try:
        results = run_guarded(_send, settings, run_ids, entities, per_run, batch_size=batch_size, seal=seal)
    except ValueError as exc:
        fail(str(exc))
    console.print(_summary_table(results, topic_names(settings).ingest, seal))


def _send(settings: Settings, run_ids: list[str], entities: Callable[[int], Iterator[dict[str, Any]]],
          per_run: int, *, batch_size: int, seal: bool) -> list[tuple[RunSummary, float]]:
    """Send the runs one after the other; return each summary with its seconds (until delivered)."""
    results = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    with progress, IngestProducer(settings) as client:
        task = progress.add_task("entities sent", total=per_run * len(run_ids))
        for index, run_id in enumerate(run_ids):
            started = time.monotonic()
            summary = client.send_run(run_id, entities(index), batch_size=batch_size, seal=seal,
                                      on_batch=lambda _batch, count: progress.advance(task, count))
            results.append((summary, time.monotonic() - started))
    return results


def _count(files: list[Path]) -> int:
    try:
        return sum(1 for path in files for _ in read_jsonl(path))
    except ValueError as exc:
        fail(str(exc))


def _require_ingest_topic(settings: Settings) -> None:
    topic = topic_names(settings).ingest
    if topic not in existing_topics(admin_client(settings), settings.kafka_timeout):
        fail(f"topic {topic!r} does not exist: run `streams topics create` first")


def _summary_table(results: list[tuple[RunSummary, float]], topic: str, sealed: bool) -> Table:
    caption = f"to {topic}, " + ("each run sealed" if sealed else "runs not sealed (--no-seal)")
    table = Table("run", caption=caption)
    for column in ("batches", "entities", "seconds", "entities/s"):
        table.add_column(column, justify="right")
    for summary, seconds in results:
        table.add_row(summary.run_id, str(summary.batches), str(summary.entities),
                      f"{seconds:.2f}", _rate(summary.entities, seconds))
    if len(results) > 1:
        table.add_section()
        entities = sum(summary.entities for summary, _ in results)
        seconds = sum(seconds for _, seconds in results)
        table.add_row("[bold]total[/]", str(sum(summary.batches for summary, _ in results)),
                      str(entities), f"{seconds:.2f}", _rate(entities, seconds))
    return table


def _rate(entities: int, seconds: float) -> str:
    return f"{entities / seconds:,.0f}" if seconds > 0 else "-"
