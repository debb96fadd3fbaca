-- The dead-letter agent.

-- name: mark_errored
-- FAILED rows of a dead-lettered work record become ERRORED, once: a redelivered record, or a
-- row replayed since (QUEUED again, or applied), is left alone.
UPDATE ingestion_logs AS l
   SET state = 7, last_error = coalesce(o.error, l.last_error), updated_at = now()
  FROM unnest(%(ids)b::uuid[], %(errors)b::jsonb[]) AS o(id, error)
 WHERE l.id = o.id AND l.state = 4
   AND l.id = ANY(%(ids)b::uuid[]);
