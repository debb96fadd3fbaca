"""Workers killed while records are in flight: producers keep sending while workers are killed
with SIGKILL and replaced, before the group ever settles, on partitions that have no committed
offset yet. Every entity must get a row and a final state, nothing may be applied twice, and
every run completes once. Real Kafka, Postgres, the reference target and worker processes."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections import Counter

import pytest

from streams.client.generate import generate_entities
from streams.client.producer import IngestProducer
from streams.kafka.admin import create_topics
from streams.kafka.topics import topology
from streams.pipeline.outcomes import State
from streams.runs.completions import read_completions, wait_for_completion
from streams.settings import Settings
from streams.target.faults import Faults
from streams.target.launch import TargetProcess
from tests.helpers import state_counts
from tests.integration.conftest import Workers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# The broker's shortest session (group.min.session.timeout.ms): a dead worker's partitions move
# in seconds, so the test spends its time on kills, not on waiting for the broker to notice.
FAST = {"STREAMS_SESSION_TIMEOUT": "6"}
RUNS = 3
PER_RUN = 1200
BATCH = 40


def test_workers_killed_while_records_arrive_lose_nothing(pipeline: Settings, workers: Workers,
                                                          target: TargetProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    custom = pipeline.model_copy(update={"partitions": 12, "topic_prefix": f"{pipeline.topic_prefix}{tag}.",
                                         "app_id": f"{pipeline.app_id}-{tag}"})
    create_topics(custom, topology(custom))
    target.set_faults(Faults(latency_ms=20))
    items = {f"k{n}": list(generate_entities(PER_RUN, seed=n, duplicate_ratio=0.0, namespace=f"k{n}",
                                             first_host=n * 100_000)) for n in range(RUNS)}
    sent = threading.Event()

    def produce() -> None:
        # Batch by batch, a little at a time, so records arrive throughout the kills.
        with IngestProducer(custom) as producer:
            for index in range(PER_RUN // BATCH):
                for run_id, entities in items.items():
                    producer.send_batch(run_id, index, entities[index * BATCH:(index + 1) * BATCH])
                producer.flush()
                time.sleep(0.4)
            for run_id in items:
                producer.seal(run_id, PER_RUN // BATCH)
        sent.set()

    for _ in range(2):
        workers.start(custom, FAST)  # not waited for: the group is still forming when records arrive
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    rng = random.Random(7)
    for _ in range(8):  # kill a worker every couple of seconds, before the group ever settles
        time.sleep(rng.uniform(1.5, 3.5))
        alive = [p for p in workers.processes if p.poll() is None]
        victim = rng.choice(alive)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        workers.start(custom, FAST)
    thread.join(120)
    assert sent.is_set(), "the producer did not finish"

    for run_id in items:
        completed = wait_for_completion(custom, run_id, timeout=240)
        assert (completed.status, completed.entities.accepted, completed.entities.errored) == ("succeeded", PER_RUN, 0)
        assert completed.entities.applied + completed.entities.no_changes == PER_RUN
        assert state_counts(custom, run_id) == {State.APPLIED: PER_RUN}, run_id  # every entity has its row
    stats = target.stats()
    assert stats["duplicate_applies"] == 0 and stats["applied"] == RUNS * PER_RUN
    seen = Counter((c.run_id, c.revision) for c in read_completions(custom, timeout=5))
    assert seen == {(run_id, 1): 1 for run_id in items}
