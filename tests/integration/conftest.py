"""Fixtures of the pipeline tests: the reference target and `streams worker` processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.dev.workers import start_worker, stop_worker
from streams.settings import Settings
from streams.target.launch import TargetProcess, start_target


@pytest.fixture
def target(settings: Settings, tmp_path: Path) -> Iterator[TargetProcess]:
    assert settings.database_url is not None
    process = start_target(settings.database_url.get_secret_value(), log_path=tmp_path / "target.log")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def pipeline(topics: Settings, target: TargetProcess) -> Settings:
    """Settings for a topology with its topics created and the target running."""
    return topics.model_copy(update={"target_url": target.url, "batch_size": 200})


class Workers:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings, self.log_dir, self.processes = settings, log_dir, []

    def start(self, settings: Settings | None = None, extra_env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        process = start_worker(settings or self.settings, extra_env=extra_env,
                               log_path=self.log_dir / f"worker-{len(self.processes)}.log")
        self.processes.append(process)
        return process

    def alive(self) -> bool:
        return any(process.poll() is None for process in self.processes)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.log_dir.glob("worker-*.log"))

    def stop_all(self) -> None:
        for process in self.processes:
            stop_worker(process)


@pytest.fixture
def workers(pipeline: Settings, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(pipeline, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
