-- Read-only reports for the CLI (demo, runs). Not used by the agents.

-- name: run_states
-- Per run: what producers sent (from the batch log) and where its rows are now.
SELECT b.run_id,
       b.batches,
       b.entities,
       b.duplicates,
       coalesce(l.queued, 0), coalesce(l.applying, 0), coalesce(l.applied, 0), coalesce(l.no_changes, 0),
       coalesce(l.pending_retry, 0), coalesce(l.failed, 0), coalesce(l.errored, 0)
  FROM (SELECT run_id, count(*) AS batches, sum(entity_count) AS entities, sum(duplicate_count) AS duplicates
          FROM ingest_batches
         WHERE run_id = ANY(%(run_ids)s::text[]) OR %(run_ids)s::text[] IS NULL
         GROUP BY run_id) AS b
  LEFT JOIN (SELECT run_id,
                    count(*) FILTER (WHERE state = 1) AS queued,
                    count(*) FILTER (WHERE state = 8) AS applying,
                    count(*) FILTER (WHERE state = 3) AS applied,
                    count(*) FILTER (WHERE state = 5) AS no_changes,
                    count(*) FILTER (WHERE state = 9) AS pending_retry,
                    count(*) FILTER (WHERE state = 4) AS failed,
                    count(*) FILTER (WHERE state = 7) AS errored
               FROM ingestion_logs
              WHERE run_id = ANY(%(run_ids)s::text[]) OR %(run_ids)s::text[] IS NULL
              GROUP BY run_id) AS l USING (run_id)
 ORDER BY b.run_id;
