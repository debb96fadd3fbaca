"""Process bookkeeping for `streams dev`: state files, liveness by pid, stopping by pid.

A pid alone is not proof: after a reboot or a crash the number may belong to another program.
A service counts as running only when its pid is alive *and* its command line still names the
service's own data directory (the marker), so a stale state file is recognised and replaced.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from streams.errors import DevServiceError


@dataclass(frozen=True)
class ServiceState:
    name: str
    pid: int
    port: int
    marker: str
    version: str
    url: str
    log: str
    started_at: float


def read_state(path: Path) -> ServiceState | None:
    try:
        return ServiceState(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def write_state(path: Path, state: ServiceState) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def is_running(state: ServiceState | None) -> bool:
    if state is None:
        return False
    try:
        process = psutil.Process(state.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return any(state.marker in part for part in process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", preferred: int | None = None) -> int:
    """`preferred` when it is free (so a restarted service keeps its address), else any free port."""
    if preferred and port_is_free(preferred, host):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Children started by this process. Keeping their Popen objects alive means Python does not
# warn about (or reap) a detached service when the object is garbage-collected; stop_pid()
# waits through them so no zombie is left behind.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(argv: list[str], log_path: Path, *, identity: dict[str, Any] | None = None,
          env: dict[str, str] | None = None) -> int:
    """Start a detached process (its own session, so Ctrl-C in the caller does not reach it)."""
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            **(identity or {}),
        )
    _CHILDREN[process.pid] = process
    return process.pid


def wait_until(check: Callable[[], bool], *, timeout: float, what: str,
               alive: Callable[[], bool] | None = None) -> None:
    """Poll `check` until true; fail early when `alive` says the process died."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if check():
            return
        if alive is not None and not alive():
            raise DevServiceError(f"{what}: the process exited while starting")
        if time.monotonic() > deadline:
            raise DevServiceError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def stop_pid(pid: int, *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Signal `pid`, wait for it to exit, SIGKILL after `timeout`. True when it was running."""
    try:
        process = psutil.Process(pid)
        os.kill(pid, sig)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False
    child = _CHILDREN.pop(pid, None)
    try:
        if child is not None:
            child.wait(timeout)
        else:
            process.wait(timeout)
    except (psutil.TimeoutExpired, subprocess.TimeoutExpired):
        process.kill()
        if child is not None:
            child.wait(10)
        else:
            process.wait(10)
    return True
