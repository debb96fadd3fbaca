"""Helpers for driving the `streams` command as a user would, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def streams_cli(tmp_path: Path) -> Run:
    """Run `streams ARGS` with a clean STREAMS_* environment plus the given variables."""
    base_env = {key: value for key, value in os.environ.items() if not key.startswith("STREAMS_")}

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams", *args],
            env={**base_env, **(env or {})}, cwd=tmp_path, capture_output=True, text=True,
            timeout=timeout, check=False,
        )

    return run
