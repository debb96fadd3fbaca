"""`streams worker`: run a topology's agents; workers with the same app id share partitions."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from streams.cli.context import Context, fail, run_guarded
from streams.kafka.admin import wait_for_cluster


def worker(
    ctx: typer.Context,
    topology: Annotated[str, typer.Option(envvar="STREAMS_TOPOLOGY", show_envvar=True,
                                          help="Module in topologies/ to run.")] = "default",
) -> None:
    """Run the topology's agents until SIGTERM/SIGINT."""
    import faust
    import uvloop

    context: Context = ctx.obj
    settings = context.services()
    try:
        module = importlib.import_module(f"topologies.{topology}")
    except ModuleNotFoundError:
        fail(f"STREAMS_TOPOLOGY: no topology named {topology!r} in topologies/")
    # faust exits when the broker does not answer at start: wait for it here instead, so a
    # worker started during a broker outage (or restarted by a supervisor) is ready when it is back.
    run_guarded(wait_for_cluster, settings, settings.startup_wait)
    faust_app = run_guarded(module.build, settings)
    # The C event loop; aiokafka, psycopg and httpx all run on it. Installed before faust
    # creates its loop.
    uvloop.install()
    # override_logging=False: keep the structured JSON logging set up by the CLI (streams.logs);
    # mode would otherwise replace it with a plain format that drops every field.
    faust.Worker(faust_app, loglevel=settings.log_level.lower(), quiet=True,
                 override_logging=False).execute_from_commandline()
