"""The run tracker end to end: real Kafka, Postgres, the reference target and `streams worker`
processes. Every test ends by reading the whole completions topic and checking that each
(run_id, revision) is on it exactly once, with exact counts."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.client.producer import IngestProducer
from streams.dev.workers import start_worker, stop_worker
from streams.dlq.replay import ReplayOptions, replay
from streams.dlq.select import Filters
from streams.kafka.admin import create_topics
from streams.kafka.config import confluent_config
from streams.kafka.topics import Role, TopicSpec, topic_names
from streams.models import RunCompleted
from streams.records import RunEvent, WorkItem, WorkRecord, batch_accepted, entities_settled, sealed
from streams.runs.completions import encode, partition_for, read_completions, wait_for_completion
from streams.runs.progress import BatchState, RunProgress
from streams.settings import Settings, to_env
from streams.target.faults import Faults
from streams.target.launch import TargetProcess
from tests.helpers import committed, end_offsets, rows, wait_for

pytestmark = pytest.mark.integration

PER_BATCH = 5
KILL_RUN = 12  # batches of each run of the kill test
# A killed worker's partitions move once the broker gives up on it: the shortest session the
# broker allows (group.min.session.timeout.ms) keeps the kill tests short.
FAST_FAILOVER = {"STREAMS_SESSION_TIMEOUT": "6",
                 # Each run event the tracker counts is in the logs of a failed test.
                 "STREAMS_LOG_LEVEL": "DEBUG"}


class Workers:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings, self.log_dir = settings, log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            log_path = self.log_dir / f"worker-{len(self.processes)}.log"
            self.processes.append(start_worker(self.settings, log_path=log_path, extra_env=FAST_FAILOVER))

    def wait_ready(self) -> None:
        """Until every live worker has its tables recovered (the tracker says so in its log).

        Tests produce once the workers are up: records waiting on partitions with no committed
        offset while workers join can be lost by faust's consumer (see streams/kafka/positions.py);
        the tracker reads its own again, the other agents do not (yet)."""
        def ready() -> bool:
            return all(_log_of(self.log_dir, self.processes.index(p)).count("run progress recovered")
                       for p in self.live())
        wait_for(ready, timeout=60, what="the workers ready", alive=self.alive)

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.processes if p.poll() is None]

    def alive(self) -> bool:
        return bool(self.live())

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        # All at once: one at a time, each stop would wait for the others' rebalance.
        for process in self.live():
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            stop_worker(process)

    def logs(self, tail: int | None = 3000) -> str:
        texts = (p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))
        return "\n".join(text[-tail:] if tail else text for text in texts)


def _log_of(log_dir: Path, index: int) -> str:
    path = log_dir / f"worker-{index}.log"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def workers(pipeline: Settings, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(pipeline, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


def entities(run_id: str, count: int) -> list[dict[str, Any]]:
    return [{"object_type": "dcim.site", "entity": {"name": f"{run_id} site {i}", "slug": f"{run_id}-{i}"}}
            for i in range(count)]


def send_batches(settings: Settings, run_id: str, batches: range, *, seal: int | None = None,
                 items: list[dict[str, Any]] | None = None) -> None:
    items = items or entities(run_id, (batches.stop) * PER_BATCH)
    with IngestProducer(settings) as producer:
        for batch in batches:
            producer.send_batch(run_id, batch, items[batch * PER_BATCH:(batch + 1) * PER_BATCH])
        if seal is not None:
            producer.seal(run_id, seal)


def mirrored(settings: Settings, run_id: str) -> dict[str, Any] | None:
    found = rows(settings, "SELECT batches_total, batches_accepted, batches_completed, batches_failed,"
                           " entities_accepted, entities_applied + entities_no_changes, entities_errored,"
                           " revision FROM ingest_runs WHERE run_id = %s", (run_id,))
    if not found:
        return None
    keys = ("total", "accepted", "completed", "failed", "entities", "done", "errored", "revision")
    return dict(zip(keys, found[0], strict=True))


def all_completions(settings: Settings, expect: int, workers: Workers,
                    timeout: float = 120) -> list[RunCompleted]:
    """Every record on the completions topic, once `expect` are there and the workers are idle:
    each run event committed, so nothing left can emit anything."""
    run_events = topic_names(settings).run_events
    seen: list[RunCompleted] = []
    deadline = time.monotonic() + timeout
    for completed in read_completions(settings, timeout=timeout):
        seen.append(completed)
        if len(seen) >= expect:
            break
        assert time.monotonic() < deadline
    assert len(seen) >= expect, \
        f"only {len(seen)} completions of {expect}\n{diagnose(settings)}\n{workers.logs()}"
    wait_for(lambda: committed(settings, run_events) == end_offsets(settings, run_events), timeout=60,
             what=f"every run event committed\n{diagnose(settings)}", alive=workers.alive)
    return list(read_completions(settings, timeout=3))


def streams_cli(settings: Settings, *args: str) -> str:
    """`streams ARGS` in a subprocess, as an operator runs it; its output."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}, **to_env(settings)}
    result = subprocess.run([sys.executable, "-m", "streams", *args], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def cells(line: str) -> list[str]:
    """The words of a line of a printed table, without its borders."""
    return [word for word in line.replace("│", " ").replace("┃", " ").split() if word]


def diagnose(settings: Settings) -> str:
    """Where a stuck test stands: runs not complete, and committed vs end offsets per partition."""
    incomplete = rows(settings, "SELECT run_id, batches_total, batches_accepted, batches_completed,"
                                " batches_failed FROM ingest_runs WHERE revision = 0")
    lines = [f"incomplete runs: {incomplete}"]
    names = topic_names(settings)
    consumer = Consumer(confluent_config(settings, **{"group.id": settings.app_id}))
    try:
        for topic in (names.ingest, names.work, names.run_events, names.dlq):
            tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
            done = [tp.offset for tp in consumer.committed(tps, timeout=10)]
            ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
            lines.append(f"{topic}: committed {done}, end {ends}")
    finally:
        consumer.close()
    return "\n".join(lines)


def exactly_once(completions: list[RunCompleted]) -> dict[tuple[str, int], RunCompleted]:
    keys = Counter((c.run_id, c.revision) for c in completions)
    assert [key for key, n in keys.items() if n > 1] == []
    return {(c.run_id, c.revision): c for c in completions}


def assert_clean(completed: RunCompleted, batches: int) -> None:
    assert completed.status == "succeeded"
    assert completed.batches.model_dump() == {"total": batches, "completed": batches, "failed": 0}
    e = completed.entities
    entities = batches * PER_BATCH
    assert (e.accepted, e.applied + e.no_changes, e.duplicates, e.errored) == (entities, entities, 0, 0)


# --- tests -----------------------------------------------------------------------------------


def test_seal_first_between_or_last(pipeline: Settings, workers: Workers) -> None:
    workers.start()
    workers.wait_ready()
    send_batches(pipeline, "seal-first", range(0), seal=10)
    wait_for(lambda: (mirrored(pipeline, "seal-first") or {}).get("total") == 10, what="seal-first sealed",
             alive=workers.alive)
    send_batches(pipeline, "seal-first", range(10))

    send_batches(pipeline, "seal-middle", range(5))
    wait_for(lambda: (mirrored(pipeline, "seal-middle") or {}).get("completed") == 5,
             what="half of seal-middle", alive=workers.alive)
    send_batches(pipeline, "seal-middle", range(0), seal=10)
    wait_for(lambda: (mirrored(pipeline, "seal-middle") or {}).get("total") == 10, what="seal-middle sealed",
             alive=workers.alive)
    send_batches(pipeline, "seal-middle", range(5, 10), items=entities("seal-middle", 50))

    send_batches(pipeline, "seal-last", range(10))
    wait_for(lambda: (mirrored(pipeline, "seal-last") or {}).get("completed") == 10, what="seal-last settled",
             alive=workers.alive)
    assert (mirrored(pipeline, "seal-last") or {})["revision"] == 0  # complete but not sealed: no completion
    send_batches(pipeline, "seal-last", range(0), seal=10)

    by_key = exactly_once(all_completions(pipeline, 3, workers))
    assert sorted(by_key) == [("seal-first", 1), ("seal-last", 1), ("seal-middle", 1)]
    for completed in by_key.values():
        assert_clean(completed, 10)
    assert wait_for_completion(pipeline, "seal-middle", timeout=10) == by_key[("seal-middle", 1)]
    wait_for(lambda: mirrored(pipeline, "seal-last") == {
        "total": 10, "accepted": 10, "completed": 10, "failed": 0, "entities": 50, "done": 50, "errored": 0,
        "revision": 1}, what="seal-last mirrored")


def test_twenty_concurrent_runs_on_two_workers_complete_once_with_exact_counts(
        pipeline: Settings, workers: Workers) -> None:
    workers.start(2)
    workers.wait_ready()
    run_ids = [f"concurrent-{n:02d}" for n in range(20)]
    with ThreadPoolExecutor(len(run_ids)) as pool:
        for future in [pool.submit(send_batches, pipeline, run_id, range(50), seal=50) for run_id in run_ids]:
            future.result()

    by_key = exactly_once(all_completions(pipeline, 20, workers, timeout=180))
    assert sorted(by_key) == [(run_id, 1) for run_id in run_ids]
    for completed in by_key.values():
        assert_clean(completed, 50)
    assert rows(pipeline, "SELECT count(*), sum(batches_completed), sum(entities_accepted)"
                          " FROM run_completions JOIN ingest_runs USING (run_id)"
                          " WHERE status = 'succeeded'") == [(20, 1000, 5000)]


def test_a_worker_killed_at_random_moments_changes_nothing(pipeline: Settings, workers: Workers) -> None:
    """Ten runs, two at a time, and a worker SIGKILLed at a random moment of each: in the first
    run of a pair once a random share of its batches is counted (none to all), in the second a
    random time later, while the group may still be recovering from the first kill. Kills land
    mid-count, mid-recovery and around completions; a broker notices a dead worker only after
    its session timeout, so pairing the kills halves the time the test spends waiting for that."""
    rng = random.Random(3)
    workers.start(2)
    run_ids = [f"killed-{n}" for n in range(10)]
    with ThreadPoolExecutor(2) as sender:
        for first, second in zip(run_ids[::2], run_ids[1::2], strict=True):
            workers.wait_ready()
            sending = [sender.submit(send_batches, pipeline, run_id, range(KILL_RUN), seal=KILL_RUN)
                       for run_id in (first, second)]
            share = rng.randint(0, KILL_RUN)
            wait_for(lambda r=first, k=share: (mirrored(pipeline, r) or {}).get("completed", 0) >= k,
                     timeout=60, what=f"{share} batches of {first} counted", alive=workers.alive)
            # The random moments themselves: sleeps that wait for nothing.
            time.sleep(rng.uniform(0.0, 0.3))
            workers.kill(rng.choice(workers.live()))
            time.sleep(rng.uniform(0.0, 1.5))
            workers.kill(rng.choice(workers.live()))
            workers.start(2)
            for future in sending:
                future.result()

    by_key = exactly_once(all_completions(pipeline, 10, workers, timeout=120))
    assert sorted(by_key) == [(run_id, 1) for run_id in run_ids], workers.logs()
    for completed in by_key.values():
        assert_clean(completed, KILL_RUN)
    for run_id in run_ids:
        wait_for(lambda r=run_id: (mirrored(pipeline, r) or {}).get("revision") == 1,
                 what=f"{run_id} mirrored")
        assert mirrored(pipeline, run_id) == {
            "total": KILL_RUN, "accepted": KILL_RUN, "completed": KILL_RUN, "failed": 0,
            "entities": KILL_RUN * PER_BATCH, "done": KILL_RUN * PER_BATCH, "errored": 0, "revision": 1}


def test_all_workers_restarted_mid_run_restore_progress_from_the_changelog(
        pipeline: Settings, workers: Workers) -> None:
    """Half the run is counted and committed, every worker stops, new ones start: the first half
    is delivered to nobody again, so the counts of the completion can only come from the
    changelog. (Stopping while plan-apply has work records in flight is another test's matter.)"""
    run_events = topic_names(pipeline).run_events
    items = entities("restarted", 60 * PER_BATCH)
    workers.start(2)
    workers.wait_ready()
    send_batches(pipeline, "restarted", range(30), items=items)
    wait_for(lambda: (mirrored(pipeline, "restarted") or {}).get("completed") == 30, timeout=60,
             what="the first half counted", alive=workers.alive)
    wait_for(lambda: committed(pipeline, run_events) == end_offsets(pipeline, run_events), timeout=30,
             what="its run events committed", alive=workers.alive)
    workers.stop_all()

    workers.start(2)
    workers.wait_ready()
    send_batches(pipeline, "restarted", range(30, 60), seal=60, items=items)
    by_key = exactly_once(all_completions(pipeline, 1, workers))
    assert list(by_key) == [("restarted", 1)]
    assert_clean(by_key[("restarted", 1)], 60)
    # The new workers found the run in the changelog when they started.
    assert any('"runs":1' in _log_of(workers.log_dir, index) for index in (2, 3))


def test_a_failed_batch_is_revised_after_the_fix_and_the_replay(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    items = entities("replayed", 50)
    items[17]["entity"]["name"] = "replayed POISON site"  # batch 3: the target rejects it for now
    target.set_faults(Faults(poison_pattern="POISON", poison_status=422))
    workers.start()
    workers.wait_ready()
    send_batches(pipeline, "replayed", range(10), seal=10, items=items)

    first = wait_for_completion(pipeline, "replayed", timeout=90, revision=1)
    assert (first.status, first.batches.failed, first.batches.completed, first.entities.errored) == \
        ("failed", 1, 9, 1)
    assert first.entities.applied + first.entities.no_changes == 49

    # The operator's view: the run failed, batch 3 is why.
    wait_for(lambda: (mirrored(pipeline, "replayed") or {}).get("revision") == 1, what="revision 1 mirrored")
    listing = streams_cli(pipeline, "runs")
    assert "replayed" in listing and "failed" in listing and "10/10" in listing
    detail = streams_cli(pipeline, "runs", "replayed")
    assert "failed batches" in detail and "permanent" in detail
    assert [cells(line)[0] for line in detail.splitlines() if "permanent" in line] == ["3"]

    target.set_faults(Faults())
    report = replay(pipeline, Filters(runs=("replayed",)), ReplayOptions(requested_by="tests"))
    assert report.replayed == 1

    second = wait_for_completion(pipeline, "replayed", timeout=90, revision=2)
    assert (second.status, second.batches.failed, second.batches.completed, second.entities.errored) == \
        ("succeeded", 0, 10, 0)
    assert second.entities.applied + second.entities.no_changes == 50
    assert second.sealed_at == first.sealed_at and second.completed_at > first.completed_at
    by_key = exactly_once(all_completions(pipeline, 2, workers))
    assert sorted(by_key) == [("replayed", 1), ("replayed", 2)]
    assert wait_for_completion(pipeline, "replayed", timeout=10) == second  # the latest
    wait_for(lambda: (mirrored(pipeline, "replayed") or {}).get("revision") == 2, what="revision 2 mirrored")
    detail = streams_cli(pipeline, "runs", "replayed")
    assert "succeeded" in detail and "failed batches" not in detail
    revisions = [cells(line)[:2] for line in detail.splitlines() if cells(line)[:1] in (["1"], ["2"])]
    assert revisions == [["1", "failed"], ["2", "succeeded"]]


# --- the states a crash leaves behind, made on purpose ---------------------------------------
# A SIGKILL lands in a given window of a few milliseconds only by luck; these tests write what
# such a crash leaves in the changelogs and on the topics, then start a worker on it.


def produce_to(settings: Settings, topic: str, partition: int, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(confluent_config(settings, **{"enable.idempotence": True, "acks": "all"}))
    for key, value in records:
        producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


def one_batch_run(run_id: str) -> list[RunEvent]:
    work = WorkRecord(run_id, 0, tuple(WorkItem(f"id-{i}", "dcim.site", {}) for i in range(PER_BATCH)))
    return [batch_accepted(run_id, 0, entities=PER_BATCH, new=PER_BATCH, duplicates=0, producer=None),
            entities_settled(work, {"applied": PER_BATCH}), sealed(run_id, 1)]


def crashed_state(settings: Settings, run_id: str, progress: RunProgress) -> list[RunEvent]:
    """What a worker killed while counting `run_id` leaves behind: the run's batch counted in
    run_batches, `progress` as the last run_progress record that reached the changelog. Returns
    the run's events, which were not committed and will be delivered again."""
    names = topic_names(settings)
    partition = partition_for(run_id, settings.partitions)
    events = one_batch_run(run_id)
    produce_to(settings, topic_names(settings).run_batches_changelog, partition,
               [(orjson.dumps(f"{run_id}:0"), orjson.dumps(counted(events).to_json()))])
    produce_to(settings, names.run_progress_changelog, partition,
               [(orjson.dumps(run_id), orjson.dumps(progress.to_json()))])
    return events


def counted(events: list[RunEvent]) -> BatchState:
    return BatchState(events=(events[0].event_id, events[1].event_id), accepted=True, entities=PER_BATCH,
                      new=PER_BATCH, applied=PER_BATCH)


def test_what_a_crash_leaves_in_the_changelogs_and_on_the_topic_is_recovered_exactly(
        pipeline: Settings, workers: Workers) -> None:
    create_topics(pipeline, [TopicSpec(topic_names(pipeline).run_batches_changelog, Role.CHANGELOG,
                                       pipeline.partitions, 1, {"cleanup.policy": "compact"})])
    # "lost-sum": the first owner's batch record reached the changelog, its run record did not.
    # The run looks empty, and its redelivered events are recognised as counted already.
    lost = crashed_state(pipeline, "lost-sum", RunProgress("lost-sum", first_seen=1))
    # "sent-once": the first owner made the run's state durable, sent revision 1 and died before
    # it wrote that down. The next owner must find the record instead of sending a second one.
    durable = RunProgress("sent-once").seal(1, 1_000)
    assert durable is not None
    durable = durable.with_batch(BatchState(), counted(one_batch_run("sent-once")), 1_000)
    assert durable.due
    sent = durable.completion(1, int(time.time() * 1000))
    produce_to(pipeline, topic_names(pipeline).completions, partition_for("sent-once", pipeline.partitions),
               [(b"sent-once", encode(sent))])
    once = crashed_state(pipeline, "sent-once", durable)

    run_events = topic_names(pipeline).run_events
    for run_id, events in (("lost-sum", lost), ("sent-once", once)):
        produce_to(pipeline, run_events, partition_for(run_id, pipeline.partitions),
                   [(run_id.encode(), e.encode()) for e in events])
    # Records waiting on partitions with no committed offset while a worker starts: the very case
    # where faust's consumer drops some (streams/kafka/positions.py); they must be read again.
    workers.start()

    by_key = exactly_once(all_completions(pipeline, 2, workers))
    assert by_key[("sent-once", 1)] == sent
    recounted = by_key[("lost-sum", 1)]
    assert (recounted.batches.completed, recounted.entities.accepted, recounted.entities.applied) == (1, 5, 5)
    logs = workers.logs(tail=None)
    assert "run sums corrected from its batches" in logs
    assert "run completion found on the topic; not sent again" in logs
    wait_for(lambda: rows(pipeline, "SELECT run_id, revision, status FROM run_completions ORDER BY 1") ==
             [("lost-sum", 1, "succeeded"), ("sent-once", 1, "succeeded")], what="completions recorded")
