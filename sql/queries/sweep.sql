-- The sweep (streams/sweep.py): rows whose record can no longer be expected to arrive.
-- Neither `state` nor `updated_at` is indexed (an index on a column every update changes costs
-- HOT updates on the hot path), so these scan: one pass a minute, on the leader only.

-- name: stuck_counts
SELECT state, count(*)
  FROM ingestion_logs
 WHERE (state IN (1, 4, 8) AND updated_at < now() - make_interval(secs => %(after)s))
    OR (state = 9 AND next_attempt_at < now() - make_interval(secs => %(after)s))
 GROUP BY state;

-- name: take_stuck
-- At most %(limit)s stuck rows of one state, locked for the takeover below; rows another
-- transaction holds (an agent settling them right now) are not stuck.
SELECT id, run_id, batch, object_type, entity, claimed_by, attempts, retry_tier, last_error
  FROM ingestion_logs
 WHERE state = %(state)s
   AND CASE WHEN %(state)s = 9 THEN next_attempt_at ELSE updated_at END < now() - make_interval(secs => %(after)s)
 ORDER BY run_id, batch, id
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED;

-- name: take_over
-- Each row gets the claim of the record the sweep sends for it (QUEUED rows keep none: any
-- record may claim them), and a fresh updated_at, so the next pass leaves them to that record.
WITH taken AS (
    UPDATE ingestion_logs AS l
       SET claimed_by = CASE WHEN l.state = 1 THEN NULL ELSE t.claim END, updated_at = now()
      FROM unnest(%(ids)s::uuid[], %(claims)s::text[]) AS t(id, claim)
     WHERE l.id = t.id
       AND l.id = ANY(%(ids)s::uuid[])
    RETURNING l.id, l.state, l.attempts, t.claim
)
INSERT INTO entity_events (entity_id, step, state, attempt, work_id)
SELECT id, 'swept', state, attempts, claim FROM taken;
