-- The history of each entity, for `streams trace`: one row per step, written by the statement
-- that makes the step (a data-modifying CTE), so the history and the state never disagree.
-- Append-only: no updates, one btree on the entity. Steps:
--   outcome     an attempt's result (state, attempt, the work record, the target's error)
--   retry       routed to a retry tier (tier, due time, error, the retry record's id)
--   dead_letter routed to the dead-letter topic (error, the dead letter's id)
--   errored     made ERRORED by the dead-letter agent (the dead letter's id)
--   requeued    queued again by `streams dlq replay` (the replay's id)
--   swept       work sent again by the sweep (the record's id)
--   duplicate   an identical entity arrived in another batch (its run and batch)
CREATE TABLE entity_events (
    entity_id uuid        NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    step      text        NOT NULL,
    state     smallint,
    attempt   integer,
    tier      smallint,
    work_id   text,
    error     jsonb,
    detail    jsonb
);
CREATE INDEX entity_events_entity ON entity_events (entity_id, at);

-- `streams trace --request`: a producer's request id names one batch.
CREATE INDEX ingest_batches_request_id ON ingest_batches (request_id);
