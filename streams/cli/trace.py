"""`streams trace`: where did this entity go? The life of one entity (the ingest record it came
from, every attempt with its tier, outcome and the target's error, its change sets, the dead
letters and replays that carried it, the duplicates that pointed at it), or the entities of a
run, a batch, a producer's request or an entity hash. Reads Postgres only."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
import psycopg
import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from streams.cli.context import Context, console, fail, run_guarded
from streams.db.connect import conninfo
from streams.db.trace_store import BatchesTrace, EntityTrace, TraceReader

_STATE_STYLE = {"APPLIED": "green", "NO_CHANGES": "green", "ERRORED": "red", "FAILED": "red",
                "PENDING_RETRY": "yellow", "APPLYING": "cyan", "QUEUED": "blue"}
# A hash or a request naming more entities than this shows them as a list, not one by one.
_FULL_TRACES = 3


def trace(
    ctx: typer.Context,
    entity_id: Annotated[str | None, typer.Argument(help="An entity id (ingestion_logs.id).",
                                                    show_default=False)] = None,
    run: Annotated[str | None, typer.Option(help="The entities of this run.", show_default=False)] = None,
    batch: Annotated[int | None, typer.Option(help="With --run: only this batch.", show_default=False)] = None,
    request: Annotated[str | None, typer.Option(help="The batch a producer sent with this request id.",
                                                show_default=False)] = None,
    entity_hash: Annotated[str | None, typer.Option("--entity-hash", help="Entities with this hash (hex).",
                                                    show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON, for scripts.")] = False,
    limit: Annotated[int, typer.Option(help="Entities listed per run or batch.", min=1)] = 20,
) -> None:
    """The life of one entity, batch or request: every attempt, tier, outcome, error, change set,
    dead letter, replay and duplicate."""
    given = [name for name, value in (("ENTITY_ID", entity_id), ("--run", run), ("--request", request),
                                      ("--entity-hash", entity_hash)) if value is not None]
    if len(given) != 1:
        fail("give exactly one of ENTITY_ID, --run, --request or --entity-hash")
    if batch is not None and run is None:
        fail("--batch needs --run")
    context: Context = ctx.obj
    url = run_guarded(conninfo, context.services())
    try:
        with TraceReader(url) as reader:
            found = _find(reader, entity_id, run, batch, request, entity_hash, limit)
    except psycopg.OperationalError as exc:
        fail(f"cannot read from Postgres: {str(exc).strip().splitlines()[0]}", code=1)
    if not found:
        fail(f"nothing found for {given[0]} (ids are ingestion_logs ids; hashes are hex SHA-256)", code=1)
    if json_out:
        typer.echo(orjson.dumps([_json(item) for item in found], default=str).decode())
        return
    for item in found:
        console.print(_render_entity(item) if isinstance(item, EntityTrace) else _render_batches(item))


def _find(reader: TraceReader, entity_id: str | None, run: str | None, batch: int | None, request: str | None,
          entity_hash: str | None, limit: int) -> list[EntityTrace | BatchesTrace]:
    if entity_id is not None:
        try:
            wanted = uuid.UUID(entity_id)
        except ValueError:
            fail(f"ENTITY_ID: {entity_id!r} is not a UUID")
        entity = reader.entity(wanted)
        return [entity] if entity else []
    if run is not None:
        traced = reader.batches(run, batch, limit)
        return [traced] if traced.batches or traced.states else []
    if request is not None:
        return [reader.batches(run_id, number, limit) for run_id, number in reader.batches_of_request(request)]
    assert entity_hash is not None
    digest = entity_hash.lower().removeprefix("\\x")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        fail("--entity-hash: expected 64 hex digits (SHA-256)")
    ids = reader.ids_by_hash(digest, limit)
    if len(ids) > _FULL_TRACES:
        console.print(f"{len(ids)} entities have this hash (the first is the original, later ones came after "
                      f"it was ERRORED); tracing the first {_FULL_TRACES}")
    return [e for e in (reader.entity(i) for i in ids[:_FULL_TRACES]) if e is not None]


# --- JSON -----------------------------------------------------------------------------------


def _json(item: EntityTrace | BatchesTrace) -> dict[str, Any]:
    if isinstance(item, BatchesTrace):
        return {"kind": "batches", "run_id": item.run_id, "batch": item.batch, "batches": item.batches,
                "states": item.states, "entities": item.entities}
    return {"kind": "entity", "entity": {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in item.row.items()},
            "steps": [vars(step) for step in item.steps],
            "change_sets": [{"id": s.id, "attempt": s.attempt, "created_at": s.created_at, "warnings": s.warnings,
                             "changes": [vars(c) for c in s.changes]} for s in item.change_sets],
            "replays": item.replays}


# --- tables ---------------------------------------------------------------------------------


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _error(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    status = f" {error['http_status']}" if error.get("http_status") else ""
    return f"{error.get('class', '?')}{status}: {str(error.get('message', ''))[:160]}"


def _styled(state: str | None) -> Text:
    return Text((state or "").lower(), style=_STATE_STYLE.get(state or "", ""))


def _render_entity(item: EntityTrace) -> RenderableType:
    row = item.row
    head = Text.assemble(
        ("entity ", "bold"), (str(row["id"]), "bold"), f"  {row['object_type']}  ", _styled(row["state"]),
        f" after {row['attempts']} attempt{'s' if row['attempts'] != 1 else ''}")
    facts = Text(
        f"run {row['run_id']} batch {row['batch']}, request {row['request_id']}; from "
        f"{row['source_topic']}[{row['source_partition']}]@{row['source_offset']}; hash {row['entity_hash']}\n"
        f"duplicates pointing at it: {row['duplicate_count']}"
        + (f" (last {_when(row['last_seen'])})" if row["duplicate_count"] else "")
        + (f"; held by {row['claimed_by']}" if row["claimed_by"] and row["state"] not in ("APPLIED", "NO_CHANGES")
           else ""))
    steps = Table("time", "step", "attempt", "tier", "state", "record", "error / detail", title="history",
                  title_justify="left", title_style="bold")
    steps.add_row(_when(row["created_at"]), "accepted", "", "", "queued",
                  f"{row['run_id']}/{row['batch']}", f"{row['source_topic']}[{row['source_partition']}]"
                  f"@{row['source_offset']}")
    for step in item.steps:
        detail = _error(step.error)
        if step.step == "retry" and step.detail:
            detail = f"{detail}; due {step.detail.get('due_at', '?')}"
        elif step.step == "requeued" and step.detail:
            fresh = " (attempts counted afresh)" if step.detail.get("fresh") else ""
            detail = f"replay {step.detail.get('replay_id')}{fresh}"
        elif step.step == "duplicate" and step.detail:
            detail = f"from run {step.detail.get('run_id')} batch {step.detail.get('batch')}"
        elif step.step == "dead_letter" and step.detail:
            detail = f"{detail}; dead letter {step.detail.get('to')}"
        steps.add_row(_when(step.at), step.step, "" if step.attempt is None else str(step.attempt),
                      "" if step.tier is None else str(step.tier), _styled(step.state), step.work_id or "", detail)
    parts: list[RenderableType] = [head, facts, steps]
    if item.change_sets:
        sets = Table("time", "change set", "attempt", "changes", "warnings", title="change sets",
                     title_justify="left", title_style="bold")
        for change_set in item.change_sets:
            changes = ", ".join(f"{c.change_type} {c.object_type}" + (f" #{c.object_id}" if c.object_id else "")
                                for c in change_set.changes) or "-"
            sets.add_row(_when(change_set.created_at), change_set.id, str(change_set.attempt), changes,
                         str(len(change_set.warnings)) if change_set.warnings else "")
        parts.append(sets)
    if item.replays:
        replays = Table("time", "replay", "by", "dead letter", "to", "status", title="replays that carried it",
                        title_justify="left", title_style="bold")
        for replay in item.replays:
            replays.add_row(_when(replay["created_at"]), str(replay["replay_id"]), replay["requested_by"] or "",
                            f"{replay['dlq_topic']}[{replay['dlq_partition']}]@{replay['dlq_offset']}",
                            replay["destination"], replay["status"])
        parts.append(replays)
    if row["last_error"] and row["state"] not in ("APPLIED", "NO_CHANGES"):
        parts.append(Text(f"last error: {_error(row['last_error'])}", style="red"))
    return Group(*parts, Text(""))


def _render_batches(item: BatchesTrace) -> RenderableType:
    title = f"run {item.run_id}" + (f" batch {item.batch}" if item.batch is not None else "")
    states = ", ".join(f"{name.lower()} {count}" for name, count in sorted(item.states.items())) or "no rows"
    batches = Table("batch", "request", "entities", "new", "duplicates", "from", "accepted",
                    title=f"{title}: {states}", title_justify="left", title_style="bold")
    for b in item.batches:
        batches.add_row(str(b["batch"]), b["request_id"], str(b["entity_count"]), str(b["new_count"]),
                        str(b["duplicate_count"]), f"{b['source_topic']}[{b['source_partition']}]@{b['source_offset']}",
                        _when(b["accepted_at"]))
    entities = Table("entity", "batch", "type", "state", "attempts", "error class", "last change",
                     title="entities (trouble first; `streams trace ENTITY_ID` for one)", title_justify="left",
                     title_style="bold")
    for e in item.entities:
        entities.add_row(e["id"], str(e["batch"]), e["object_type"], _styled(e["state"]), str(e["attempts"]),
                         e["error_class"] or "", _when(e["updated_at"]))
    return Group(batches, entities, Text(""))
