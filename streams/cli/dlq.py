"""`streams dlq ls | show | replay`: what is on the dead-letter topic, and sending it back.

The filters are the same for the three commands (AND across options, OR within a repeated
one). `show` prints ids, object types and errors; entity bodies only with --bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.cli.context import Context, console, fail, run_guarded
from streams.dlq.letters import DeadLetter
from streams.dlq.plan import Destination
from streams.dlq.reader import read_dead_letters
from streams.dlq.replay import ReplayOptions, ReplayReport, default_requester, dry_run, replay
from streams.dlq.select import (
    Filters,
    Summary,
    Tally,
    format_ms,
    matches,
    parse_time,
    select_counting,
    sorted_groups,
    summarize,
)
from streams.kafka import headers as h
from streams.kafka.topics import topic_names
from streams.settings import Settings

app = typer.Typer(help="List, show and replay the dead letters (the ingest.dlq topic).", no_args_is_help=True)

_ERROR_WIDTH = 120
_EPOCH_MS_HEADERS = {h.DUE_AT, h.FIRST_FAILED_AT}


class ErrorClassChoice(str, Enum):
    transient = "transient"
    permanent = "permanent"
    invalid = "invalid"


class To(str, Enum):
    work = "work"
    tier = "tier"


def _opt(name: str, help_text: str, *decls: str, **extra: Any) -> Any:
    return typer.Option(*decls, envvar=f"STREAMS_DLQ_{name}", show_envvar=True, help=help_text, **extra)


RunOpt = Annotated[list[str] | None, _opt("RUN", "Only this run (repeatable).", "--run", show_default=False)]
ClassOpt = Annotated[list[ErrorClassChoice] | None, _opt(
    "ERROR_CLASS", "Only this error class (repeatable). Replaying original ingest records needs their class "
    "named here.", "--error-class", show_default=False)]
TypeOpt = Annotated[list[str] | None, _opt(
    "OBJECT_TYPE", "Only records with entities of this type (repeatable); a replay requeues only those "
    "entities.", "--object-type", show_default=False)]
StatusOpt = Annotated[list[int] | None, _opt(
    "HTTP_STATUS", "Only this HTTP status of the last failure (repeatable).", "--http-status",
    show_default=False)]
SinceOpt = Annotated[str | None, _opt(
    "SINCE", "Dead-lettered at or after: ISO 8601 (UTC unless a zone is given) or a duration ago, e.g. 2h.",
    "--since")]
UntilOpt = Annotated[str | None, _opt(
    "UNTIL", "Dead-lettered before: ISO 8601 or a duration ago.", "--until")]


def _filters(run: list[str] | None, error_class: list[ErrorClassChoice] | None, object_type: list[str] | None,
             http_status: list[int] | None, since: str | None, until: str | None,
             limit: int | None = None) -> Filters:
    now = datetime.now(UTC)
    times = {}
    for name, text in (("since", since), ("until", until)):
        if text is not None:
            try:
                times[name] = parse_time(text, now)
            except ValueError as exc:
                fail(f"STREAMS_DLQ_{name.upper()}: {exc}")
    return Filters(tuple(run or ()), tuple(c.value for c in error_class or ()), tuple(object_type or ()),
                   tuple(http_status or ()), times.get("since"), times.get("until"), limit)


def _letters(settings: Settings) -> Iterator[DeadLetter]:
    return read_dead_letters(settings)


# --- ls ---------------------------------------------------------------------------------------

@app.command("ls")
def ls(ctx: typer.Context, run: RunOpt = None, error_class: ClassOpt = None, object_type: TypeOpt = None,
       http_status: StatusOpt = None, since: SinceOpt = None, until: UntilOpt = None) -> None:
    """Dead letters counted by error class and run, and by object type, with oldest and newest."""
    context: Context = ctx.obj
    settings = context.services()
    filters = _filters(run, error_class, object_type, http_status, since, until)
    summary: Summary = run_guarded(
        lambda: summarize(letter for letter in _letters(settings) if matches(letter, filters)))
    topic = topic_names(settings).dlq
    if summary.total.records == 0:
        console.print(f"no dead letters on {topic}" + (" match these filters" if filters.as_json() else ""))
        return
    table = Table("error class", "run", caption=f"{topic}: dead letters by error class and run")
    _tally_columns(table)
    for (error_class_, run_id), tally in sorted_groups(summary.by_class_and_run):
        table.add_row(error_class_ or "-", run_id or "-", *_tally_cells(tally))
    table.add_section()
    table.add_row("[bold]total[/]", "", *_tally_cells(summary.total))
    console.print(table)
    if summary.by_object_type:
        types = Table("object type", caption="entities by object type")
        _tally_columns(types)
        for object_type_, tally in sorted_groups(summary.by_object_type):
            types.add_row(object_type_, *_tally_cells(tally))
        console.print(types)


def _tally_columns(table: Table) -> None:
    table.add_column("records", justify="right")
    table.add_column("entities", justify="right")
    table.add_column("oldest")
    table.add_column("newest")


def _tally_cells(tally: Tally) -> list[str]:
    return [str(tally.records), str(tally.entities), _when(tally.oldest), _when(tally.newest)]


def _when(epoch_ms: int | None) -> str:
    return format_ms(epoch_ms) if epoch_ms is not None else "-"


# --- show -------------------------------------------------------------------------------------

@app.command("show")
def show(ctx: typer.Context, run: RunOpt = None, error_class: ClassOpt = None, object_type: TypeOpt = None,
         http_status: StatusOpt = None, since: SinceOpt = None, until: UntilOpt = None,
         limit: Annotated[int, _opt("LIMIT", "At most this many records, oldest first.", "--limit",
                                    min=1)] = 20,
         bodies: Annotated[bool, _opt("BODIES", "Also print entity bodies and original record values.",
                                      "--bodies")] = False) -> None:
    """Dead letters with their headers and per-entity errors (ids and object types, no bodies)."""
    context: Context = ctx.obj
    settings = context.services()
    filters = _filters(run, error_class, object_type, http_status, since, until, limit)
    letters, matching = run_guarded(lambda: select_counting(_letters(settings), filters))
    for letter in letters:
        _print_letter(letter, bodies)
    more = " (--limit for more)" if matching > len(letters) else ""
    console.print(f"{len(letters)} of {matching} matching dead letters shown, oldest first{more}")


def _print_letter(letter: DeadLetter, bodies: bool) -> None:
    work = letter.work
    title = (f"[bold]{letter.topic} {letter.partition}/{letter.offset}[/]  {format_ms(letter.timestamp)}  "
             f"{escape(letter.error_class or '-')}  run {escape(letter.run_id or '-')}")
    if work is not None:
        title += f"  batch {work.batch}  {len(work.items)} entities"
    else:
        title += f"  original record of {len(letter.value)} bytes (no rows)"
    console.print(title)
    headers = Table(show_header=False, box=None, padding=(0, 2))
    for name, value in sorted(letter.headers.items()):
        if name in _EPOCH_MS_HEADERS and value.isdigit():
            value = f"{value} ({format_ms(int(value))})"
        headers.add_row(escape(name), escape(_clip(value, 400)))
    console.print(headers)
    if work is not None:
        columns = ["id", "object type", "error", *(["entity"] if bodies else [])]
        entities = Table(*columns, box=None, padding=(0, 2))
        for item in work.items:
            row = [item.id, escape(item.object_type), escape(_entity_error(work.errors.get(item.id)))]
            if bodies:
                row.append(escape(_json(item.entity)))
            entities.add_row(*row)
        console.print(entities)
    elif bodies:
        console.print(escape(_printable(letter.value)), soft_wrap=True, highlight=False)
    console.print()


def _entity_error(error: Any) -> str:
    if error is None:
        return "-"
    if isinstance(error, dict):
        text = f"{error.get('class', '')}: {error.get('message', '')}".strip(": ")
        if error.get("http_status") is not None:
            text += f" (HTTP {error['http_status']})"
        return _clip(text or _json(error), _ERROR_WIDTH)
    return _clip(str(error), _ERROR_WIDTH)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _printable(value: bytes) -> str:
    """The value as text, with bytes that are not UTF-8 and control characters escaped: an
    unusable record must not garble the terminal."""
    text = value.decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in text)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


# --- replay -----------------------------------------------------------------------------------

@app.command("replay")
def replay_command(
    ctx: typer.Context, run: RunOpt = None, error_class: ClassOpt = None, object_type: TypeOpt = None,
    http_status: StatusOpt = None, since: SinceOpt = None, until: UntilOpt = None,
    limit: Annotated[int | None, _opt("LIMIT", "At most this many dead letters, oldest first.", "--limit",
                                      min=1)] = None,
    to: Annotated[To, _opt("TO", "work: ingest.work, attempts start again; tier: the first retry tier.",
                           "--to")] = To.work,
    again: Annotated[bool, _opt("AGAIN", "Also replay dead letters an earlier replay sent back.",
                                "--again")] = False,
    rate: Annotated[float | None, _opt("RATE", "At most N dead letters per second.", "--rate", min=0.001,
                                       metavar="N")] = None,
    dry_run_: Annotated[bool, _opt("DRY_RUN", "Print what would be replayed; change nothing.",
                                   "--dry-run")] = False,
    requested_by: Annotated[str | None, _opt("REQUESTED_BY", "Who asks, for the audit row. Default: "
                                             "$USER@hostname.", "--requested-by")] = None,
) -> None:
    """Send dead letters back: their ERRORED rows are requeued, each replay is audited."""
    context: Context = ctx.obj
    settings = context.services()
    filters = _filters(run, error_class, object_type, http_status, since, until, limit)
    options = ReplayOptions(Destination(to.value), again, rate, requested_by or default_requester())
    if dry_run_:
        _print_dry_run(run_guarded(dry_run, settings, filters, options))
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    with progress:
        task = progress.add_task("dead letters replayed", total=None)
        report: ReplayReport = run_guarded(
            replay, settings, filters, options, on_total=lambda total: progress.update(task, total=total),
            on_advance=lambda count: progress.advance(task, count))
    _print_report(report)


def _print_report(report: ReplayReport) -> None:
    console.print(f"replay [bold]{report.replay_id}[/] → {report.destination}")
    table = Table("", "dead letters", "entities")
    table.columns[1].justify = table.columns[2].justify = "right"
    table.add_row("matched", str(report.matched), "")
    table.add_row("replayed", str(report.replayed), str(report.entities))
    for reason, count in sorted(report.skipped.items()):
        table.add_row(f"skipped: {reason}", str(count), "")
    if report.resent:
        table.add_row("resent (interrupted replay)", str(report.resent), "")
    console.print(table)
    _print_pending_notes(report)


def _print_dry_run(report: ReplayReport) -> None:
    console.print(f"[bold]dry run[/]: nothing was changed; would replay {report.replayed} dead letters "
                  f"({report.entities} entities) → {report.destination}")
    if report.by_error_class:
        table = Table("error class", caption="would be replayed")
        _tally_columns(table)
        for error_class, tally in sorted_groups(report.by_error_class):
            table.add_row(error_class or "-", *_tally_cells(tally))
        console.print(table)
    if report.skipped:
        skipped = Table("skipped because", "dead letters")
        for reason, count in sorted(report.skipped.items()):
            skipped.add_row(reason, str(count))
        console.print(skipped)
    if report.samples:
        samples = Table("dead letter", "time", "error class", "run", "batch", "entities", "object types",
                        "error", caption=f"the first {len(report.samples)}")
        for letter, entities in report.samples:
            samples.add_row(f"{letter.partition}/{letter.offset}", format_ms(letter.timestamp),
                            letter.error_class or "-", escape(letter.run_id or "-"),
                            "-" if letter.batch is None else str(letter.batch), str(entities),
                            escape(", ".join(letter.object_types) or "-"),
                            escape(_clip(letter.headers.get(h.ERROR, ""), 60)))
        console.print(samples)
    _print_pending_notes(report)


def _print_pending_notes(report: ReplayReport) -> None:
    if report.resent:
        verb = "would also send" if report.dry_run else "sent"
        console.print(f"[yellow]{verb} {report.resent} dead letters again that the interrupted replay "
                      f"{', '.join(sorted(report.resent_from))} had requeued but not confirmed[/]")
    if report.lost:
        console.print(f"[red]{report.lost} requeued dead letters of an interrupted replay are no longer on "
                      "the topic (retention); their rows stay QUEUED with nothing to apply them[/]")
