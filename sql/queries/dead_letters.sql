-- The dead-letter agent.

-- name: mark_errored
-- The rows of a dead-lettered work record become ERRORED, whatever the work record left them in:
-- FAILED (routed here by plan-apply), or APPLYING / PENDING_RETRY / QUEUED when the record
-- itself could not be processed and was dead-lettered whole. Only rows this record holds (its
-- claim, or no claim at all, as rows written before claims existed): a row another record has claimed since, or a row applied or replayed,
-- is left alone. They keep the record's claim, so the count below is the same on a redelivery.
WITH errored AS (
    UPDATE ingestion_logs AS l
       SET state = 7, claimed_by = %(work_id)b, last_error = coalesce(o.error, l.last_error), updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(errors)b::jsonb[]) AS o(id, error)
     WHERE l.id = o.id AND l.state IN (1, 4, 8, 9)
       AND (l.claimed_by = %(work_id)b OR (l.state IN (1, 4) AND l.claimed_by IS NULL))
       AND l.id = ANY(%(ids)b::uuid[])
    RETURNING l.id, l.attempts, l.last_error
)
INSERT INTO entity_events (entity_id, step, state, attempt, work_id, error)
SELECT id, 'errored', 7, attempts, %(work_id)b, last_error FROM errored;

-- name: errored_by
-- How many of the record's rows it made ERRORED (now or on an earlier delivery).
SELECT count(*) FROM ingestion_logs
 WHERE id = ANY(%(ids)b::uuid[]) AND state = 7 AND claimed_by = %(work_id)b;
