"""`streams target`: run the reference target server (bulk-plan-apply over Postgres, with faults)."""

from __future__ import annotations

import gc
from typing import Annotated

import typer
from pydantic import ValidationError

from streams.cli.context import Context, fail, run_guarded

_PREFIX = "STREAMS_TARGET_"


def _opt(name: str, help_text: str):  # type: ignore[no-untyped-def]
    return typer.Option(envvar=_PREFIX + name, show_envvar=True, help=help_text)


def target(
    ctx: typer.Context,
    host: Annotated[str, _opt("HOST", "Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, _opt("PORT", "Port to listen on.")] = 8080,
    database_url: Annotated[str | None, _opt(
        "DATABASE_URL", "Postgres URL of the target's tables. Unset: STREAMS_DATABASE_URL or `streams dev`.",
    )] = None,
    latency_ms: Annotated[float, _opt("LATENCY_MS", "Added to every bulk request, in milliseconds.")] = 0.0,
    transient_rate: Annotated[float, _opt(
        "TRANSIENT_RATE", "Share of entities failing with an apply error (transient).")] = 0.0,
    permanent_rate: Annotated[float, _opt(
        "PERMANENT_RATE", "Share of entities failing with a plan error (permanent).")] = 0.0,
    fail_first: Annotated[int, _opt("FAIL_FIRST", "Apply errors on the first N receipts of every id.")] = 0,
    poison_pattern: Annotated[str | None, _opt(
        "POISON_PATTERN", "Regex; the first entity whose JSON matches breaks the request (see --poison-status).",
    )] = None,
    poison_status: Annotated[int, _opt(
        "POISON_STATUS", "500: entities before the poison are applied, as NetBox does; 4xx: none is.",
    )] = 500,
    status_rate: Annotated[float, _opt("STATUS_RATE", "Share of requests answered --status-code.")] = 0.0,
    status_code: Annotated[int, _opt("STATUS_CODE", "Status of injected request failures.")] = 503,
    status_first: Annotated[int, _opt("STATUS_FIRST", "The first N requests are answered --status-code.")] = 0,
    retry_after: Annotated[int | None, _opt("RETRY_AFTER", "Retry-After seconds on injected 429/503")] = None,
    outage: Annotated[bool, _opt("OUTAGE", "Answer every bulk request with 503.")] = False,
    db_down: Annotated[bool, _opt(
        "DB_DOWN", "Answer every entity with the plan error `internal error` (207).")] = False,
    capacity: Annotated[int | None, _opt("CAPACITY", "Concurrent bulk requests served; beyond: 503.")] = None,
    seed: Annotated[int, _opt("SEED", "Seed of every injected decision (same seed, same failures).")] = 0,
) -> None:
    """Serve POST /bulk-plan-apply/ over Postgres until SIGTERM; PUT /_admin/faults changes faults live."""
    import uvicorn

    from streams.target.faults import Faults
    from streams.target.server import create_app

    context: Context = ctx.obj
    try:
        faults = Faults(
            latency_ms=latency_ms, transient_rate=transient_rate, permanent_rate=permanent_rate,
            fail_first=fail_first, poison_pattern=poison_pattern, poison_status=poison_status,
            status_rate=status_rate, status_code=status_code, status_first=status_first,
            retry_after=retry_after, outage=outage,
            db_down=db_down, capacity=capacity, seed=seed,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]).upper() if error["loc"] else "?"
        fail(f"{_PREFIX}{name}: {error['msg'].removeprefix('Value error, ')}")
    settings = run_guarded(context.settings)
    if database_url is None:
        services = run_guarded(context.services)
        if services.database_url is None:
            fail(f"{_PREFIX}DATABASE_URL: not set, nor STREAMS_DATABASE_URL, "
                 "and no `streams dev up` Postgres is running")
        database_url = services.database_url.get_secret_value()
    token = settings.target_token.get_secret_value() if settings.target_token else None
    app = create_app(database_url, faults, pool_size=settings.database_pool_size, token=token,
                     statement_timeout=settings.database_timeout)
    # The server allocates several short-lived containers per entity; with Python's default
    # (a collection every 700 allocations, now and then walking the per-id counters) the
    # collector cost 15-30% of the CPU of a bulk request (measured). This process is ours.
    gc.set_threshold(50_000, 20, 100)
    # uvloop and httptools: the C event loop and HTTP parser, worth about a third of the
    # per-request overhead of the pure-Python defaults.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            loop="uvloop", http="httptools")
    server = uvicorn.Server(config)
    server.run()
    if not server.started:  # uvicorn logged why (database unreachable, port taken)
        fail("the target did not start", code=1)
