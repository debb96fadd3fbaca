"""The run tracker: run events → faust tables → one RunCompleted per run and revision.

    ingest.run-events ──► [run-tracker] ──► run_batches, run_progress (compacted changelogs)
      (key run_id)             │      └───► ingest_runs, run_completions (Postgres mirror)
                               └──────────► ingest.completions (RunCompleted, key run_id)

Tables (memory store, rebuilt from their changelogs on start and rebalance):

- `run_batches`: "{run_id}:{batch}" → BatchState (counts + ids of the events counted);
- `run_progress`: run_id → RunProgress (seal, sums of the batches, last revision emitted).

Both are written only while an event of the run is processed, and faust writes a changelog
record to the partition of the event being processed (`Table.partition_for_key`), so a run's
table entries live in the changelog partition matching its run-events partition and move with
it in a rebalance. A run value stays small however many batches the run has.

Counting once: an event changes its batch only if its id is not in the batch's list yet, and
the new list is written in the same changelog record as the new counts. A redelivered event
is recognised whatever was lost in a crash.

Keeping the sums right: a run's sums are updated by the change of one batch, in a second
record (of the other table) that a crash can lose while the first survives. So after every
recovery the sums are recounted from the batch records (`_recount`), and a run whose stored
sums differ is corrected when its next event is processed (an event of it is always coming
then: a lost write means its event was not committed, so it is delivered again).

Exactly one RunCompleted per revision (the hard part). Kafka transactions were not used: faust's
`processing_guarantee` is app-wide, and would move every other agent of the worker to
transactional sends and read_committed reads. Instead, when a run is due, in order:

1. flush faust's producer: every table write made so far is durable;
2. in one Postgres transaction holding an advisory lock on the run: look on the run's
   completions partition for (run_id, revision) written since the current event's timestamp
   minus SCAN_SLACK; send the completion only if it is not there, and wait for the broker's
   acknowledgement; record it in run_completions and ingest_runs;
3. write the new revision to run_progress and flush again.

Why that is enough: a completion is only sent after the state that made the run due is
durable (1), and the process does nothing else until the new revision is durable (3). If a
worker dies between the send and (3), the durable state is exactly the one it sent from, and
the events it was processing were not committed: the next owner processes them again, finds
the run due with the same revision at the same event, and finds the record on the topic
(a completion is sent after the event that made it due was produced, so after that event's
timestamp). The advisory lock serialises two workers that both think they own the run (one
leaving in a rebalance): the second finds the first's record. The revoke handler also waits
for the event in progress, so a worker that loses a run in a rebalance is done with it before
the new owner starts. The completions producer is idempotent: its own retries write nothing
twice, and `CompletionLog.send` waits for the delivery report even on failure, so nothing sent
is still in flight when the topic is searched again.

Acks: the stream runs with acks off (faust would ack an event when the agent moves past it,
even after an error: see streams/agents/batching.py). An event is acked after it is counted
and its run's snapshot is written to ingest_runs; faust flushes the table writes before it
commits the offsets. An event that fails is retried (with backoff) until it succeeds or a
rebalance takes it away: skipping one would make the counts wrong for good, while a stuck
partition shows up as lag and as stalled runs. Table writes need faust's current event, which
is set in the task iterating the stream, so events are handled there, one at a time (run
events are a few per batch), rather than through GuardedBatches' reader task. Each partition
is counted in offset order from its committed offset: faust can drop records around a
rebalance, and the tracker reads a partition again from the first record it missed
(streams/kafka/positions.py says how the records get lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import faust
import mode
import orjson
from faust.types import TP

from streams import metrics
from streams.backoff import delay, until_done
from streams.db.runs_store import RunsStore
from streams.kafka.checkpoint import Ack, Checkpoint
from streams.kafka.positions import Positions, committed_offsets, seek
from streams.kafka.topics import topic_names
from streams.records import RunEvent
from streams.resources import Resources
from streams.runs.completions import CompletionLog
from streams.runs.progress import BatchState, RunProgress, Totals, apply_event, contribution, count
from streams.settings import Settings

log = logging.getLogger(__name__)

AGENT = "run-tracker"
# Clock skew allowed between the producer of a run event and the tracker that sends a completion.
SCAN_SLACK_MS = 5 * 60 * 1000
# Acks wait for a mirror write at most this long, or this many events.
MIRROR_INTERVAL = 0.25
MIRROR_EVERY = 200
# An agent idle this long while a partition has records it did not count reads them again.
IDLE_BEHIND = 2.0


def batch_key(run_id: str, batch: int) -> str:
    return f"{run_id}:{batch}"


class RunTracker:
    def __init__(self, app: faust.App, settings: Settings, resources: Resources) -> None:
        names = topic_names(settings)
        self.app = app
        self.settings = settings
        self.store = RunsStore(resources.db)
        self.topic = names.run_events
        self.completions = CompletionLog(settings)
        self.positions = Positions()
        self.batches = app.Table(
            "run_batches", key_type=str, partitions=settings.partitions, on_recover=self._recount,
            changelog_topic=_changelog(app, names.run_batches_changelog, settings.partitions))
        self.progress = app.Table(
            "run_progress", key_type=str, partitions=settings.partitions,
            changelog_topic=_changelog(app, names.run_progress_changelog, settings.partitions))
        self._repairs: dict[str, Totals] = {}
        self._dirty: dict[str, RunProgress] = {}
        self._unacked: list[faust.types.EventT] = []
        self._busy = asyncio.Lock()
        self._flushing = asyncio.Lock()
        self._generation = 0
        self._recovered = False
        self._last_event = time.monotonic()
        app.on_partitions_revoked.connect(self._on_revoked)

    # --- the agent --------------------------------------------------------------------------

    async def run(self, stream: faust.StreamT) -> None:
        stream.enable_acks = False
        flusher = asyncio.ensure_future(self._flush_every(MIRROR_INTERVAL, stream))
        try:
            async for event in stream.events():
                self._last_event = time.monotonic()
                message = event.message
                verdict = self.positions.check(message.tp, message.offset)
                if not verdict.count:
                    # After a hole: not counted (nor acked, so no commit passes the hole).
                    if verdict.seek_to is not None:
                        await self._read_again(message.tp, verdict.seek_to, "records skipped")
                    continue
                if await self._process(event):
                    self.positions.counted(message.tp, message.offset)
                    self._unacked.append(event)
                if len(self._unacked) >= MIRROR_EVERY:
                    await self._flush_until_done(stream)
        finally:
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher

    async def _process(self, event: faust.types.EventT) -> bool:
        """Count `event`, retrying until done; False if a rebalance took it away first (faust
        delivers it again from the committed offset)."""
        generation, attempt = self._generation, 0
        while generation == self._generation:
            try:
                async with self._busy:
                    if generation != self._generation:
                        break
                    await self.handle(event)
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                message = event.message
                metrics.RETRIES.labels(agent=AGENT).inc()
                log.error("run event not counted; it will be processed again", exc_info=attempt == 1, extra={
                    "agent": AGENT, "error": type(exc).__name__, "detail": str(exc)[:300], "attempt": attempt,
                    "topic": message.topic, "partition": message.partition, "offset": message.offset})
                await asyncio.sleep(delay(attempt))
        return False

    async def _on_revoked(self, _sender: Any, /, *_args: Any, **_kwargs: Any) -> None:
        # The event being counted finishes (its completion sent and recorded) before this worker
        # rejoins the group, so the next owner of its run never works on it at the same time.
        self._generation += 1
        self._recovered = False
        self.positions.reset({})
        async with self._busy:
            await self.app.producer.flush()

    # --- counting ----------------------------------------------------------------------------

    async def handle(self, event: faust.types.EventT) -> None:
        message = event.message
        try:
            run_event = RunEvent.decode(message.value or b"")
        except (orjson.JSONDecodeError, TypeError, ValueError):
            # Nothing in it can be counted; our agents never write such a record.
            metrics.RECORDS.labels(agent=AGENT, outcome="invalid").inc()
            log.error("not a run event; skipped", extra={
                "topic": message.topic, "partition": message.partition, "offset": message.offset})
            return
        log.debug("run event", extra={"run": run_event.run_id, "type": run_event.type,
                                      "batch": run_event.batch, "partition": message.partition,
                                      "offset": message.offset})
        at_ms = int(message.timestamp * 1000)
        stored, progress = self._current(run_event.run_id, at_ms)
        if run_event.type == "sealed":
            progress = self._seal(progress, run_event, at_ms)
        elif run_event.batch is not None:
            progress = self._count(progress, run_event, at_ms)
        changed = progress != stored
        metrics.RECORDS.labels(agent=AGENT, outcome="counted" if changed else "seen_before").inc()
        if changed:
            self._save(progress)
        while progress.due:
            progress = await self._complete(progress, at_ms)

    def _current(self, run_id: str, at_ms: int) -> tuple[RunProgress | None, RunProgress]:
        raw = self.progress.get(run_id)
        stored = RunProgress.from_json(raw) if raw else None
        progress = stored or RunProgress(run_id)
        repaired = self._repairs.pop(run_id, None)
        if repaired is not None and repaired != progress.totals:
            log.warning("run sums corrected from its batches", extra={"run": run_id})
            progress = replace(progress, totals=repaired).seen(at_ms)
        return stored, progress

    def _seal(self, progress: RunProgress, run_event: RunEvent, at_ms: int) -> RunProgress:
        batches = count(run_event, "batches")
        sealed = progress.seal(batches, at_ms)
        if sealed is None:
            if progress.batches_total != batches:
                log.warning("run sealed again with another batch count; the first seal stands", extra={
                    "run": progress.run_id, "batches": progress.batches_total, "ignored": batches})
            return progress
        log.info("run sealed", extra={"run": progress.run_id, "batches": batches})
        return sealed

    def _count(self, progress: RunProgress, run_event: RunEvent, at_ms: int) -> RunProgress:
        assert run_event.batch is not None
        key = batch_key(run_event.run_id, run_event.batch)
        old = BatchState.from_json(self.batches.get(key))
        new = apply_event(old, run_event)
        if new is None:
            if run_event.event_id not in old.events:
                log.warning("run event of an unknown type; not counted", extra={
                    "run": run_event.run_id, "type": run_event.type})
            return progress
        self.batches[key] = new.to_json()
        if new.outcome != old.outcome and new.outcome is not None:
            log.info("batch settled", extra={"run": run_event.run_id, "batch": run_event.batch,
                                             "outcome": new.outcome, "errored": new.errored})
        return progress.with_batch(old, new, at_ms, run_event.producer)

    def _save(self, progress: RunProgress) -> None:
        self.progress[progress.run_id] = progress.to_json()
        self._dirty[progress.run_id] = progress

    # --- completion --------------------------------------------------------------------------

    async def _complete(self, progress: RunProgress, event_ms: int) -> RunProgress:
        """Emit revision + 1 of a due run (or find it already emitted); see the docstring."""
        revision = progress.revision + 1
        await self.app.producer.flush()
        async with self.store.completing(progress.run_id) as completing:
            found = await asyncio.to_thread(self.completions.find, progress.run_id, revision,
                                            since_ms=event_ms - SCAN_SLACK_MS)
            completed = found or progress.completion(revision, int(time.time() * 1000))
            if found is None:
                await asyncio.to_thread(self.completions.send, completed)
            done = progress.emitted_as(completed)
            await completing.record(completed, [done])
        self._save(done)
        await self.app.producer.flush()
        message = "run completed" if found is None else "run completion found on the topic; not sent again"
        log.info(message, extra={"run": done.run_id, "revision": revision, "status": completed.status,
                                 "batches": done.batches_total, "failed": completed.batches.failed})
        return done

    # --- recovery ----------------------------------------------------------------------------

    async def _recount(self) -> None:
        """Sum every run's batches as recovered; runs whose stored sums differ get corrected."""
        sums: defaultdict[str, Totals] = defaultdict(Totals)
        for key, value in list(self.batches.items()):
            run_id, _, _ = key.rpartition(":")
            sums[run_id] += contribution(BatchState.from_json(value))
        repairs = {}
        for run_id, total in sums.items():
            raw = self.progress.get(run_id)
            if raw is None or RunProgress.from_json(raw).totals != total:
                repairs[run_id] = total
        self._repairs = repairs
        mine = [tp for tp in self.app.consumer.assignment() if tp.topic == self.topic]
        try:
            starts = await asyncio.to_thread(committed_offsets, self.settings, self.app.conf.id, mine)
        except Exception as exc:  # noqa: BLE001 - counting goes on, without noticing skipped records
            log.warning("committed offsets not read; skipped records will not be noticed", extra={
                "agent": AGENT, "error": type(exc).__name__, "detail": str(exc)[:300]})
            starts = {}
        self.positions.reset({TP(*partition): offset for partition, offset in starts.items()})
        self._recovered = True
        self._last_event = time.monotonic()  # records take a moment to flow again after a rebalance
        log.info("run progress recovered",
                 extra={"agent": AGENT, "runs": len(sums), "to_correct": len(repairs)})

    # --- the Postgres mirror, and acks ------------------------------------------------------

    async def _flush_every(self, interval: float, stream: faust.StreamT) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._flush_until_done(stream)
            idle = time.monotonic() - self._last_event > IDLE_BEHIND
            if idle and self._recovered and not self.app.rebalancing:
                for tp, offset in self.positions.behind(self._ends()).items():
                    await self._read_again(tp, offset, "records at the end not delivered")

    def _ends(self) -> dict[Any, int | None]:
        """The end offset of each partition being counted, as the consumer last saw it."""
        ends: dict[Any, int | None] = {}
        for tp in list(self.positions.next):
            try:
                ends[tp] = self.app.consumer.highwater(TP(*tp))
            except Exception:  # noqa: BLE001 - not known (yet): nothing to compare
                ends[tp] = None
        return ends

    async def _read_again(self, tp: Any, offset: int, why: str) -> None:
        metrics.RECORDS.labels(agent=AGENT, outcome="read_again").inc()
        log.warning("run events read again from a partition", extra={
            "agent": AGENT, "reason": why, "topic": tp.topic, "partition": tp.partition, "offset": offset})
        await seek(self.app, tp, offset, AGENT)

    async def _flush_until_done(self, stream: faust.StreamT) -> None:
        # Acks wait until the mirror is written: an event is never acked before it.
        await until_done(lambda: self._flush(stream), what="run progress mirror", extra={"agent": AGENT})

    async def _flush(self, stream: faust.StreamT) -> None:
        """The tracker's checkpoint: its outputs (faust's table writes, flushed by faust before
        it commits; the Postgres mirror) before the acks."""
        async with self._flushing:
            events, dirty = self._unacked, self._dirty
            if not events and not dirty:
                return
            self._unacked, self._dirty = [], {}

            async def mirror() -> None:
                if dirty:
                    await self.store.mirror(sorted(dirty.values(), key=lambda p: p.run_id))

            try:
                await Checkpoint(_acker(stream), flush=mirror).commit(events)
            except BaseException:
                # Put them back for the next try; snapshots taken since are newer and win.
                self._unacked = events + self._unacked
                self._dirty = {**dirty, **self._dirty}
                raise


