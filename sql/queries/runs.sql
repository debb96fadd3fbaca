-- The run tracker's mirror of its faust tables (agents), and the reads of `streams runs` (CLI).

-- name: lock_run
-- Held while a completion is looked for and sent: two workers that both believe they own a run
-- (one of them on its way out of a rebalance) take turns, and the second finds the first's record.
SELECT pg_advisory_xact_lock(hashtextextended('streams.run-completion:' || %(run_id)s, 0));

-- name: mirror_runs
-- One row per run, replaced by a newer snapshot only (more events counted, or a later revision).
INSERT INTO ingest_runs AS r (
       run_id, revision, batches_total, batches_accepted, batches_completed, batches_failed,
       entities_accepted, entities_applied, entities_no_changes, entities_duplicates, entities_in_retry,
       entities_errored, producer, first_seen_at, sealed_at, completed_at, updated_at, events)
SELECT * FROM unnest(
       %(run_ids)s::text[], %(revisions)s::int4[], %(batches_total)s::int4[], %(batches_accepted)s::int4[],
       %(batches_completed)s::int4[], %(batches_failed)s::int4[], %(entities_accepted)s::int4[],
       %(entities_applied)s::int4[], %(entities_no_changes)s::int4[], %(entities_duplicates)s::int4[],
       %(entities_in_retry)s::int4[], %(entities_errored)s::int4[], %(producers)s::jsonb[],
       %(first_seen_at)s::timestamptz[], %(sealed_at)s::timestamptz[], %(completed_at)s::timestamptz[],
       %(updated_at)s::timestamptz[], %(events)s::int8[])
ON CONFLICT (run_id) DO UPDATE
   SET revision = EXCLUDED.revision, batches_total = EXCLUDED.batches_total,
       batches_accepted = EXCLUDED.batches_accepted, batches_completed = EXCLUDED.batches_completed,
       batches_failed = EXCLUDED.batches_failed, entities_accepted = EXCLUDED.entities_accepted,
       entities_applied = EXCLUDED.entities_applied, entities_no_changes = EXCLUDED.entities_no_changes,
       entities_duplicates = EXCLUDED.entities_duplicates, entities_in_retry = EXCLUDED.entities_in_retry,
       entities_errored = EXCLUDED.entities_errored, producer = coalesce(EXCLUDED.producer, r.producer),
       first_seen_at = least(EXCLUDED.first_seen_at, r.first_seen_at), sealed_at = EXCLUDED.sealed_at,
       completed_at = EXCLUDED.completed_at, updated_at = EXCLUDED.updated_at, events = EXCLUDED.events
 WHERE (EXCLUDED.events, EXCLUDED.revision) >= (r.events, r.revision);

-- name: record_completion
INSERT INTO run_completions (run_id, revision, status, record, completed_at)
VALUES (%(run_id)s, %(revision)s, %(status)s, %(record)s, %(completed_at)s)
ON CONFLICT (run_id, revision) DO NOTHING;

-- name: list_runs
SELECT run_id, revision, batches_total, batches_accepted, batches_completed, batches_failed,
       entities_accepted, entities_applied, entities_no_changes, entities_duplicates, entities_in_retry,
       entities_errored, first_seen_at, sealed_at, completed_at, updated_at, producer
  FROM ingest_runs
 ORDER BY first_seen_at DESC, run_id
 LIMIT %(limit)s;

-- name: get_run
SELECT run_id, revision, batches_total, batches_accepted, batches_completed, batches_failed,
       entities_accepted, entities_applied, entities_no_changes, entities_duplicates, entities_in_retry,
       entities_errored, first_seen_at, sealed_at, completed_at, updated_at, producer
  FROM ingest_runs
 WHERE run_id = %(run_id)s;

-- name: run_revisions
SELECT revision, status, record, completed_at
  FROM run_completions
 WHERE run_id = %(run_id)s
 ORDER BY revision;

-- name: failed_batches
-- Batches of a run with entities that did not apply (ERRORED, or FAILED on their way to the
-- dead-letter agent), with the most frequent reason.
SELECT batch,
       count(*) FILTER (WHERE state = 7) AS errored,
       count(*) FILTER (WHERE state = 4) AS failing,
       mode() WITHIN GROUP (ORDER BY last_error->>'class') AS error_class,
       mode() WITHIN GROUP (ORDER BY last_error->>'message') AS reason
  FROM ingestion_logs
 WHERE run_id = %(run_id)s AND state IN (4, 7)
 GROUP BY batch
 ORDER BY batch
 LIMIT %(limit)s;
