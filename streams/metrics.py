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
