"""`streams runs [RUN_ID]`: every run with its state and progress, or one run in detail.

Reads the `ingest_runs` mirror that the run tracker keeps in Postgres (and, for the detail,
`ingestion_logs` and `run_completions`). A run that is not complete and made no progress for
STREAMS_STALL_AFTER is flagged as stalled.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import psycopg
import typer
from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from streams.cli.context import Context, console, fail, run_guarded
from streams.db.connect import conninfo
from streams.db.runs_store import FailedBatch, Revision, RunRow, list_runs, run_detail
from streams.durations import format_age

_STATE_STYLE = {"succeeded": "green", "failed": "red", "running": "cyan", "open": "blue",
                "replaying": "magenta"}
_REASON_WIDTH = 100


def runs(
    ctx: typer.Context,
    run_id: Annotated[str | None, typer.Argument(help="Show this run in detail.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(envvar="STREAMS_RUNS_LIMIT", show_envvar=True, min=1,
                                       help="How many runs to list, newest first.")] = 50,
) -> None:
    """List runs (state, progress, counts, age), or show one run with its failed batches."""
    context: Context = ctx.obj
    settings = context.services()
    url = run_guarded(conninfo, settings)
    now = datetime.now(UTC)
    try:
        if run_id is None:
            rows = list_runs(url, limit=limit)
            if not rows:
                console.print("no runs yet (a run appears once the run tracker counted one of its events)")
                return
            console.print(runs_table(rows, now, settings.stall_after))
            return
        detail = run_detail(url, run_id)
    except psycopg.OperationalError as exc:
        fail(f"cannot read runs from Postgres: {str(exc).strip().splitlines()[0]}", code=1)
    if detail is None:
        fail(f"no run {run_id!r} (a run appears once the run tracker counted one of its events)", code=1)
    row, failed, revisions = detail
    console.print(_detail(row, failed, revisions, now, settings.stall_after))


def run_state(row: RunRow, now: datetime, stall_after: float) -> tuple[str, bool]:
    """(state, stalled): open (not sealed), running, succeeded, failed, or replaying (complete
    before, reopened by a replay); stalled when not complete and idle for `stall_after` s."""
    if row.complete:
        state = "failed" if row.batches_failed else "succeeded"
    elif row.revision > 0:
        state = "replaying"
    elif row.batches_total is None:
        state = "open"
    else:
        state = "running"
    stalled = not row.complete and (now - row.updated_at).total_seconds() > stall_after
    return state, stalled


def runs_table(rows: list[RunRow], now: datetime, stall_after: float) -> Table:
    caption = f"newest first; stalled: no progress for {format_age(stall_after)}"
    table = Table("run", "state", "progress", caption=caption)
    for column in ("batches", "entities", "applied", "no changes", "duplicates", "in retry", "errored", "rev",
                   "age"):
        table.add_column(column, justify="right")
    for row in rows:
        counts = (row.entities_accepted, row.entities_applied, row.entities_no_changes,
                  row.entities_duplicates, row.entities_in_retry)
        table.add_row(row.run_id, _state_text(row, now, stall_after), _bar(row),
                      f"{row.settled}/{_total(row)}", *map(str, counts), _errored(row.entities_errored),
                      str(row.revision or "-"), format_age((now - row.first_seen_at).total_seconds()))
    return table


def _detail(row: RunRow, failed: list[FailedBatch], revisions: list[Revision], now: datetime,
            stall_after: float) -> Group:
    parts: list[Table | Text] = [_facts(row, now, stall_after)]
    if failed:
        table = Table("batch", "errored", "failing", "class", "reason", title="failed batches",
                      caption="failing: FAILED rows the dead-letter agent has not marked ERRORED yet")
        for batch in failed:
            table.add_row(str(batch.batch), str(batch.errored), str(batch.failing), batch.error_class or "-",
                          (batch.reason or "")[:_REASON_WIDTH])
        parts.append(table)
    elif row.batches_failed:
        parts.append(Text("failed batches: their rows were requeued since (a replay is under way)"))
    if revisions:
        table = Table("revision", "status", "completed", "failed", "errored", "completed at",
                      title="completions")
        for revision in revisions:
            batches, entities = revision.record["batches"], revision.record["entities"]
            table.add_row(str(revision.revision), Text(revision.status, style=_STATE_STYLE[revision.status]),
                          str(batches["completed"]), str(batches["failed"]), str(entities["errored"]),
                          _when(revision.completed_at))
        parts.append(table)
    return Group(*parts)


def _facts(row: RunRow, now: datetime, stall_after: float) -> Table:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    producer = row.producer or {}
    lines: dict[str, Text | ProgressBar] = {
        "run": Text(row.run_id),
        "state": _state_text(row, now, stall_after),
        "progress": _bar(row, width=40),
        "batches": Text(f"settled {row.settled} of {_total(row)}: completed {row.batches_completed}, "
                        f"failed {row.batches_failed} (accepted {row.batches_accepted})"),
        "entities": Text(f"accepted {row.entities_accepted}, applied {row.entities_applied}, no changes "
                         f"{row.entities_no_changes}, duplicates {row.entities_duplicates}, in retry "
                         f"{row.entities_in_retry}, errored {row.entities_errored}"),
        "revision": Text(str(row.revision) if row.revision else "- (no completion yet)"),
        "producer": Text(" ".join(str(producer[k]) for k in ("app_name", "app_version") if producer.get(k))
                         or "-"),
        "first seen": Text(_when_ago(row.first_seen_at, now)),
        "sealed": Text(_when(row.sealed_at)),
        "completed": Text(_when(row.completed_at)),
        "last progress": Text(_when_ago(row.updated_at, now)),
    }
    for name, value in lines.items():
        facts.add_row(name, value)
    return facts


def _state_text(row: RunRow, now: datetime, stall_after: float) -> Text:
    state, stalled = run_state(row, now, stall_after)
    text = Text(state, style=_STATE_STYLE[state])
    if stalled:
        text.append(" stalled", style="bold red")
    return text


def _bar(row: RunRow, width: int = 20) -> ProgressBar:
    if row.batches_total is None:
        # Not sealed: how many of the batches seen so far are settled.
        return ProgressBar(total=max(row.batches_accepted, 1), completed=row.settled, width=width,
                           complete_style="blue")
    style = "red" if row.batches_failed else "green"
    # An empty sealed run is complete: a full bar.
    done = min(row.settled, row.batches_total) if row.batches_total else 1
    return ProgressBar(total=max(row.batches_total, 1), completed=done, width=width, complete_style=style,
                       finished_style=style)


def _total(row: RunRow) -> str:
    return str(row.batches_total) if row.batches_total is not None else "?"


def _errored(count: int) -> Text:
    return Text(str(count), style="red" if count else "")


def _when_ago(moment: datetime, now: datetime) -> str:
    return f"{_when(moment)} ({format_age((now - moment).total_seconds())} ago)"


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


