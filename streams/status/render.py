"""`streams status` as JSON (for scripts) and as tables (for people). Gates come first: they
answer "why does nothing move" before the numbers answer "how much"."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from streams.db.status_store import Count, DatabaseState
from streams.durations import format_age, format_duration
from streams.status.collect import GroupLag, Status

# Per-partition lag rows are shown for at most this many partitions per topic (all in --json).
_PARTITIONS_SHOWN = 12


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _ago(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    seconds = now - epoch
    if abs(seconds) < 1:
        return "now"  # the reading takes a moment: a row changed while it ran is not "in 0s"
    return f"{format_age(seconds, '')} ago" if seconds >= 0 else f"in {format_age(-seconds, '')}"




def _counts(counts: list[Count]) -> list[dict[str, Any]]:
    return [{"key": c.key, "count": c.count, "oldest": c.oldest.isoformat() if c.oldest else None} for c in counts]


def as_json(status: Status) -> dict[str, Any]:
    db = status.database
    return {
        "taken_at": _iso(status.taken_at),
        "gates": [{"worker": held.worker, **held.gate.as_dict(), "since_iso": _iso(held.gate.since),
                   "until_iso": _iso(held.gate.until)} for held in status.gates],
        "lag": [{"group": g.group, "topic": g.topic, "total": g.total,
                 "partitions": [{"partition": p.partition, "committed": p.committed, "end": p.end, "lag": p.lag}
                                for p in g.partitions]} for g in status.groups],
        "tiers": [{"topic": t.topic, "delay_s": t.delay, "depth": t.depth, "next_due": _iso(t.next_due),
                   "paused_partitions": t.paused} for t in status.tiers],
        "dead_letters": {
            "topic_records": status.dlq_records,
            "errored_by_class": _counts(db.errored_by_class) if db else None,
            "errored_by_run": _counts(db.errored_by_run) if db else None,
        },
        "rows": ({"by_state": {c.key: c.count for c in db.rows}, "stuck": db.stuck,
                  "stuck_after_s": db.stuck_after} if db else None),
        "runs": ({"open": db.open_run_count,
                  "oldest_open": [{"run_id": r.run_id, "first_seen_at": r.first_seen_at.isoformat(),
                                   "sealed": r.sealed_at is not None, "batches_total": r.batches_total,
                                   "batches_accepted": r.batches_accepted, "batches_completed": r.batches_completed,
                                   "batches_failed": r.batches_failed, "updated_at": r.updated_at.isoformat()}
                                  for r in db.open_runs]} if db else None),
        "workers": [{"worker": w.worker, "published_at": _iso(w.published_at), "silent": w.silent(status.taken_at),
                     "leader": w.leader, "assigned": w.assigned} for w in status.workers],
        "problems": status.problems,
    }


def render(status: Status) -> RenderableType:
    now = status.taken_at
    parts: list[RenderableType] = [Text(f"streams status at {_iso(now)}", style="bold")]
    parts += [Text(f"! {problem}", style="red") for problem in status.problems]
    parts.append(_gates(status, now))
    parts.append(_lag(status.groups))
    parts.append(_tiers(status, now))
    if status.database is not None:
        parts += _database(status.database, status.dlq_records, now)
    parts.append(_workers(status, now))
    return Group(*parts)


def _gates(status: Status, now: float) -> RenderableType:
    if not status.gates:
        return Text("gates: none: nothing holds work back", style="green")
    table = Table("gate", "scope", "worker", "since", "opens", "reason", title="gates holding work back",
                  title_justify="left", title_style="bold red")
    for held in status.gates:
        gate = held.gate
        table.add_row(Text(gate.name.value, style="red"), gate.scope, held.worker, _ago(gate.since, now),
                      _ago(gate.until, now) if gate.until else "-", gate.reason)
    return table


def _lag(groups: list[GroupLag]) -> RenderableType:
    if not groups:
        return Text("consumer lag: unknown")
    table = Table("group", "topic", "lag", "by partition", title="consumer lag", title_justify="left",
                  title_style="bold")
    for group in groups:
        lagging = [p for p in group.partitions if p.lag]
        shown = " ".join(f"{p.partition}:{p.lag}" for p in lagging[:_PARTITIONS_SHOWN])
        if len(lagging) > _PARTITIONS_SHOWN:
            shown += f" … +{len(lagging) - _PARTITIONS_SHOWN}"
        style = "yellow" if group.total else "green"
        table.add_row(group.group, group.topic, Text(str(group.total), style=style), shown or "-")
    return table


def _tiers(status: Status, now: float) -> RenderableType:
    if not status.tiers:
        return Text("retry tiers: unknown")
    table = Table("tier", "delay", "depth", "next due", "paused partitions", title="retry tiers",
                  title_justify="left", title_style="bold")
    for tier in status.tiers:
        table.add_row(tier.topic, format_duration(tier.delay), str(tier.depth),
                      _ago(tier.next_due, now) if tier.depth else "-", str(tier.paused))
    return table


def _database(db: DatabaseState, dlq_records: int | None, now: float) -> list[RenderableType]:
    rows = Table("state", "rows", "oldest change", "stuck", title="entities by state", title_justify="left",
                 title_style="bold", caption=f"stuck: unchanged for over {format_duration(db.stuck_after)}")
    for count in db.rows:
        stuck = db.stuck.get(count.key, 0)
        rows.add_row(count.key.lower(), str(count.count), _ago(count.oldest.timestamp() if count.oldest else None, now),
                     Text(str(stuck), style="red") if stuck else "0")
    caption = f"dead-letter topic: {dlq_records} records" if dlq_records is not None else None
    dead = Table("error class", "entities", "oldest", title="dead-lettered entities (ERRORED, not replayed)",
                 title_justify="left", title_style="bold", caption=caption)
    for count in db.errored_by_class:
        dead.add_row(count.key, str(count.count), _ago(count.oldest.timestamp() if count.oldest else None, now))
    by_run = Table("run", "entities", "oldest", title="dead-lettered entities by run (oldest first)",
                   title_justify="left", title_style="bold")
    for count in db.errored_by_run:
        by_run.add_row(count.key, str(count.count), _ago(count.oldest.timestamp() if count.oldest else None, now))
    runs = Table("run", "started", "sealed", "batches", "last progress", title=f"open runs: {db.open_run_count}",
                 title_justify="left", title_style="bold", caption="oldest first")
    for run in db.open_runs:
        batches = f"{run.batches_completed + run.batches_failed}/{run.batches_total or '?'}"
        runs.add_row(run.run_id, _ago(run.first_seen_at.timestamp(), now), "yes" if run.sealed_at else "no",
                     batches, _ago(run.updated_at.timestamp(), now))
    out: list[RenderableType] = [rows if db.rows else Text("entities: none recorded yet")]
    if db.errored_by_class:
        out.append(dead)
    else:
        out.append(Text(f"dead-lettered entities: none{'; ' + caption if caption else ''}", style="green"))
    if db.errored_by_run:
        out.append(by_run)
    out.append(runs if db.open_runs else Text("open runs: none"))
    return out


def _workers(status: Status, now: float) -> RenderableType:
    if not status.workers:
        return Text("workers: none has published a report (none running, or all stopped cleanly)", style="yellow")
    table = Table("worker", "last report", "leader", "partitions", title="workers", title_justify="left",
                  title_style="bold")
    for worker in status.workers:
        silent = worker.silent(now)
        count = sum(len(parts) for parts in worker.assigned.values())
        table.add_row(worker.worker, Text(_ago(worker.published_at, now), style="red" if silent else ""),
                      "yes" if worker.leader else "", str(count))
    return table
