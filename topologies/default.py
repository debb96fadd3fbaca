"""The ingest topology, wired to the topics of streams.kafka.topics.

    ingest ──► [ingest] ──► ingest.work ──► [plan-apply] ──► target
                  │                              │ transient ──► ingest.retry.* ──► [tiers] ─┐
                  │ invalid                      │ permanent                  (same code)   │
                  ├──────────► ingest.dlq ◄──────┴───────────────────────────────────────────┘
                  │                 └──► [dead letters]: rows ERRORED
                  └──► ingest.run-events ◄── every agent's counts
"""

from __future__ import annotations

import faust
from faust.contrib.asgi import serve_asgi

from streams.agents.batching import GuardedBatches
from streams.agents.dead_letters import DeadLetterAgent, DeadLetterTopics
from streams.agents.ingest import IngestAgent, IngestTopics
from streams.agents.plan_apply import ApplyTopics, PlanApplyAgent
from streams.agents.tiers import TierScheduler, tier_service
from streams.agents.web import health_app
from streams.kafka.faust_app import make_app
from streams.kafka.positions import PartitionGuard
from streams.kafka.topics import topic_names
from streams.pipeline.breaker import Breaker
from streams.resources import Resources, closing_service
from streams.runs.tracker import register_tracker
from streams.settings import Settings
from streams.status.exporter import BacklogExporter, backlog_service
from streams.status.publisher import StatusPublisher, status_service
from streams.sweep import Sweeper, SweepTopics, sweep_service

# Ingest records carry up to 1000 entities each: 20 records make one COPY of up to 20k rows.
INGEST_RECORDS_PER_BATCH = 20
# Two actors: one decodes and hashes a chunk while the other waits on its COPY.
INGEST_CONCURRENCY = 2
# Two plan-apply actors: a batch's slowest work record no longer holds up the next batch.
# Safe because rows are claimed per work record before any call is made.
APPLY_CONCURRENCY = 2
INGEST_WINDOW = 0.2
APPLY_WINDOW = 0.05


def build(settings: Settings, *, plan_apply_enabled: bool = True) -> faust.App:
    app = make_app(settings)
    names = topic_names(settings)

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)

    resources = Resources(settings)
    app.service(closing_service(resources))
    dlq, run_events = topic(names.dlq), topic(names.run_events)

    def guard(topic_name: str, agent: str) -> PartitionGuard:
        # faust drops records around rebalances; this reads them again (streams/kafka/positions.py).
        made = PartitionGuard(app, settings, topic_name, agent)
        made.attach()
        return made

    ingest = IngestAgent(settings, IngestTopics(work=topic(names.work), run_events=run_events, dlq=dlq), resources)
    ingest_batches = GuardedBatches("ingest", ingest.handle, ingest.dead_letter,
                                    max_records=INGEST_RECORDS_PER_BATCH, within=INGEST_WINDOW,
                                    guard=guard(names.ingest, "ingest"))

    @app.agent(topic(names.ingest), name="ingest", concurrency=INGEST_CONCURRENCY)
    async def ingest_agent(stream: faust.StreamT) -> None:
        await ingest_batches.run(stream)

    if plan_apply_enabled:
        breaker = Breaker(settings.breaker_threshold, settings.breaker_cooldown, settings.breaker_max_cooldown)
        retry_topics = tuple(topic(name) for name in names.retry)
        plan_apply = PlanApplyAgent(settings, ApplyTopics(run_events=run_events, dlq=dlq, retry=retry_topics),
                                    resources, breaker)
        # Enough work records in flight to keep every HTTP slot of the worker busy.
        apply_batches = GuardedBatches("plan-apply", plan_apply.handle, plan_apply.dead_letter,
                                       max_records=max(2, settings.http_concurrency * 2), within=APPLY_WINDOW,
                                       guard=guard(names.work, "plan-apply"))

        @app.agent(topic(names.work), name="plan-apply", concurrency=APPLY_CONCURRENCY)
        async def plan_apply_agent(stream: faust.StreamT) -> None:
            await apply_batches.run(stream)

        # The retry tiers run the same plan-apply code when records are due (own consumer group).
        tiers = TierScheduler(settings, names.retry, plan_apply)
        app.service(tier_service(tiers))

        dead_letters = DeadLetterAgent(DeadLetterTopics(run_events=run_events), resources)
        dead_letter_batches = GuardedBatches("dead-letters", dead_letters.handle, dead_letters.dead_letter,
                                             max_records=50, within=APPLY_WINDOW,
                                             guard=guard(names.dlq, "dead-letters"))

        @app.agent(dlq, name="dead-letters")
        async def dead_letter_agent(stream: faust.StreamT) -> None:
            await dead_letter_batches.run(stream)

        # Rows whose record went missing get work sent again, by the group's leader only.
        sweep_topics = SweepTopics(work=topic(names.work), retry=retry_topics, dlq=dlq)
        app.service(sweep_service(Sweeper(app, settings, sweep_topics, resources)))

    register_tracker(app, settings, resources, topic)

    # What only this worker knows (its gates, its partitions), for `streams status`.
    status_topic = app.topic(names.worker_status, key_serializer="raw", value_serializer="raw",
                             partitions=settings.partitions)
    tier_partitions = (lambda: set(tiers.assigned)) if plan_apply_enabled else None
    app.service(status_service(StatusPublisher(app, settings, status_topic, tier_partitions)))

    # The backlog (lag, tiers, dead letters, rows, runs) as gauges, from the leader only.
    app.service(backlog_service(BacklogExporter(settings, app.is_leader)))

    if settings.worker_port:
        serve_asgi(app, health_app(settings, resources, with_target=plan_apply_enabled), port=settings.worker_port)
    return app
