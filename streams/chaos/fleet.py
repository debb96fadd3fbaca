"""What a chaos trial starts, kills and restarts: the worker processes, and the `streams dev`
broker and Postgres (only when they are ours: an external service is never touched)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from streams.dev import kafka_broker, postgres_server
from streams.dev.processes import is_running, stop_pid
from streams.dev.workers import start_worker, stop_worker
from streams.settings import Settings

# A restarted service stays down this long before it is started again.
DOWN_SECONDS = 3.0


class Fleet:
    """`size` worker slots. A killed worker is replaced in its slot at once, so `size` stay up;
    a worker that exits on its own is counted as a crash and started again too."""

    def __init__(self, settings: Settings, size: int, logs: Path, name: str,
                 env: Callable[[int], dict[str, str]]) -> None:
        self._settings = settings
        self._logs = logs
        self._name = name
        self._env = env
        self.slots: list[subprocess.Popen[bytes] | None] = [None] * size
        self.generations = [0] * size
        self.kills = 0
        self.crashes = 0

    def start(self) -> None:
        for slot in range(len(self.slots)):
            self._start(slot)

    def _start(self, slot: int) -> subprocess.Popen[bytes]:
        self.generations[slot] += 1
        log_path = self._logs / f"{self._name}-worker{slot}.{self.generations[slot]}.log"
        process = start_worker(self._settings, log_path=log_path, extra_env=self._env(slot))
        self.slots[slot] = process
        return process

    def kill(self, rng: random.Random) -> str:
        """SIGKILL a random worker and start its replacement; say what was done."""
        slot = rng.randrange(len(self.slots))
        process = self.slots[slot]
        old = process.pid if process else None
        if process is not None:
            stop_worker(process, kill=True)
        replacement = self._start(slot)
        self.kills += 1
        return f"kill -9 worker {slot} (pid {old}); replacement pid {replacement.pid}"

    def reap(self) -> list[str]:
        """Start again every worker that exited on its own; say which."""
        notes = []
        for slot, process in enumerate(self.slots):
            if process is not None and process.poll() is not None:
                self.crashes += 1
                code = process.returncode
                replacement = self._start(slot)
                notes.append(f"worker {slot} (pid {process.pid}) exited with {code}; "
                             f"restarted as pid {replacement.pid}")
        return notes

    def alive(self) -> int:
        return sum(1 for process in self.slots if process is not None and process.poll() is None)

    def stop(self) -> None:
        """SIGTERM every worker at once (a clean faust shutdown), SIGKILL what is left after 30 s."""
        running = [p for p in self.slots if p is not None]
        if not running:
            return
        with ThreadPoolExecutor(len(running)) as pool:
            list(pool.map(lambda p: stop_worker(p, timeout=30.0), running))
        self.slots = [None] * len(self.slots)

    def log_files(self) -> list[Path]:
        return sorted(self._logs.glob(f"{self._name}-worker*.log"))


@dataclass
class Services:
    """The `streams dev` broker and Postgres under `home`, when the trial may restart them."""

    home: Path
    settings: Settings
    kafka: bool  # the broker is ours (not external): it may be restarted
    postgres: bool
    started_kafka: bool = False  # started by this command: stopped when it ends
    started_postgres: bool = False
    notes: list[str] = field(default_factory=list)

    def restart_kafka(self) -> str:
        """SIGKILL the broker, wait, start it again on its port and data directory."""
        before = kafka_broker.state(self.home)
        if before is None or not is_running(before):
            return "broker not running: not restarted"
        began = time.time()
        stop_pid(before.pid, sig=signal.SIGKILL, timeout=30)
        time.sleep(DOWN_SECONDS)
        after, _ = kafka_broker.start(self.home, version=self.settings.kafka_version,
                                      heap=self.settings.kafka_heap, maven_repo=self.settings.maven_repo)
        note = f"broker killed (-9) and back in {time.time() - began:.1f}s"
        if after.url != before.url:
            note += f", BUT on another address ({after.url}, was {before.url}): clients cannot reach it"
        return note

    def restart_postgres(self) -> str:
        """Stop Postgres (SIGINT: fast shutdown, every connection dropped), wait, start it again."""
        before = postgres_server.state(self.home)
        if before is None or not is_running(before):
            return "Postgres not running: not restarted"
        began = time.time()
        stop_pid(before.pid, sig=signal.SIGINT, timeout=60)
        time.sleep(DOWN_SECONDS)
        after, _ = postgres_server.start(self.home)
        note = f"Postgres stopped and back in {time.time() - began:.1f}s"
        if after.port != before.port:
            note += f", BUT on another port ({after.port}, was {before.port}): clients cannot reach it"
        return note

    def stop_started(self) -> list[str]:
        """Stop the services this command started (by pid), leave the others running."""
        stopped = []
        for name, ours, current, sig in (
            ("kafka", self.started_kafka, kafka_broker.state(self.home), signal.SIGTERM),
            ("postgres", self.started_postgres, postgres_server.state(self.home), signal.SIGINT),
        ):
            if ours and current is not None and is_running(current):
                stop_pid(current.pid, sig=sig, timeout=60)
                stopped.append(name)
        return stopped
