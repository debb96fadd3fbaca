"""One chaos trial, start to end.

    prepare   a database, topics (own prefix and app id, short retry tiers) and a reference
              target on a database of its own, with the configured faults; every run's
              entities generated (and hashed, to find lost ones later)
    start     N workers; wait until their consumer group is stable with N members
    steady    run 0 is sent (every run, with --no-spread); the pipeline runs undisturbed for
              --steady seconds
    disturb   kills: every kill-min..kill-max s a random worker gets SIGKILL and a replacement
              starts at once; the broker is restarted once and Postgres once, between kills.
              outage: the target answers 503 to everything for --outage seconds.
              The other runs are sent during this phase, so it meets busy workers.
    settle    until every row is final and every run has its RunCompleted (or the settle
              timeout, or no change at all for the stall timeout)
    check     workers stopped, then the evidence is read and judged (streams.chaos.verdicts)

The target process is never disturbed: its counters and its tables are the receipt log.
Everything started here is stopped in `finally`, also on Ctrl-C.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from psycopg import sql
from pydantic import SecretStr

from streams.bench import fresh_database
from streams.chaos import rates, schedule, verdicts
from streams.chaos.fleet import Fleet, Services
from streams.chaos.probe import GroupWatcher, Poller, gather
from streams.chaos.rates import Sample, Throughput
from streams.chaos.schedule import Disruption, TrialConfig
from streams.chaos.verdicts import Check, Disturbance, Evidence
from streams.client.generate import generate_entities
from streams.client.producer import IngestProducer
from streams.db.migrate import migrate
from streams.kafka.admin import admin_client, create_topics
from streams.kafka.topics import topology
from streams.pipeline.hashing import entity_hash
from streams.settings import Settings
from streams.target.launch import start_target

POLL_SECONDS = 1.0  # one grouped count of ingestion_logs: ~20 ms at 100k rows
# No entity final this long after the workers started: the pipeline is not flowing at all.
FLOWING_TIMEOUT = 300.0


@dataclass(frozen=True)
class Progress:
    elapsed: float
    phase: str
    final: int
    rows: int
    sent: int
    rate: float | None
    alive: int
    workers: int
    completed_runs: int
    runs: int
    group: str  # consumer group state and members, e.g. "stable 3"


@dataclass
class TrialResult:
    index: int
    config: TrialConfig
    checks: list[Check]
    throughput: Throughput
    disturbance: Disturbance
    evidence: Evidence | None
    events: list[tuple[float, str]]
    logs: Path
    database: str
    target_database: str
    samples: list[Sample] = field(default_factory=list)
    log_summary: list[tuple[str, int]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not verdicts.failed(self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "trial": self.index, "ok": self.ok, "error": self.error, "config": verdicts.as_json(self.config),
            "checks": verdicts.as_json(self.checks), "throughput": verdicts.as_json(self.throughput),
            "disturbance": verdicts.as_json(self.disturbance),
            "evidence": None if self.evidence is None else {
                **{key: verdicts.as_json(value) for key, value in vars(self.evidence).items()
                   if key not in ("verdict", "runs")},
                "errored": {"permanent": self.evidence.verdict.permanent,
                            "transient_exhausted": self.evidence.verdict.transient_exhausted,
                            "by_outage": self.evidence.verdict.by_outage,
                            "permanent_not_errored": self.evidence.verdict.permanent_not_errored,
                            "unexplained": verdicts.as_json(self.evidence.verdict.unexplained[:50])},
                "runs": verdicts.as_json(self.evidence.runs)},
            "events": [{"at": round(at, 1), "what": what} for at, what in self.events],
            "log_summary": [{"message": m, "count": n} for m, n in self.log_summary],
            "logs": str(self.logs), "database": self.database, "target_database": self.target_database,
            "samples": [{"at": round(s.at, 1), "states": dict(s.states), "duplicates": s.duplicates,
                         "completed_runs": s.completed_runs, "sent": s.sent, "group": s.group,
                         "members": s.members} for s in self.samples],
        }


def worker_env(config: TrialConfig, app_id: str, slot: int) -> dict[str, str]:
    """The environment of the worker in `slot`: the product's own failover settings, so a trial
    measures what an operator would configure."""
    env = {"STREAMS_LOG_LEVEL": "INFO"}
    if config.session_timeout:
        env["STREAMS_SESSION_TIMEOUT"] = f"{config.session_timeout:g}s"
    if config.static_membership:
        # The replacement of a killed worker takes its slot's id, and with it the partitions.
        env["STREAMS_INSTANCE_ID"] = f"{app_id}-w{slot}"
    return env


Step = tuple[float, str, int]  # (seconds into the disturbed phase, what, run number for "send")


class _Trial:
    def __init__(self, base: Settings, config: TrialConfig, index: int, logs: Path, services: Services,
                 progress: Callable[[Progress], None], event: Callable[[str], None]) -> None:
        self.base = base
        self.config = config
        self.index = index
        self.logs = logs
        self.services = services
        self.progress = progress
        self.say = event
        self.began = time.time()
        self.events: list[tuple[float, str]] = []
        self.samples: list[Sample] = []
        self.tag = f"{index}{uuid.uuid4().hex[:5]}"
        self.name = f"trial{index}"
        self.batches: list[tuple[str, list[dict[str, Any]]]] = []  # (run id, entities) of every run
        self.runs: list[str] = []
        self.total = 0  # entities of every run
        self.sent = 0  # entities handed to the producer so far
        self.hashes: set[bytes] = set()
        self.phase = "prepare"
        # (kind, when it began, work) in another thread
        self.background: list[tuple[str, float, Future[str]]] = []
        self.restart_notes: list[str] = []
        self.restarts: list[rates.Window] = []  # (began, back) of each finished restart
        self.broker_restarts = self.postgres_restarts = 0
        self.database = self.target_database = ""
        self.fleet: Fleet | None = None
        self.poller: Poller | None = None
        self.group: GroupWatcher | None = None

    # --- bookkeeping ---------------------------------------------------------------------------

    def note(self, what: str) -> None:
        self.events.append((time.time() - self.began, what))
        self.say(f"[trial {self.index} +{time.time() - self.began:5.0f}s] {what}")

    def poll(self) -> Sample | None:
        assert self.poller is not None
        group = self.group.state() if self.group is not None else ("", 0)
        sample = self.poller.sample(sent=self.sent, group=group)
        if sample is not None:
            self.samples.append(sample)
        if self.fleet is not None:
            for line in self.fleet.reap():
                self.note(line)
        self._collect()
        last = self.samples[-1] if self.samples else None
        self.progress(Progress(
            time.time() - self.began, self.phase, last.final if last else 0, last.rows if last else 0,
            self.sent, rates.recent_rate(self.samples), self.fleet.alive() if self.fleet else 0,
            self.config.workers, last.completed_runs if last else 0, len(self.batches),
            f"{group[0].lower()} {group[1]}"))
        return sample

    def _collect(self) -> None:
        """Notes of finished background work (sends, service restarts)."""
        for item in [item for item in self.background if item[2].done()]:
            self.background.remove(item)
            kind, began, future = item
            try:
                note = future.result()
            except Exception as exc:  # noqa: BLE001 - reported, the trial goes on
                note = f"{kind} failed: {type(exc).__name__}: {exc}"
            if kind != "send":
                self.restart_notes.append(note)
                self.restarts.append((began, time.time()))
            self.note(note)

    def _wait(self, until: float) -> None:
        while time.time() < until:
            self.poll()
            time.sleep(min(POLL_SECONDS, max(0.0, until - time.time())))

    # --- phases ------------------------------------------------------------------------------

    def prepare(self, stack: ExitStack) -> Settings:
        config = self.config
        self.database = fresh_database(self.base, f"streams_chaos_{self.tag}")
        migrate(self.database)
        self.target_database = fresh_database(self.base, f"streams_chaos_{self.tag}_target")
        settings = self.base.model_copy(update={
            "database_url": SecretStr(self.database), "topic_prefix": f"chaos-{self.tag}.",
            "app_id": f"chaos-{self.tag}", "worker_port": 0, "partitions": config.partitions,
            "retry_tiers": config.retry_tiers})
        create_topics(settings, topology(settings))
        target = start_target(self.target_database, faults=config.faults(),
                              log_path=self.logs / f"{self.name}-target.log")
        stack.callback(target.stop)
        self.target = target
        self.note(f"database {self.database.rsplit('/', 1)[-1]}, topics chaos-{self.tag}.*, target "
                  f"{target.url} ({config.transient_rate:.1%} transient, {config.permanent_rate:.1%} "
                  f"permanent, seed {config.seed})")
        return settings.model_copy(update={"target_url": target.url})

    def generate(self) -> None:
        first_host = 0
        for number, size in enumerate(self.config.run_sizes()):
            entities = list(generate_entities(size, seed=self.config.seed * 1000 + number,
                                              duplicate_ratio=self.config.duplicate_ratio,
                                              namespace=f"c{self.tag}r{number}", first_host=first_host))
            first_host += size
            self.hashes.update(entity_hash(item["object_type"], item["entity"]) for item in entities)
            self.batches.append((f"chaos-{self.tag}-run{number}", entities))
            self.total += size
        self.note(f"{self.total:,} entities generated ({len(self.hashes):,} distinct) "
                  f"in {len(self.batches)} runs")

    def send(self, producer: IngestProducer, number: int) -> str:
        run_id, entities = self.batches[number]
        self.sent += len(entities)
        self.runs.append(run_id)
        began = time.time()
        summary = producer.send_run(run_id, entities, batch_size=500)
        return (f"sent {run_id}: {len(entities):,} entities in {summary.batches} batches, sealed "
                f"({time.time() - began:.1f}s)")

    def wait_for_group(self, timeout: float = 120.0) -> None:
        assert self.group is not None
        deadline = time.time() + timeout
        while time.time() < deadline:
            state, members = self.group.state()
            if state == "STABLE" and members == self.config.workers:
                self.note(f"consumer group stable with {members} members")
                return
            self.poll()
            time.sleep(1.0)
        self.note(f"consumer group not stable with {self.config.workers} members after {timeout:.0f}s; "
                  "going on")

    def run(self) -> TrialResult:
        config = self.config
        steady_from = disturbed_from = disturbed_until = settled_at = None
        outcome = "aborted"  # settled, stalled or timed out once the trial gets that far
        evidence: Evidence | None = None
        error: str | None = None
        settings: Settings | None = None
        rng = random.Random(f"chaos-kills-{config.seed}-{self.index}")
        with ExitStack() as stack:
            try:
                settings = self.prepare(stack)
                self.poller = Poller(self.database)
                stack.callback(self.poller.close)
                self.group = GroupWatcher(settings)
                self.generate()
                producer = IngestProducer(settings)
                stack.callback(producer.close)
                self.fleet = Fleet(settings, config.workers, self.logs, self.name,
                                   lambda slot: worker_env(config, settings.app_id, slot))
                stack.callback(self.fleet.stop)
                background = ThreadPoolExecutor(2, thread_name_prefix="chaos")
                # Registered last, so it runs first: a send or restart in progress finishes
                # before the rest stops.
                stack.callback(lambda: background.shutdown(wait=True, cancel_futures=True))
                self.fleet.start()
                self.phase = "start"
                self.note(f"{config.workers} workers started" + self._membership())
                self.wait_for_group()
                self.phase = "steady"
                steady_from = time.time()  # the group is stable, nothing is sent yet
                for number in range(1 if config.spread else len(self.batches)):
                    self.note(self.send(producer, number))
                self._flowing()  # its first sample, just after the send, starts the busy time
                self._wait(steady_from + config.steady)
                disturbed_from = time.time()
                phase = config.kill_for if config.scenario == "kills" else config.outage
                actions: list[Step] = [(at, "send", number + 1) for number, at in enumerate(
                    schedule.send_times(len(self.batches), phase, spread=config.spread))]
                if config.scenario == "kills":
                    actions += self._kill_plan()
                    self.phase = "kills"
                else:
                    actions += [(0.0, "outage", 1), (config.outage, "outage", 0)]
                    self.phase = "outage"
                self._disturb(sorted(actions, key=lambda a: (a[0], a[1] != "send")), disturbed_from, phase,
                              rng, producer, background)
                disturbed_until = time.time()
                self.phase = "settle"
                settled_at, outcome = self._settle(disturbed_until)
            except Exception as exc:  # noqa: BLE001 - the trial fails, the next may run
                error = f"{type(exc).__name__}: {exc}"
                self.note(f"trial aborted: {error}")
            finally:
                self.phase = "stopping"
                if self.fleet is not None:
                    self.fleet.stop()
                if config.scenario == "outage" and hasattr(self, "target"):
                    try:
                        self._restore_faults()
                    except httpx.HTTPError as exc:
                        error = error or f"could not restore the target's faults: {exc}"
            if settings is not None and self.runs:
                try:
                    self.phase = "checking"
                    evidence = gather(settings, self.target, self.target_database, faults=config.faults(),
                                      sent=self.sent, sent_hashes=self._sent_hashes(), runs=self.runs,
                                      outcome=outcome)
                except Exception as exc:  # noqa: BLE001
                    failure = f"gathering evidence: {type(exc).__name__}: {exc}"
                    error = f"{error}; {failure}" if error else failure
        self._collect()
        samples = self.samples
        if evidence is not None:
            sizes = [len(entities) for _, entities in self.batches]
            by_run = {run.run_id: run for run in evidence.runs}
            lost = [max(0, len(entities) - sum(by_run[run].states.values()) - by_run[run].duplicates)
                    if run in by_run else 0 for run, entities in self.batches]
            samples = rates.without_lost(samples, sizes, lost)
        speed = rates.throughput(samples, steady_from=steady_from, disturbed_from=disturbed_from,
                                disturbed_until=disturbed_until, settled_at=settled_at,
                                # Busy for at least the shortest gap between kills: with
                                # the restarts left out, 100k entities give 25-35 s of it.
                                members=config.workers, min_busy=config.kill_min, restarts=self.restarts)
        done = Disturbance(
            worker_kills=self.fleet.kills if self.fleet else 0,
            worker_crashes=self.fleet.crashes if self.fleet else 0,
            broker_restarts=self.broker_restarts, postgres_restarts=self.postgres_restarts,
            restart_notes=tuple(self.restart_notes),
            outage_seconds=config.outage if config.scenario == "outage" and disturbed_until else 0.0,
            wall_seconds=time.time() - self.began)
        checks = verdicts.evaluate(evidence, speed, done, config.scenario) if evidence is not None else []
        summary = summarize_logs(self.fleet.log_files()) if self.fleet else []
        result = TrialResult(self.index, config, checks, speed, done, evidence, self.events, self.logs,
                             self.database, self.target_database, self.samples, summary, error)
        if settings is not None:
            self._clean_up(settings, remove=result.ok and not config.keep)
        return result

    def _clean_up(self, settings: Settings, *, remove: bool) -> None:
        """Drop a passed trial's databases and topics (hundreds of MB at the default scale); keep
        a failed trial's for inspection, and say where they are."""
        databases = " and ".join(url.rsplit("/", 1)[-1] for url in (self.database, self.target_database))
        names = f"databases {databases}, topics chaos-{self.tag}*"
        if not remove:
            self.note(f"kept for inspection: {names}")
            return
        try:
            admin = admin_client(settings)
            topics = [name for name in admin.list_topics(timeout=settings.kafka_timeout).topics
                      if name.startswith(f"chaos-{self.tag}")]
            if topics:
                for future in admin.delete_topics(topics, operation_timeout=30).values():
                    future.result()
            for database in (self.database, self.target_database):
                drop_database(database)
        except Exception as exc:  # noqa: BLE001 - leftovers are not a failure of the trial
            self.note(f"could not remove {names}: {type(exc).__name__}: {exc}")

    def _sent_hashes(self) -> set[bytes]:
        if len(self.runs) == len(self.batches):
            return self.hashes
        sent = dict(self.batches)
        return {entity_hash(item["object_type"], item["entity"]) for run in self.runs for item in sent[run]}

    def _membership(self) -> str:
        parts = []
        if self.config.session_timeout:
            parts.append(f"session timeout {self.config.session_timeout:g}s")
        if self.config.static_membership:
            parts.append("static membership")
        return f" ({', '.join(parts)})" if parts else ""

    def _flowing(self) -> float:
        started = time.time()
        while True:
            sample = self.poll()
            if sample is not None and sample.final > 0:
                self.note("first entities final")
                return sample.at
            if time.time() - started > FLOWING_TIMEOUT:
                raise RuntimeError(f"no entity reached a final state within {FLOWING_TIMEOUT:.0f}s")
            time.sleep(POLL_SECONDS)

    def _kill_plan(self) -> list[Step]:
        config = self.config
        restart = config.restart_services
        planned: list[Disruption] = schedule.disruptions(
            config.seed * 100 + self.index, config.kill_for, config.kill_min, config.kill_max,
            broker=restart and self.services.kafka, postgres=restart and self.services.postgres)
        ours = (("broker", self.services.kafka), ("Postgres", self.services.postgres))
        skipped = [name for name, mine in ours if restart and not mine]
        self.note(f"kill phase: {sum(d.action == 'kill' for d in planned)} kills over {config.kill_for:.0f}s"
                  + "".join(f", {d.action} restart at +{d.at:.0f}s" for d in planned if d.action != "kill")
                  + (f"; {' and '.join(skipped)} external: not restarted" if skipped else ""))
        return [(d.at, d.action, 0) for d in planned]

    def _disturb(self, actions: list[Step], start: float, length: float, rng: random.Random,
                 producer: IngestProducer, background: ThreadPoolExecutor) -> None:
        for at, what, number in actions:
            self._wait(start + at)
            if what == "send":
                self.background.append(("send", time.time(), background.submit(self.send, producer, number)))
            elif what == "kill":
                assert self.fleet is not None
                self.note(self.fleet.kill(rng))
            elif what == "broker":
                self.broker_restarts += 1
                self.note("restarting the broker (kill -9)")
                self.background.append(("broker restart", time.time(), background.submit(self.services.restart_kafka)))
            elif what == "postgres":
                self.postgres_restarts += 1
                self.note("restarting Postgres (fast shutdown)")
                restarting = background.submit(self.services.restart_postgres)
                self.background.append(("Postgres restart", time.time(), restarting))
            elif what == "outage" and number:
                self.target.set_faults(self.config.faults().model_copy(update={"outage": True}))
                self.note(f"target outage: 503 to everything for {self.config.outage:.0f}s")
            elif what == "outage":
                self._restore_faults()
                self.note("target back")
        self._wait(start + length)
        while self.background:  # the disturbance ends when what it started is done
            self.poll()
            time.sleep(POLL_SECONDS / 4)
        self.note(f"{self.phase} phase over")

    def _restore_faults(self) -> None:
        if self.target.faults() != self.config.faults():
            self.target.set_faults(self.config.faults())

    def _settle(self, since: float) -> tuple[float | None, str]:
        config = self.config
        deadline = since + config.settle_timeout
        signature: tuple[Any, ...] | None = None
        changed_at = time.time()
        while time.time() < deadline:
            sample = self.poll()
            if sample is not None:
                if sample.settled(self.sent, len(self.runs)):
                    self.note(f"settled {sample.at - since:.0f}s after the disturbance")
                    return sample.at, "settled"
                current = (tuple(sorted(sample.states.items())), sample.duplicates, sample.completed_runs)
                if current != signature:
                    signature, changed_at = current, time.time()
                elif time.time() - changed_at > config.stall_timeout:
                    self.note(f"stalled: nothing changed for {config.stall_timeout:.0f}s "
                              f"({sample.non_terminal:,} rows not terminal, {self.sent - sample.accounted:,} "
                              f"entities sent but not in the database, "
                              f"{sample.completed_runs}/{len(self.runs)} runs complete)")
                    return None, "stalled"
            time.sleep(POLL_SECONDS)
        self.note(f"not settled within the settle timeout ({config.settle_timeout:.0f}s)")
        return None, "timed out"


def drop_database(url: str) -> None:
    """DROP DATABASE … WITH (FORCE), from the server's `postgres` database."""
    base, _, name = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run_trial(base: Settings, config: TrialConfig, index: int, logs: Path, services: Services, *,
              progress: Callable[[Progress], None], event: Callable[[str], None]) -> TrialResult:
    return _Trial(base, config, index, logs, services, progress, event).run()


def summarize_logs(paths: list[Path], limit: int = 12) -> list[tuple[str, int]]:
    """The most frequent warning and error lines of the workers' logs, by level and message."""
    counts: Counter[str] = Counter()
    for path in paths:
        try:
            lines = path.read_bytes().splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.startswith(b"{"):
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            level = str(record.get("level", ""))
            if level in ("warning", "error", "critical"):
                error = record.get("error")
                suffix = f" [{str(error)[:60]}]" if error else ""
                counts[f"{level}: {record.get('msg', '')}{suffix}"] += 1
    return counts.most_common(limit)
