"""`streams demo`: the whole topology from nothing, then stop everything it started.

Kafka and Postgres (unless running or external), a fresh `streams_demo` database, migrations,
topics under a fresh prefix with retry tiers of seconds, a target, and one worker.

`--target reference` (the default): the reference target with injected faults. Four runs of
generated NetBox-like entities (with duplicates) and one run of entities the target can never
accept. Records climb the retry tiers, some land in the dead-letter topic, each run's
completion event is printed as it arrives; then the target is "fixed", the dead letters are
replayed, and the revised completions follow. At the end every entity is applied except the
truly bad ones.

`--target netbox`: a real NetBox with the diode plugin (`streams dev netbox`, started if it is
not running, and left running so the objects can be looked at), through OAuth2. Fewer entities
(NetBox creates 20 to 40 a second on two cores), in a namespace of their own so that every
demo creates fresh objects; a few sites NetBox refuses (a status it does not know) end
ERRORED after one attempt; at the end the objects are read back through NetBox's REST API.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import psycopg
import typer
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.cli.context import Context, console, fail, run_guarded
from streams.client.generate import generate_entities
from streams.client.producer import IngestProducer
from streams.db.connect import conninfo
from streams.db.migrate import migrate
from streams.db.reports import RunStates, run_states
from streams.dev import netbox_target, services
from streams.dev.workers import start_worker, stop_worker
from streams.dlq.replay import ReplayOptions, replay
from streams.dlq.select import Filters
from streams.kafka.admin import create_topics
from streams.kafka.topics import topology
from streams.logs import terminal_logs_to
from streams.runs.completions import read_completions
from streams.settings import Settings, to_env
from streams.target.faults import Faults
from streams.target.launch import start_target

DEMO_DATABASE = "streams_demo"


@dataclass(frozen=True)
class Plan:
    """What one demo sends: (run id, generator seed, entities) per run, and the bad run."""

    runs: tuple[tuple[str, int, int], ...]
    bad_run: tuple[str, int]
    batch_size: int
    namespace: str = ""

    @property
    def wanted(self) -> dict[str, int]:
        return {run_id: count for run_id, _, count in self.runs} | {self.bad_run[0]: self.bad_run[1]}

    def entities(self, seed: int, count: int) -> Iterator[dict[str, Any]]:
        return generate_entities(count, seed=seed, duplicate_ratio=0.1, namespace=self.namespace)

    def bad_entities(self) -> list[dict[str, Any]]:
        # Sites without a name: every target's plan refuses them, every time (a truly bad import).
        prefix = f"{self.namespace}-" if self.namespace else ""
        return [{"object_type": "dcim.site", "entity": {"site": {"slug": f"{prefix}no-name-{n}"}}}
                for n in range(self.bad_run[1])]


# dc1-resweep sweeps dc1 again: mostly duplicates, never sent to the target again.
REFERENCE = Plan((("dc1-sweep", 1, 6000), ("dc2-sweep", 2, 6000), ("dc3-sweep", 3, 6000), ("dc1-resweep", 1, 2000)),
                 ("bad-import", 5), batch_size=500)
# NetBox plans and applies 20 to 40 entities a second on two cores: a demo of about two minutes.
NETBOX_RUNS = (("dc1-sweep", 1, 600), ("dc2-sweep", 2, 600), ("dc1-resweep", 1, 300))
# Transient apply errors send 3% of the entities up the tiers; an entity holding a firewall
# breaks every request it is in (a 500, as NetBox's plugin does) until the target is "fixed":
# it is isolated, climbs the tiers and is dead-lettered, and the replay applies it.
FAULTS = Faults(transient_rate=0.03, poison_pattern='"firewall"', seed=42)


def demo(
    ctx: typer.Context,
    target: Annotated[str, typer.Option(help="reference (with injected faults) or netbox (a real NetBox).")]
    = "reference",
    keep_services: Annotated[bool, typer.Option(help="Leave Kafka and Postgres running afterwards.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 300.0,
) -> None:
    """Start everything, ingest generated entities through faults (or into NetBox), report."""
    if target not in ("reference", "netbox"):
        fail("--target: expected reference or netbox")
    context: Context = ctx.obj
    base = context.settings()
    started_at = time.monotonic()
    with ExitStack() as cleanup:
        with (console.status("starting Kafka and Postgres (the first run downloads the Kafka jars)…"),
              terminal_logs_to(sys.stderr)):
            running_before = {r.name for r in run_guarded(services.status, base) if r.running}
            run_guarded(services.up, base)
        if not keep_services and not running_before:
            cleanup.callback(lambda: run_guarded(services.down, base))
        settings = _demo_settings(services.with_local_services(base))
        console.print(f"database: {DEMO_DATABASE} (recreated); migrations: "
                      f"{', '.join(run_guarded(migrate, conninfo(settings))) or 'up to date'}")
        run_guarded(create_topics, settings, topology(settings))
        console.print(f"topics: {len(topology(settings))} under prefix {settings.topic_prefix!r}, "
                      f"retry tiers {', '.join(settings.tier_names)}")
        console.print(f"watch it from another terminal: [bold]{_watch_command(settings)}[/]")
        logs = Path(tempfile.mkdtemp(prefix="streams-demo-"))
        if target == "netbox":
            final = _netbox_demo(settings, logs, timeout, cleanup)
        else:
            final = _reference_demo(settings, logs, timeout, cleanup)
        time.sleep(3)  # let the last completion events arrive before the printer stops
    plan = final[0]
    _report(final[1], f"where every entity ended up ({time.monotonic() - started_at:.1f}s in all)")
    bad_run, bad_count = plan.bad_run
    if keep_services or running_before:
        console.print(f"where did an entity go: [bold]STREAMS_DATABASE_URL={_shown_url(settings)} "
                      f"streams trace --run {bad_run}[/] (or an entity id from it)")
    else:
        console.print("Kafka and Postgres stopped; run with --keep-services to look around with "
                      "`streams status` and `streams trace` afterwards")
    if any(s.in_flight for s in final[1]) or any(
            s.errored != (bad_count if s.run_id == bad_run else 0) for s in final[1]):
        fail("the demo did not end as expected; see the worker log", code=1)


def _reference_demo(settings: Settings, logs: Path, timeout: float, cleanup: ExitStack
                    ) -> tuple[Plan, list[RunStates]]:
    plan = REFERENCE
    target = start_target(conninfo(settings), faults=FAULTS, log_path=logs / "target.log")
    cleanup.callback(target.stop)
    settings = settings.model_copy(update={"target_url": target.url})
    worker = start_worker(settings, log_path=logs / "worker.log")
    cleanup.callback(lambda: stop_worker(worker))
    console.print(f"reference target at {target.url} with faults: 3% transient errors, every request "
                  f"holding a firewall breaks (500); worker pid {worker.pid}; logs in {logs}")
    cleanup.callback(_print_completions(settings))
    _send(settings, plan)
    alive = lambda: worker.poll() is None  # noqa: E731
    first = _follow(settings, plan, timeout, alive, "first pass")
    _report(first, "after the first pass")

    console.print("[bold]fixing the target[/] (firewalls break nothing now) and replaying the dead letters…")
    target.set_faults(Faults())
    report = run_guarded(replay, settings, Filters(), ReplayOptions())
    console.print(f"replay {report.replay_id}: {report.replayed} dead letters, {report.entities} entities "
                  f"requeued → {report.destination}")
    return plan, _follow(settings, plan, timeout, alive, "after replay")


def _netbox_demo(settings: Settings, logs: Path, timeout: float, cleanup: ExitStack
                 ) -> tuple[Plan, list[RunStates]]:
    plan = Plan(NETBOX_RUNS, ("bad-import", 3), batch_size=100, namespace=f"demo{uuid.uuid4().hex[:4]}")
    with (console.status("starting NetBox with the diode plugin (the first run builds it: minutes)…") as status,
          terminal_logs_to(sys.stderr)):
        found = run_guarded(netbox_target.resolve, settings, lambda text: status.update(text))
    settings = found.settings
    worker = start_worker(settings, log_path=logs / "worker.log")
    cleanup.callback(lambda: stop_worker(worker))
    console.print(f"NetBox's diode plugin at {settings.target_url}, OAuth2 tokens from {settings.target_token_url}; "
                  f"worker pid {worker.pid}; logs in {logs}")
    cleanup.callback(_print_completions(settings))
    _send(settings, plan)
    final = _follow(settings, plan, timeout, lambda: worker.poll() is None, "into NetBox")
    if found.url and found.api_token:
        _netbox_report(found.url, found.api_token, plan.namespace)
        console.print(f"NetBox stays up at {found.url} (sites starting with {plan.namespace!r}); "
                      "`streams dev netbox down` stops it")
    return plan, final


def _send(settings: Settings, plan: Plan) -> None:
    with IngestProducer(settings) as producer:
        for run_id, seed, count in plan.runs:
            producer.send_run(run_id, plan.entities(seed, count), batch_size=plan.batch_size)
        producer.send_run(plan.bad_run[0], plan.bad_entities())
    console.print(f"sent {sum(plan.wanted.values())} entities in {len(plan.wanted)} runs")


def _netbox_report(url: str, api_token: str, namespace: str) -> None:
    """How many of the demo's objects NetBox itself lists, read through its REST API."""
    headers = {"Authorization": f"Bearer {api_token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        def count(path: str, **params: Any) -> int:
            response = client.get(path, params={"limit": 1, **params})
            response.raise_for_status()
            return int(response.json()["count"])

        sites = count("/api/dcim/sites/", slug__isw=f"{namespace}-")
        devices = count("/api/dcim/devices/", name__isw=f"{namespace}-")
        names = [d["name"] for d in client.get("/api/dcim/devices/", params={
            "name__isw": f"{namespace}-", "limit": 1000}).json()["results"]]
        interfaces = count("/api/dcim/interfaces/", device=names) if names else 0
        addresses = count("/api/ipam/ip-addresses/", device=names) if names else 0
    console.print(f"in NetBox ({url}): {sites} sites, {devices} devices, {interfaces} interfaces, "
                  f"{addresses} IP addresses on them")


def _watch_command(settings: Settings) -> str:
    """`streams status --watch` with the demo's own settings (a password is never printed)."""
    env = to_env(settings)
    shown = {key: env[key] for key in ("STREAMS_TOPIC_PREFIX", "STREAMS_APP_ID", "STREAMS_PARTITIONS",
                                       "STREAMS_RETRY_TIERS", "STREAMS_KAFKA_BOOTSTRAP")}
    shown["STREAMS_DATABASE_URL"] = _shown_url(settings)
    return " ".join(f"{key}={value}" for key, value in shown.items()) + " streams status --watch 2"


def _shown_url(settings: Settings) -> str:
    url = conninfo(settings)
    return url if conninfo_to_dict(url).get("password") is None else "…"


def _demo_settings(settings: Settings) -> Settings:
    url = conninfo(settings)
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
    tag = uuid.uuid4().hex[:6]
    return settings.model_copy(update={
        "database_url": SecretStr(url.rsplit("/", 1)[0] + f"/{DEMO_DATABASE}"),
        "topic_prefix": f"demo-{tag}.", "app_id": f"demo-{tag}", "worker_port": 0, "partitions": 4,
        "retry_tiers": (2.0, 4.0, 8.0),
    })


def _print_completions(settings: Settings) -> Callable[[], None]:
    """Print each RunCompleted as it arrives, from a background thread; returns the stop."""
    done = threading.Event()

    def printer() -> None:
        for completed in read_completions(settings, timeout=3600):
            if done.is_set():
                return
            b, e = completed.batches, completed.entities
            colour = "green" if completed.status == "succeeded" else "yellow"
            console.print(f"[{colour}]RunCompleted[/] {completed.run_id} revision {completed.revision}: "
                          f"{completed.status}, batches {b.completed}/{b.total} completed, {b.failed} failed; "
                          f"entities applied {e.applied}, no-change {e.no_changes}, duplicates {e.duplicates}, "
                          f"errored {e.errored}")

    thread = threading.Thread(target=printer, name="completions", daemon=True)
    thread.start()
    return done.set


def _follow(settings: Settings, plan: Plan, timeout: float, alive: Callable[[], bool], label: str
            ) -> list[RunStates]:
    """Live progress per run until every sent entity has an outcome."""
    wanted = plan.wanted
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    states: list[RunStates] = []
    console.print(f"[bold]{label}[/]")
    # While a spinner or bars are live, sys.stderr is rich's proxy (on a terminal), which prints
    # what is written to it above them; the log lines meant for the terminal go there too.
    with Progress(*columns, console=console) as progress, terminal_logs_to(sys.stderr):
        tasks = {run_id: progress.add_task(run_id, total=count, detail="") for run_id, count in wanted.items()}
        while time.monotonic() < deadline and alive():
            states = run_states(conninfo(settings), list(wanted))
            for state in states:
                progress.update(tasks[state.run_id], completed=state.settled,
                                detail=f"applied {state.applied}  dup {state.duplicates}  "
                                       f"in retry {state.pending_retry}  errored {state.errored}  "
                                       f"in flight {state.in_flight}")
            if len(states) == len(wanted) and all(
                    s.entities == wanted[s.run_id] and s.settled == s.entities and not s.in_flight for s in states):
                break
            time.sleep(0.5)
    return states


def _report(states: list[RunStates], title: str) -> None:
    table = Table("run", "batches", "entities", "applied", "no changes", "duplicates", "errored", "in flight",
                  title=title)
    for s in states:
        table.add_row(s.run_id, str(s.batches), str(s.entities), str(s.applied), str(s.no_changes),
                      str(s.duplicates), str(s.errored), str(s.in_flight))
    console.print(table)
