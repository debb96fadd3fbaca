"""`streams migrate`: apply the SQL migrations in sql/migrations."""

from __future__ import annotations

import typer

from streams.cli.context import Context, console, run_guarded
from streams.db.connect import conninfo
from streams.db.migrate import migrate as apply_migrations


def migrate(ctx: typer.Context) -> None:
    """Apply the SQL migrations that are missing (safe to run twice, and concurrently)."""
    context: Context = ctx.obj
    settings = context.services()
    applied = run_guarded(lambda: apply_migrations(conninfo(settings), timeout=settings.database_timeout))
    if applied:
        console.print(f"applied migrations: {', '.join(applied)}")
    else:
        console.print("schema is up to date")
