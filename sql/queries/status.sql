-- `streams status` (streams/db/status_store.py). `state` is not indexed (see 0001_initial.sql),
-- so the row counts scan: fine for a command an operator runs, too slow for a hot path.

-- name: rows_by_state
SELECT state, count(*), min(updated_at)
  FROM ingestion_logs
 GROUP BY state;

-- name: errored_by_class
-- Dead-lettered entities not replayed since: ERRORED rows, by the class of their last error.
SELECT coalesce(last_error->>'class', 'unknown'), count(*), min(updated_at)
  FROM ingestion_logs
 WHERE state = 7
 GROUP BY 1
 ORDER BY 2 DESC, 1;

-- name: errored_by_run
SELECT run_id, count(*), min(updated_at)
  FROM ingestion_logs
 WHERE state = 7
 GROUP BY 1
 ORDER BY 3, 1
 LIMIT %(limit)s;

-- name: open_runs
SELECT run_id, first_seen_at, sealed_at, batches_total, batches_accepted, batches_completed,
       batches_failed, entities_accepted, updated_at
  FROM ingest_runs
 WHERE completed_at IS NULL
 ORDER BY first_seen_at, run_id
 LIMIT %(limit)s;

-- name: open_run_count
SELECT count(*) FROM ingest_runs WHERE completed_at IS NULL;