def _acker(stream: faust.StreamT) -> Ack:
    async def ack(events: Sequence[Any]) -> None:
        for event in events:
            await stream.ack(event)
    return ack


def register_tracker(app: faust.App, settings: Settings, resources: Resources,
                     topic: Callable[[str], faust.TopicT]) -> RunTracker:
    """Add the run tracker agent (and its tables) to `app`."""
    tracker = RunTracker(app, settings, resources)

    # One actor: a run's events are counted in the order of their partition.
    @app.agent(topic(topic_names(settings).run_events), name=AGENT)
    async def run_tracker(stream: faust.StreamT) -> None:
        await tracker.run(stream)

    app.service(_closing(tracker.completions))
    return tracker


def _changelog(app: faust.App, name: str, partitions: int) -> faust.TopicT:
    """A table changelog under our own topic name, configured as faust configures its own."""
    return app.topic(name, key_type=str, key_serializer="json", value_serializer="json",
                     partitions=partitions, compacting=True, deleting=False, acks=False, internal=True,
                     maxsize=131_072, allow_empty=True)


def _closing(completions: CompletionLog) -> type[mode.Service]:
    class CloseCompletions(mode.Service):
        async def on_stop(self) -> None:
            await asyncio.to_thread(completions.close)

    return CloseCompletions
