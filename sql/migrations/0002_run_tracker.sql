-- The run tracker's mirror of run progress (spec §3.5). ingest_runs holds one row per run,
-- written in batches by the tracker from its faust tables; run_completions keeps every
-- RunCompleted revision that went to ingest.completions.

-- Run events counted into the snapshot. A snapshot only replaces one that counted no more
-- events (and no later revision), so a worker that lost the run in a rebalance cannot put an
-- older snapshot back.
ALTER TABLE ingest_runs ADD COLUMN events bigint NOT NULL DEFAULT 0;
-- `streams runs` lists the newest runs first.
CREATE INDEX ingest_runs_first_seen_at ON ingest_runs (first_seen_at);

-- Written in the step that sends the completion, under a per-run advisory lock.
CREATE TABLE run_completions (
    run_id       text        NOT NULL,
    revision     integer     NOT NULL,
    status       text        NOT NULL CONSTRAINT run_completions_status_known CHECK (status IN ('succeeded', 'failed')),
    record       jsonb       NOT NULL,                       -- the RunCompleted value as sent
    completed_at timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, revision)
);
