"""What a chaos trial reads: the pipeline's Postgres, the reference target's own tables and
counters, the consumer group, and the topics (completions, committed offsets, run events, the
ingest records of lost batches). The polls are cheap enough to repeat every second (one grouped
count, one group description); the rest happens once, at the end."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

import httpx
import orjson
import psycopg
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient

from streams.chaos.rates import APPLIED, ERRORED, NO_CHANGES, Sample
from streams.chaos.verdicts import (
    CompletionCount,
    ErroredRow,
    Evidence,
    RunRows,
    count_completions,
    is_permanent,
    judge_errored,
)
from streams.kafka.config import confluent_config
from streams.kafka.reader import Reader
from streams.kafka.topics import topic_names
from streams.models import RunCompleted
from streams.runs.completions import decode as decode_completion
from streams.settings import Settings
from streams.status.collect import lag_by_group
from streams.target import store as target_store
from streams.target.faults import Faults
from streams.target.launch import TargetProcess

_SAMPLE = """
SELECT state, count(*), coalesce(sum(duplicate_count), 0) FROM ingestion_logs GROUP BY state
"""
_COMPLETED_RUNS = "SELECT count(DISTINCT run_id) FROM run_completions"
_RECEIPT_LOOKUPS = 2000  # errored ids looked up at the target, at most


class Poller:
    """One autocommit connection to the pipeline's database, opened again after a failure (a
    Postgres restart), so a poll during the outage returns None instead of raising."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.Connection[Any] | None = None

    def sample(self, *, sent: int, group: tuple[str, int] = ("", 0)) -> Sample | None:
        try:
            conn = self._connection()
            rows = conn.execute(_SAMPLE).fetchall()
            completed = conn.execute(_COMPLETED_RUNS).fetchone()
        except psycopg.Error:
            self.close()
            return None
        return Sample(time.time(), {int(s): int(n) for s, n, _ in rows}, sum(int(d) for _, _, d in rows),
                      int(completed[0]) if completed else 0, sent, group[0], group[1])

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=3,
                                         options="-c statement_timeout=10000")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


