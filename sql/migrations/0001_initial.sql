-- The tables of spec §3.3. State numbers are diode's:
-- 1 QUEUED, 2 OPEN, 3 APPLIED, 4 FAILED, 5 NO_CHANGES, 6 IGNORED, 7 ERRORED, 8 APPLYING, 9 PENDING_RETRY.

-- One row per accepted entity. Updated in bulk on every state change, so the only indexes are
-- the ones a planned query needs, and none covers `state`: an index on an updated column makes
-- every update write all indexes again (no HOT update), and state changes several times a row.
CREATE TABLE ingestion_logs (
    id                  uuid        PRIMARY KEY,            -- the target's idempotency key
    request_id          text        NOT NULL,
    run_id              text        NOT NULL,
    batch               integer     NOT NULL,
    object_type         text        NOT NULL,
    entity              jsonb       NOT NULL,
    entity_hash         bytea       NOT NULL,               -- SHA-256 of RFC 8785 JSON, metadata removed
    state               smallint    NOT NULL DEFAULT 1 CONSTRAINT ingestion_logs_state_known CHECK (state BETWEEN 1 AND 9),
    attempts            integer     NOT NULL DEFAULT 0,
    last_error          jsonb,
    next_attempt_at     timestamptz,
    duplicate_count     integer     NOT NULL DEFAULT 0,
    last_seen           timestamptz NOT NULL DEFAULT now(),
    requeued_from_state smallint,
    source_topic        text        NOT NULL,
    source_partition    integer     NOT NULL,
    source_offset       bigint      NOT NULL,
    claimed_by          text,                               -- work record holding the APPLYING claim
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 85);

-- Dedup lookups are equality on a 32-byte digest: a hash index is smaller and cheaper to
-- maintain during COPY than a btree, and it is deliberately not unique (see the README's
-- "Dedup" section for why a unique index is not worth halving ingest speed).
CREATE INDEX ingestion_logs_entity_hash ON ingestion_logs USING hash (entity_hash);
-- Run detail, failed batches of a run, re-emitting a batch's queued rows.
CREATE INDEX ingestion_logs_run_batch ON ingestion_logs (run_id, batch);

-- A batch is identified by (run_id, batch): this row is what recognises a producer's retry.
CREATE TABLE ingest_batches (
    run_id           text        NOT NULL,
    batch            integer     NOT NULL,
    request_id       text        NOT NULL,
    entity_count     integer     NOT NULL,
    new_count        integer     NOT NULL,
    duplicate_count  integer     NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    accepted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, batch)
);

-- One change set per apply attempt, as returned by the target.
CREATE TABLE change_sets (
    id               text        PRIMARY KEY,
    ingestion_log_id uuid        NOT NULL REFERENCES ingestion_logs (id),
    attempt          integer     NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX change_sets_ingestion_log_id ON change_sets (ingestion_log_id);

CREATE TABLE changes (
    change_set_id text     NOT NULL REFERENCES change_sets (id),
    seq           integer  NOT NULL,
    change_type   text     NOT NULL CONSTRAINT changes_change_type_known CHECK (change_type IN ('create', 'update', 'delete', 'noop')),
    object_type   text     NOT NULL,
    object_id     bigint,
    before        jsonb,
    data          jsonb,
    PRIMARY KEY (change_set_id, seq)
);

-- A queryable mirror of the run_progress table (the table itself lives in Kafka).
CREATE TABLE ingest_runs (
    run_id              text        PRIMARY KEY,
    revision            integer     NOT NULL DEFAULT 0,
    batches_total       integer,                            -- NULL until the seal arrives
    batches_accepted    integer     NOT NULL DEFAULT 0,
    batches_completed   integer     NOT NULL DEFAULT 0,
    batches_failed      integer     NOT NULL DEFAULT 0,
    entities_accepted   integer     NOT NULL DEFAULT 0,
    entities_applied    integer     NOT NULL DEFAULT 0,
    entities_no_changes integer     NOT NULL DEFAULT 0,
    entities_duplicates integer     NOT NULL DEFAULT 0,
    entities_in_retry   integer     NOT NULL DEFAULT 0,
    entities_errored    integer     NOT NULL DEFAULT 0,
    producer            jsonb,
    first_seen_at       timestamptz NOT NULL DEFAULT now(),
    sealed_at           timestamptz,
    completed_at        timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- One audit row per `streams dlq replay` (a dry run changes nothing and writes none).
CREATE TABLE dlq_replays (
    id           uuid        PRIMARY KEY,
    filters      jsonb       NOT NULL,
    destination  text        NOT NULL,
    requested_by text        NOT NULL,
    again        boolean     NOT NULL DEFAULT false,
    matched      integer     NOT NULL DEFAULT 0,
    replayed     integer     NOT NULL DEFAULT 0,
    skipped      integer     NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
