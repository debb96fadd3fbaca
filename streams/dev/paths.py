"""Where `streams dev` keeps what it downloads and what it runs.

In a checkout that is the repository's `.cache/` (git ignores it); an installed package uses the
user's cache directory. Jars are shared by every service home (dev and test sessions).
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").exists() and (checkout / "sql").is_dir():
        return checkout / ".cache"
    return Path(platformdirs.user_cache_dir("streams"))


def default_dev_home() -> Path:
    return cache_root() / "dev"


def kafka_pom() -> Path:
    return Path(__file__).resolve().parent / "kafka-pom.xml"
