"""A faust worker on the real broker consumes, produces and commits (the smoke topology)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.dev.workers import start_worker, stop_worker
from streams.kafka.admin import create_topics
from streams.kafka.topics import Role, TopicSpec
from streams.settings import Settings
from topologies import smoke

pytestmark = pytest.mark.integration


def test_worker_copies_every_record_and_commits_its_offsets(settings: Settings, tmp_path: Path) -> None:
    source, sink = smoke.topic_names(settings)
    create_topics(settings, [TopicSpec(name, Role.WORK, settings.partitions, 1) for name in (source, sink)])
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, topology="smoke", log_path=log_path)
    try:
        result = smoke.check(settings, count=3000, timeout=90, alive=lambda: worker.poll() is None)
    finally:
        code = stop_worker(worker)
    log = log_path.read_text(errors="replace")
    assert result == {"sent": 3000, "copied": 3000, "committed": 3000}, log[-3000:]
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
