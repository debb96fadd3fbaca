"""Starting and stopping `streams worker` processes, for the demo, the benchmarks and tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from streams.settings import Settings, to_env


def start_worker(settings: Settings, *, topology: str = "default", log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **to_env(settings), "STREAMS_TOPOLOGY": topology, **(extra_env or {})}
    output = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"],
            env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log_path:
            output.close()  # type: ignore[union-attr]


def stop_worker(process: subprocess.Popen[bytes], *, timeout: float = 30.0, kill: bool = False) -> int:
    """SIGTERM (a clean faust shutdown that commits) or SIGKILL; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode
