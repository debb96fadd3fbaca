"""Named SQL from `sql/queries/*.sql`, loaded once.

A file holds blocks that start with a `-- name: <name>` line; the block runs to the next such
line. Code refers to statements by name and never builds SQL from strings.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from streams.package_data import sql_dir

_NAME_RE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str, origin: str = "<sql>") -> dict[str, str]:
    parts = _NAME_RE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        statement = body.strip()
        if not statement:
            raise ValueError(f"{origin}: query {name!r} is empty")
        if name in queries:
            raise ValueError(f"{origin}: query {name!r} is defined twice")
        queries[name] = statement.rstrip(";")
    return queries


@cache
def load(path: Path) -> dict[str, str]:
    return parse(path.read_text(encoding="utf-8"), path.name)


def named(group: str) -> dict[str, str]:
    """The queries of `sql/queries/<group>.sql`."""
    return load(sql_dir() / "queries" / f"{group}.sql")
