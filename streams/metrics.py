"""Prometheus metrics of a worker. Labels are bounded sets (agent, outcome, status, error
class, topic role), never run ids, entity ids or topic names with a tenant prefix."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Counter("streams_records_total", "Kafka records handled, by agent and outcome.", ["agent", "outcome"])
ENTITIES = Counter("streams_entities_total", "Entities by final or intermediate outcome.", ["outcome"])
DEAD_LETTERS = Counter("streams_dead_letters_total", "Records sent to the dead-letter topic.", ["error_class"])
BATCH_SECONDS = Histogram(
    "streams_batch_seconds", "Time to process one batch of records, by agent.", ["agent"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TARGET_REQUESTS = Counter("streams_target_requests_total", "bulk-plan-apply calls by HTTP status.", ["status"])
TARGET_SECONDS = Histogram(
    "streams_target_request_seconds", "Duration of one bulk-plan-apply call.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TARGET_TOKENS = Counter("streams_target_tokens_total", "OAuth2 tokens fetched for the target.")
TARGET_WARNINGS = Counter("streams_target_warnings_total", "Warnings the target returned with applied entities.")
RETRIES = Counter("streams_batch_retries_total", "Batches processed again after an error, by agent.", ["agent"])
HEALTHY = Gauge("streams_worker_healthy", "1 while the worker's resources answer, else 0.")
BREAKER_OPEN = Gauge("streams_target_breaker_open", "1 while the target's circuit breaker is open or probing.")
RETRY_LATENESS = Histogram(
    "streams_retry_lateness_seconds", "How long after its due time a retry record was processed, by tier.",
    ["tier"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
SWEEP_PASSES = Counter("streams_sweep_passes_total", "Passes of the leader's sweep, by outcome.", ["outcome"])
ROWS_STUCK = Gauge("streams_rows_stuck", "Rows the last sweep pass found stuck, by state.", ["state"])
ROWS_SWEPT = Counter("streams_rows_swept_total", "Rows the sweep sent work for again, by state.", ["state"])
GATES_OPEN = Gauge("streams_gates_open", "Gates holding work back now, by gate (see streams.gates).", ["gate"])
GATE_SINCE = Gauge("streams_gate_open_since_seconds",
                   "Epoch seconds the oldest open gate of a kind opened at (0: none).", ["gate"])

# The backlog, exported by the group's leader only (streams/status/exporter.py), so a sum over
# workers counts it once. `topic` is a topic's role (ingest, work, dlq, run-events, retry-N).
CONSUMER_LAG = Gauge("streams_consumer_lag", "Records not yet committed by the worker group, by topic role.",
                     ["topic"])
TIER_DEPTH = Gauge("streams_tier_depth", "Records waiting in a retry tier, by tier.", ["tier"])
TIER_NEXT_DUE = Gauge("streams_tier_next_due_timestamp_seconds",
                      "Epoch seconds the oldest waiting record of a tier is due at (0: none), by tier.", ["tier"])
TIER_PAUSED = Gauge("streams_tier_partitions_paused", "Tier partitions a worker holds paused for a due time.",
                    ["tier"])
DLQ_RECORDS = Gauge("streams_dlq_topic_records", "Records kept on the dead-letter topic.")
ROWS = Gauge("streams_rows", "Entity rows by state.", ["state"])
ROWS_ERRORED = Gauge("streams_rows_errored", "Dead-lettered entities not replayed since, by error class.",
                     ["error_class"])
OPEN_RUNS = Gauge("streams_open_runs", "Runs not yet completed.")
OLDEST_OPEN_RUN = Gauge("streams_oldest_open_run_timestamp_seconds",
                        "Epoch seconds the oldest open run was first seen at (0: none).")
BACKLOG_PASSES = Counter("streams_backlog_passes_total", "Backlog readings by the leader, by outcome.", ["outcome"])
