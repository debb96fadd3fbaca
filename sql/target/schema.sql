-- The reference target's own tables (spec §3.2), applied by the server at start.
-- Idempotent: every statement is IF NOT EXISTS, and the server serialises concurrent starts
-- with an advisory lock, because two CREATE TABLE IF NOT EXISTS can still race on the catalog.

CREATE SCHEMA IF NOT EXISTS streams_target;

-- One row per object, found by its natural key (see streams/target/natural_keys.py).
-- `version` counts writes; a plan remembers the version it read and the write only succeeds
-- if the row is still at that version (optimistic concurrency between concurrent requests).
CREATE TABLE IF NOT EXISTS streams_target.objects (
    object_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object_type text        NOT NULL,
    natural_key text        NOT NULL,
    data        jsonb       NOT NULL,
    version     bigint      NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT objects_natural_key UNIQUE (object_type, natural_key)
) WITH (fillfactor = 80);  -- room on the page for an update that touches no index (HOT)

-- The stored answer for every id applied successfully: the idempotency record. An id found
-- here is answered with this change set again and never applied a second time; the primary
-- key makes a second write of the same id impossible even between concurrent requests.
-- `json`, not `jsonb`: the text is kept as it was first sent, so the answer to a repeat is
-- the same bytes, and inserting it costs half as much (no jsonb to build; measured).
CREATE TABLE IF NOT EXISTS streams_target.results (
    id         uuid        PRIMARY KEY,
    change_set json        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The receipt log: one row per id each time a result is stored, written by the same statement
-- as the result (see queries.sql insert_results), with the change it made. No key on purpose:
-- it records what happened rather than what the results table allows, so a check can count
-- ids applied more than once (`streams chaos` does) without trusting the primary key above.
CREATE TABLE IF NOT EXISTS streams_target.applies (
    id          uuid        NOT NULL,
    change_type text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
