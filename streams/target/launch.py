"""Start the reference target as a subprocess (`python -m streams target`), for tests and demos.

The child gets its database URL and token through the environment, never the command line
(which `ps` shows to every user). Inherited `STREAMS_TARGET_*` options are removed first, so
the faults a caller passes are the only ones in force. `start_target` returns once `/health`
answers, or raises as soon as the child exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from streams.dev.processes import free_port, wait_until
from streams.errors import DevServiceError
from streams.target.faults import Faults

_OPTION_ENV = (
    "HOST", "PORT", "DATABASE_URL", "LATENCY_MS", "TRANSIENT_RATE", "PERMANENT_RATE", "FAIL_FIRST",
    "POISON_PATTERN", "POISON_STATUS", "STATUS_RATE", "STATUS_CODE", "STATUS_FIRST", "RETRY_AFTER", "OUTAGE", "DB_DOWN",
    "CAPACITY", "SEED", "TOKEN",
)
_HTTP_TIMEOUT = httpx.Timeout(10.0, connect=2.0)


def fault_args(faults: Faults) -> list[str]:
    """The `streams target` options that set `faults` (defaults left out)."""
    args: list[str] = []
    for name, value in faults.model_dump(exclude_defaults=True).items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(option if value else f"--no-{option[2:]}")
        elif value is not None:
            args.append(f"{option}={value}")  # one token, so a pattern starting with '-' stays a value
    return args


@dataclass
class TargetProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    token: str | None = None
    temporary_log: bool = False  # a log start_target made up, removed by a clean stop()

    def _client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=_HTTP_TIMEOUT)

    def set_faults(self, faults: Faults) -> Faults:
        with self._client() as client:
            response = client.put("/_admin/faults", content=faults.model_dump_json())
            response.raise_for_status()
            return Faults.model_validate_json(response.content)

    def faults(self) -> Faults:
        with self._client() as client:
            response = client.get("/_admin/faults")
            response.raise_for_status()
            return Faults.model_validate_json(response.content)

    def stats(self) -> dict[str, Any]:
        with self._client() as client:
            response = client.get("/_admin/stats")
            response.raise_for_status()
            return response.json()  # type: ignore[no-any-return]

    def receipts(self, entity_id: str) -> list[float]:
        """Epoch seconds at which the target received `entity_id` (its first five receipts)."""
        with self._client() as client:
            response = client.get(f"/_admin/receipts/{entity_id}")
            response.raise_for_status()
            return list(response.json()["times"])

    def reset(self) -> None:
        with self._client() as client:
            client.post("/_admin/reset").raise_for_status()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, then SIGKILL; return the exit code (-15 after a clean shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        # uvicorn re-raises the SIGTERM it handled once shut down, so -SIGTERM is a clean exit.
        if self.temporary_log and self.process.returncode in (0, -signal.SIGTERM):
            self.log_path.unlink(missing_ok=True)
        return self.process.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> TargetProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_target(database_url: str, *, port: int = 0, faults: Faults | None = None, token: str | None = None,
                 log_path: Path | None = None, timeout: float = 30.0) -> TargetProcess:
    """Start `streams target` on 127.0.0.1 (a free port when `port` is 0) and wait until it is healthy."""
    port = port or free_port()
    temporary_log = log_path is None
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="streams-target-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    env = {key: value for key, value in os.environ.items()
           if not (key.startswith("STREAMS_TARGET_") and key.removeprefix("STREAMS_TARGET_") in _OPTION_ENV)}
    env["STREAMS_TARGET_DATABASE_URL"] = database_url
    if token:
        env["STREAMS_TARGET_TOKEN"] = token
    argv = [sys.executable, "-m", "streams", "target", "--host", "127.0.0.1", "--port", str(port),
            *fault_args(faults or Faults())]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - argv is built here, never from input
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )
    target = TargetProcess(f"http://127.0.0.1:{port}", process, log_path, token, temporary_log)
    try:
        wait_until(lambda: _healthy(target.url), timeout=timeout, what="reference target",
                   alive=lambda: process.poll() is None)
    except DevServiceError as exc:
        target.temporary_log = False  # kept: the message points at it
        target.stop()
        raise DevServiceError(f"{exc}; log {log_path}:\n{target.log_tail()}") from None
    return target
