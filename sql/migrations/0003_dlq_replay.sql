-- `streams dlq replay` bookkeeping (spec §3.6). Numbered 0003 so that it does not collide with
-- a 0002 written at the same time; the files apply in order whatever the gap.

-- One row per dead letter a replay sent back, written in the transaction that requeues its rows.
-- `pending` until the broker confirmed the replayed record and its run event, then `sent`. The
-- next replay skips a dead letter that has any row here (unless --again) and sends a `pending`
-- one again, with the same replay id and entity ids, whatever its filters.
CREATE TABLE dlq_replay_records (
    dlq_topic     text        NOT NULL,
    dlq_partition integer     NOT NULL,
    dlq_offset    bigint      NOT NULL,
    replay_id     uuid        NOT NULL REFERENCES dlq_replays (id),
    status        text        NOT NULL DEFAULT 'pending'
                              CONSTRAINT dlq_replay_records_status_known CHECK (status IN ('pending', 'sent')),
    destination   text        NOT NULL
                              CONSTRAINT dlq_replay_records_destination_known CHECK (destination IN ('work', 'tier', 'ingest')),
    entity_ids    uuid[]      NOT NULL,                      -- the rows requeued; empty for an ingest record
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    sent_by       uuid        REFERENCES dlq_replays (id),   -- a later replay, when it finished a pending row
    -- The primary key's leading columns serve "has this dead letter been replayed?".
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset, replay_id)
);
-- What one replay sent (audit, and the foreign keys' deletes).
CREATE INDEX dlq_replay_records_replay_id ON dlq_replay_records (replay_id);

-- The audit row also counts what it finished for an interrupted replay, and why it stopped.
ALTER TABLE dlq_replays
    ADD COLUMN resent integer NOT NULL DEFAULT 0,
    ADD COLUMN error  text;
