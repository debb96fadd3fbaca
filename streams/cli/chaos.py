"""`streams chaos`: kill -9 trials at scale against the `streams dev` broker and Postgres.

Each trial sends generated runs through N workers and the reference target (with injected
faults), disturbs the pipeline (kills: SIGKILL a random worker every 15–30 s, the broker and
Postgres restarted once; outage: the target answers 503 for minutes), waits for it to settle and
checks, from the target's receipt log and the database, that nothing was lost, applied twice
or left unfinished. Prints a table per trial and a summary, writes JSON, exits 1 on a failure.
The scenario logic is in streams/chaos/.

How long (the 2-core development machine, default options): a kills trial spends ~10 s
preparing, 40 s steady, 3 min killing (plus ~20 s while the broker restarts), then settles:
about 5 minutes when everything settles, about 11–13 minutes when the pipeline stalls (the
trial waits --stall-timeout, 7 min, for a change), at most ~20 minutes (--settle-timeout). An
outage trial: 40 s + the outage (5 min) + settling, 7–13 minutes. `streams dev up` the first
time adds the broker's and Postgres's start (~20 s with the jars cached).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from streams.chaos import verdicts
from streams.chaos.fleet import Services
from streams.chaos.schedule import TrialConfig
from streams.chaos.trial import Progress, TrialResult, run_trial
from streams.cli.context import Context, console, fail, run_guarded
from streams.dev import services as dev_services
from streams.durations import parse_duration
from streams.settings import Settings

SCENARIOS = {"kills": ("kills",), "outage": ("outage",), "both": ("kills", "outage")}
_PROGRESS_EVERY = 15.0  # seconds between progress lines when the output is not a terminal


def _opt(name: str, help_text: str):  # type: ignore[no-untyped-def]
    return typer.Option(envvar=f"STREAMS_CHAOS_{name}", show_envvar=True, help=help_text)


_SESSION_HELP = ("Consumer group session timeout given to the workers, seconds (STREAMS_SESSION_TIMEOUT); "
                 "unset: the workers' own setting (15 s by default).")
_STATIC_HELP = ("Give each worker slot a group.instance.id (STREAMS_INSTANCE_ID), as a deployment with "
                "stable worker names should, so the replacement of a killed worker takes over its partitions "
                "without a rebalance. --no-static-membership: every kill makes the whole group rebalance "
                "(aiokafka's rebalances stop every member) and wait up to the session timeout for the dead one.")
_SPREAD_HELP = ("Send run 0 before the steady phase and the other runs during the kill phase or outage, so "
                "it meets busy workers; --no-spread: every run up front.")


def chaos_command(
    ctx: typer.Context,
    scenario: Annotated[str, _opt("SCENARIO", "kills: kill -9 workers, restart the broker and Postgres; "
                                  "outage: the target down for --outage; both: one of each per trial.")]
    = "kills",
    trials: Annotated[int, _opt("TRIALS", "Trials to run (of each scenario).")] = 1,
    workers: Annotated[int, _opt("WORKERS", "Workers kept running (a killed one is replaced at once).")] = 3,
    partitions: Annotated[int, _opt("PARTITIONS", "Partitions of every topic of the trial.")] = 24,
    entities: Annotated[int, _opt("ENTITIES", "Entities sent per trial, duplicates included.")] = 100_000,
    runs: Annotated[int, _opt("RUNS", "Runs the entities are split over.")] = 4,
    kill_min: Annotated[float, _opt("KILL_MIN", "Shortest time between two kills, seconds.")] = 15.0,
    kill_max: Annotated[float, _opt("KILL_MAX", "Longest time between two kills, seconds.")] = 30.0,
    kill_for: Annotated[float, _opt("KILL_FOR", "Length of the kill phase, seconds.")] = 180.0,
    outage: Annotated[float, _opt("OUTAGE", "Length of the target outage (scenario outage), s.")] = 300.0,
    steady: Annotated[float, _opt("STEADY", "Undisturbed seconds before the disturbance.")] = 40.0,
    transient_rate: Annotated[float, _opt("TRANSIENT_RATE", "Share of receipts failed transiently.")] = 0.05,
    permanent_rate: Annotated[float, _opt("PERMANENT_RATE", "Share of entities failed for good.")] = 0.005,
    retry_tiers: Annotated[str, _opt("RETRY_TIERS", "Retry tier delays of the trial.")] = "5s,10s,20s",
    settle_timeout: Annotated[float, _opt("SETTLE_TIMEOUT", "Longest wait to settle, seconds.")] = 900.0,
    stall_timeout: Annotated[float, _opt("STALL_TIMEOUT", "Stop waiting when nothing changed this long, "
                                         "seconds.")] = 420.0,
    session_timeout: Annotated[float | None, _opt("SESSION_TIMEOUT", _SESSION_HELP)] = None,
    static_membership: Annotated[bool, _opt("STATIC_MEMBERSHIP", _STATIC_HELP)] = True,
    spread: Annotated[bool, _opt("SPREAD", _SPREAD_HELP)] = True,
    keep: Annotated[bool, _opt("KEEP", "Keep a passed trial's databases and topics too (a failed "
                              "trial's are always kept, for inspection).")] = False,
    restart_services: Annotated[bool, _opt("RESTART_SERVICES", "Restart the broker and Postgres once each "
                                           "during the kill phase (dev services only).")] = True,
    output: Annotated[Path, _opt("OUTPUT", "Where the JSON figures of every trial go.")]
    = Path("chaos-results.json"),
    seed: Annotated[int, _opt("SEED", "Seed of the entities, the faults and the kill schedule.")] = 0,
) -> None:
    """Kill -9 trials at scale: lost, applied twice, completions, stuck rows, throughput.

    Duration of a default kills trial: about 5 minutes when the pipeline settles.

    When it stalls, 11-13 minutes (it waits --stall-timeout for a change); 20 at most.

    An outage trial: 7-13 minutes.
    """
    context: Context = ctx.obj
    if scenario not in SCENARIOS:
        fail("STREAMS_CHAOS_SCENARIO: expected kills, outage or both")
    for name, value in (("TRIALS", trials), ("WORKERS", workers), ("PARTITIONS", partitions),
                        ("ENTITIES", entities), ("RUNS", runs)):
        if value < 1:
            fail(f"STREAMS_CHAOS_{name}: must be at least 1 (got {value})")
    if not 0 < kill_min <= kill_max:
        fail(f"STREAMS_CHAOS_KILL_MIN: need 0 < kill-min <= kill-max (got {kill_min:g} and {kill_max:g})")
    for name, rate in (("TRANSIENT_RATE", transient_rate), ("PERMANENT_RATE", permanent_rate)):
        if not 0 <= rate <= 1:
            fail(f"STREAMS_CHAOS_{name}: must be between 0 and 1 (got {rate:g})")
    if session_timeout is not None and not 6 <= session_timeout <= 300:
        fail(f"STREAMS_CHAOS_SESSION_TIMEOUT: must be 6 to 300 seconds (got {session_timeout:g})")
    tiers = _tiers(retry_tiers)
    configs = [TrialConfig(
        scenario=kind, workers=workers, partitions=partitions, entities=entities,  # type: ignore[arg-type]
        runs=runs, kill_min=kill_min, kill_max=kill_max, kill_for=kill_for, outage=outage, steady=steady,
        transient_rate=transient_rate, permanent_rate=permanent_rate, settle_timeout=settle_timeout,
        stall_timeout=stall_timeout, retry_tiers=tiers, restart_services=restart_services,
        session_timeout=session_timeout, static_membership=static_membership, spread=spread, keep=keep,
        seed=seed + number)
        for number in range(trials) for kind in SCENARIOS[scenario]]
    _run(context, configs, output)


def _tiers(text: str) -> tuple[float, ...]:
    try:
        tiers = tuple(parse_duration(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as exc:
        fail(f"STREAMS_CHAOS_RETRY_TIERS: {exc}")
    if not tiers or any(later <= earlier for earlier, later in pairwise(tiers)):
        fail("STREAMS_CHAOS_RETRY_TIERS: expected growing delays such as 5s,10s,20s")
    return tiers


def _services(original: Settings) -> tuple[Settings, Services]:
    """Start the `streams dev` broker and Postgres unless they run or are external."""
    reports = {report.name: report for report in run_guarded(dev_services.up, original)}
    settings = dev_services.with_local_services(original)
    services = Services(
        dev_services.home(original), settings,
        kafka=not reports["kafka"].external, postgres=not reports["postgres"].external,
        started_kafka=reports["kafka"].note == "started",
        started_postgres=reports["postgres"].note == "started")
    for name in ("kafka", "postgres"):
        report = reports[name]
        if report.external:
            console.print(f"{name} is external ({escape(str(report.url))}): "
                          "it is not restarted by the trials")
        else:
            console.print(f"{name}: the streams dev service under {services.home} ({report.note})")
    return settings, services


def _run(context: Context, configs: list[TrialConfig], output: Path) -> None:
    # The trial reports what it does itself; the services' own start lines would interleave.
    logging.getLogger("streams").setLevel(logging.WARNING)
    logs = Path(tempfile.mkdtemp(prefix="streams-chaos-"))
    console.print(f"streams chaos on {platform.node()}: logs in [bold]{logs}[/]")
    settings, services = _services(context.settings())
    own_log = logs / "chaos.log"
    console.print(f"this command's own warnings (clients retrying through the restarts) go to {own_log}")
    results: list[TrialResult] = []
    interrupted = False
    try:
        with _stderr_to(own_log), console.status("starting…") as status:
            reporter = _Reporter(status)
            for index, config in enumerate(configs):
                result = run_trial(settings, config, index, logs, services, progress=reporter.progress,
                                   event=reporter.event)
                results.append(result)
                _print_trial(result)
                _write(output, results, logs)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: every process the trial started has been stopped[/]")
    finally:
        stopped = services.stop_started()
        if stopped:
            console.print(f"stopped the services this command started: {', '.join(stopped)}")
    if results:
        _print_summary(results)
        _write(output, results, logs)
        console.print(f"results written to {output}; logs in {logs}")
    if interrupted or not results or not all(result.ok for result in results):
        raise typer.Exit(1)


class _Reporter:
    """Progress in the status line (and as a line every few seconds when not on a terminal)."""

    def __init__(self, status: Status) -> None:
        self._status = status
        self._shown = 0.0

    def progress(self, p: Progress) -> None:
        rate = "—" if p.rate is None else f"{p.rate:,.0f}/s"
        line = (f"{p.elapsed:5.0f}s {p.phase:<8} final {p.final:,}/{p.rows:,} rows ({p.sent:,} sent) {rate} "
                f"workers {p.alive}/{p.workers} (group {p.group}) runs complete {p.completed_runs}/{p.runs}")
        self._status.update(escape(line))
        if not console.is_terminal and time.monotonic() - self._shown >= _PROGRESS_EVERY:
            self._shown = time.monotonic()
            console.print(f"[dim]{time.strftime('%H:%M:%S')} {escape(line)}[/]")

    def event(self, text: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {escape(text)}")


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 to `path`: librdkafka writes its connection errors there directly,
    hundreds while the broker restarts, and they would bury the trial's own lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _mark(ok: bool | None) -> str:
    return "[green]ok[/]" if ok else "[dim]n/a[/]" if ok is None else "[bold red]FAILED[/]"


def _print_trial(result: TrialResult) -> None:
    c = result.config
    title = (f"trial {result.index} ({c.scenario}): {c.entities:,} entities in {c.runs} runs, "
             f"{c.workers} workers, {c.partitions} partitions, "
             f"{result.disturbance.wall_seconds / 60:.1f} min")
    table = Table("check", "result", "value", "detail", title=title, title_justify="left")
    for check in result.checks:
        table.add_row(check.name, _mark(check.ok), escape(check.value), escape(check.detail))
    if result.error:
        table.add_row("trial", "[bold red]FAILED[/]", "error", escape(result.error))
    console.print(table)
    if result.log_summary:
        logs = Table("worker log lines (warning and above)", "count", title_justify="left",
                     title=f"most frequent in {result.logs}")
        for message, count in result.log_summary:
            logs.add_row(escape(message), f"{count:,}")
        console.print(logs)


def _print_summary(results: list[TrialResult]) -> None:
    table = Table("trial", "scenario", "result", "lost", "applied twice", "RunCompleted", "non-terminal",
                  "unexpected errored", "steady/s", "disturbed/s", "ratio", "settle", "kills", "restarts",
                  "wall", title="streams chaos: summary", title_justify="left")
    for result in results:
        by_name = {check.name: check for check in result.checks}
        speed, done = result.throughput, result.disturbance

        def value(name: str, checks: dict[str, verdicts.Check] = by_name) -> str:
            check = checks.get(name)
            if check is None:
                return "—"
            return escape(check.value) if check.ok is not False else f"[red]{escape(check.value)}[/]"

        table.add_row(
            str(result.index), result.config.scenario, "[green]ok[/]" if result.ok else "[bold red]FAILED[/]",
            value("lost"), value("applied twice"), value("one RunCompleted per run"),
            value("non-terminal rows"), value("expected errored"), _rate(speed.steady),
            _rate(speed.disturbed),
            _ratio(result),
            "—" if speed.settle_seconds is None else f"{speed.settle_seconds:.0f}s",
            str(done.worker_kills), f"broker {done.broker_restarts}, pg {done.postgres_restarts}",
            f"{done.wall_seconds / 60:.1f} min")
    console.print(table)


def _ratio(result: TrialResult) -> str:
    """Kills only: an outage's rate is 0 by design."""
    ratio = result.throughput.ratio
    return "—" if ratio is None or result.config.scenario != "kills" else verdicts.ratio_text(ratio)


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _write(output: Path, results: list[TrialResult], logs: Path) -> None:
    output.write_text(json.dumps({
        "trials": [result.to_json() for result in results], "ok": all(result.ok for result in results),
        "ratio_goal": verdicts.RATIO_GOAL, "logs": str(logs), "host": platform.node(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2, default=str))
