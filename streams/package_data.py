"""Locating the repository's `sql/` and `schemas/` folders, in a checkout or an installed wheel.

In a checkout they sit beside the package; a wheel carries copies inside the package
(pyproject's force-include), so the same code finds them either way.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def folder(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the {name}/ folder is missing from this installation")


def sql_dir() -> Path:
    return folder("sql")


def schemas_dir() -> Path:
    return folder("schemas")