class GroupWatcher:
    """The state and size of the workers' consumer group (faust's, named by the app id)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._group = settings.app_id
        self._admin: AdminClient | None = None

    def state(self) -> tuple[str, int]:
        try:
            if self._admin is None:
                # Quiet: while the broker restarts every call fails, and the trial says so itself.
                self._admin = AdminClient(confluent_config(self._settings, log_level=0))
            future = self._admin.describe_consumer_groups([self._group], request_timeout=2.0)[self._group]
            description = future.result(timeout=3.0)
        except Exception:  # noqa: BLE001 - broker down or slow: the state is unknown
            self._admin = None  # a fresh client next time, rather than one stuck on a dead connection
            return "UNKNOWN", 0
        return description.state.name, len(description.members)


# --- the completions topic -------------------------------------------------------------------


def read_all_completions(settings: Settings, timeout: float = 60.0) -> list[RunCompleted]:
    """Every RunCompleted on the topic, from its start to the end offsets seen now."""
    messages = _read_topic(settings, topic_names(settings).completions, timeout)
    found = (decode_completion(message) for message in messages)
    return [completed for completed in found if completed is not None]


def _read_topic(settings: Settings, topic: str, timeout: float) -> list[Message]:
    """Every record of `topic`, up to the end offsets seen now."""
    with Reader(settings, group=f"streams-chaos-{uuid.uuid4().hex[:12]}", eof=True) as reader:
        return list(reader.to_end(topic, idle_timeout=timeout))


# --- what the consumer groups left unread ----------------------------------------------------


def unread(settings: Settings) -> dict[str, dict[int, tuple[int, int]]]:
    """Per topic the workers consume: {partition: (committed offset, end offset)} for every
    partition whose group committed less than its end (the lag `streams status` shows). Read
    after the workers stopped (a clean stop commits what was processed), so a record left here
    was never processed."""
    behind: dict[str, dict[int, tuple[int, int]]] = {}
    for lag in lag_by_group(settings, topic_names(settings)):
        for part in lag.partitions:
            if part.lag:
                behind.setdefault(lag.topic, {})[part.partition] = (part.committed, part.end)
    return behind


def ingest_positions(settings: Settings, timeout: float = 60.0) -> dict[tuple[str, int], tuple[int, int]]:
    """(run_id, batch) → (partition, offset) of every batch record on the ingest topic."""
    topic = topic_names(settings).ingest
    positions: dict[tuple[str, int], tuple[int, int]] = {}
    for message in _read_topic(settings, topic, timeout):
        try:
            record = orjson.loads(message.value() or b"")
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("kind") == "batch":
            positions[(str(record.get("run_id")), int(record.get("batch", -1)))] = (
                message.partition() or 0, message.offset() or 0)
    return positions


def unaccepted_batches(settings: Settings, database: str,
                       behind: dict[str, dict[int, tuple[int, int]]]) -> list[str]:
    """The batch records on the ingest topic with no ingest_batches row, and where they are."""
    accepted = {(str(run), int(batch))
                for run, batch in _rows(database, "SELECT run_id, batch FROM ingest_batches")}
    lagging = behind.get(topic_names(settings).ingest, {})
    found = []
    for (run, batch), (partition, offset) in sorted(ingest_positions(settings).items()):
        if (run, batch) in accepted:
            continue
        committed = lagging.get(partition)
        where = ("never read: the group's offset is before it" if committed and committed[0] <= offset
                 else "the group's offset is past it")
        found.append(f"{run} batch {batch} at ingest[{partition}]@{offset} ({where})")
    return found


def audit_run_events(settings: Settings, database: str, runs: Iterable[str]) -> list[str]:
    """For runs without a completion: how many of their batches the events on `ingest.run-events`
    settle, counted as the tracker counts them (each event id once), and for the others which
    count disagrees with the batch's rows. All settled there while the tracker's mirror says
    otherwise: the tracker lost count; fewer: the agents reported wrong or missing counts."""
    wanted = sorted(set(runs))
    if not wanted:
        return []
    seen: set[str] = set()
    sealed: dict[str, int] = {}
    events: dict[tuple[str, int], dict[str, int]] = {}
    for message in _read_topic(settings, topic_names(settings).run_events, 120.0):
        try:
            event = orjson.loads(message.value() or b"")
        except orjson.JSONDecodeError:
            continue
        if event.get("run_id") not in wanted or event.get("event_id") in seen:
            continue
        seen.add(event.get("event_id"))
        counts = event.get("counts") or {}
        if event.get("type") == "sealed":
            sealed[event["run_id"]] = int(counts.get("batches", 0))
            continue
        batch = events.setdefault((event["run_id"], int(event.get("batch", -1))), {})
        for name, count in counts.items():
            if isinstance(count, int):
                batch[name] = batch.get(name, 0) + count
    rows: dict[tuple[str, int], dict[int, int]] = {}
    for run, batch_number, state, count in _rows(database, """
            SELECT run_id, batch, state, count(*) FROM ingestion_logs
             WHERE run_id = ANY(%(runs)s) GROUP BY 1, 2, 3""", {"runs": wanted}):
        rows.setdefault((run, int(batch_number)), {})[int(state)] = int(count)
    found = []
    for run in wanted:
        settled = 0
        wrong: Counter[str] = Counter()
        for (owner, number), counted in events.items():
            if owner != run:
                continue
            done = counted.get("applied", 0) + counted.get("no_changes", 0) + counted.get("errored", 0) \
                - counted.get("requeued", 0)
            if done == counted.get("new", -1):
                settled += 1
                continue
            actual = rows.get((run, number), {})
            for name, state in (("applied", APPLIED), ("no_changes", NO_CHANGES), ("errored", ERRORED)):
                if counted.get(name, 0) > actual.get(state, 0):
                    wrong[f"{name} over its rows"] += 1
                elif counted.get(name, 0) < actual.get(state, 0):
                    wrong[f"{name} under its rows"] += 1
        reasons = ", ".join(f"{name} in {n}" for name, n in wrong.most_common()) or "no count off"
        found.append(f"{run}: the run events on the topic settle {settled}/{sealed.get(run, '?')} batches "
                     f"({reasons})")
    return found


# --- the evidence at the end -----------------------------------------------------------------


def _rows(url: str, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=10) as conn:
        return conn.execute(query, params).fetchall()


def _receipts(target: TargetProcess, ids: Iterable[str]) -> dict[str, int]:
    """How often the target received each id (its first five receipts are timed)."""
    counts = {}
    with httpx.Client(base_url=target.url, timeout=10.0) as client:
        for entity_id in list(ids)[:_RECEIPT_LOOKUPS]:
            response = client.get(f"/_admin/receipts/{entity_id}")
            if response.status_code == 200:
                counts[entity_id] = len(response.json()["times"])
    return counts


def target_stats(target: TargetProcess, attempts: int = 12) -> dict[str, Any]:
    """The target's /_admin/stats. After a Postgres restart each stale connection of its pool
    fails once (503) before the pool replaces it, so a few attempts may be needed."""
    for attempt in range(attempts):
        try:
            return target.stats()
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503 or attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def gather(settings: Settings, target: TargetProcess, target_database: str, *, faults: Faults, sent: int,
           sent_hashes: set[bytes], runs: list[str], outcome: str) -> Evidence:
    """Read everything the checks need from the database, the target and the completions topic."""
    db = settings.database_url.get_secret_value() if settings.database_url else ""
    states = {int(state): int(n)
              for state, n in _rows(db, "SELECT state, count(*) FROM ingestion_logs GROUP BY state")}
    duplicates = int(_rows(db, "SELECT coalesce(sum(duplicate_count), 0) FROM ingestion_logs")[0][0])
    stored_hashes = {bytes(h) for (h,) in _rows(db, "SELECT DISTINCT entity_hash FROM ingestion_logs")}
    row_states = {str(i): int(s) for i, s in _rows(db, "SELECT id::text, state FROM ingestion_logs")}
    results = {str(i) for (i,) in _rows(target_database, "SELECT id::text FROM streams_target.results")}
    succeeded = {i for i, s in row_states.items() if s in (APPLIED, NO_CHANGES)}
    try:
        [(twice,)] = _rows(target_database, target_store.queries()["count_applied_twice"])
        applied_twice: int | None = int(twice)
    except psycopg.errors.UndefinedTable:
        applied_twice = None  # a target without the receipt log
    errored = [ErroredRow(str(i), c, int(h) if h is not None else None, m, int(a))
               for i, c, h, m, a in _rows(db, """
                   SELECT id::text, last_error->>'class', (last_error->>'http_status')::int,
                          left(last_error->>'message', 160), attempts
                     FROM ingestion_logs WHERE state = %(errored)s""", {"errored": ERRORED})]
    # Applied although the target fails them for good: a contradiction (rows never tried show
    # up as non-terminal instead).
    permanent_elsewhere = sum(1 for i in succeeded if is_permanent(faults, i))
    unexplained_ids = [row.id for row in errored if not is_permanent(faults, row.id)]
    verdict = judge_errored(faults, errored, _receipts(target, unexplained_ids), permanent_elsewhere)
    stats = target_stats(target)
    completions = read_all_completions(settings)
    latest: dict[str, RunCompleted] = {}
    for completed in completions:
        if completed.run_id not in latest or completed.revision > latest[completed.run_id].revision:
            latest[completed.run_id] = completed
    per_run: dict[str, dict[int, int]] = {run: {} for run in runs}
    per_run_duplicates: dict[str, int] = dict.fromkeys(runs, 0)
    for run_id, state, count, dups in _rows(db, """
            SELECT run_id, state, count(*), coalesce(sum(duplicate_count), 0)
              FROM ingestion_logs GROUP BY run_id, state"""):
        per_run.setdefault(run_id, {})[int(state)] = int(count)
        per_run_duplicates[run_id] = per_run_duplicates.get(run_id, 0) + int(dups)
    run_rows = [RunRows(run, per_run.get(run, {}), per_run_duplicates.get(run, 0),
                        latest[run].entities.model_dump() if run in latest else None) for run in runs]
    counted: CompletionCount = count_completions(runs, [(c.run_id, c.revision) for c in completions])
    behind = unread(settings)
    return Evidence(
        sent=sent, distinct=len(sent_hashes), missing_hashes=len(sent_hashes - stored_hashes), states=states,
        duplicates=duplicates, applied_without_result=len(succeeded - results),
        results_not_applied=len((results & row_states.keys()) - succeeded),
        results_unknown=len(results - row_states.keys()),
        duplicate_applies=int(stats.get("duplicate_applies", 0)), applied_twice=applied_twice,
        completions=counted, completion_records=len(completions), verdict=verdict, runs=run_rows,
        outcome=outcome,
        unread={topic.removeprefix(settings.topic_prefix):
                {partition: end - max(committed, 0) for partition, (committed, end) in parts.items()}
                for topic, parts in behind.items()},
        unaccepted=unaccepted_batches(settings, db, behind) if sent > len(row_states) + duplicates else [],
        incomplete=_incomplete(db, counted.missing) + audit_run_events(settings, db, counted.missing))


def _incomplete(database: str, runs: Iterable[str]) -> list[str]:
    """What the tracker's Postgres mirror (ingest_runs) says of runs without a completion."""
    found = []
    for run, total, completed, failed, in_retry, errored in _rows(database, """
            SELECT run_id, batches_total, batches_completed, batches_failed, entities_in_retry,
                   entities_errored
              FROM ingest_runs WHERE run_id = ANY(%(runs)s) ORDER BY run_id""", {"runs": list(runs)}):
        found.append(f"{run}: ingest_runs settles {completed + failed}/{total if total is not None else '?'} "
                     f"batches (completed {completed}, failed {failed}), entities in retry {in_retry}, "
                     f"errored {errored}")
    return found
