-- Statements of the plan-apply agent, one transaction per work record.

-- name: claim
-- Rows become APPLYING under this work record's claim: QUEUED rows (fresh or replayed work),
-- PENDING_RETRY rows routed to exactly this record (see route_to_retry), and this record's own
-- APPLYING rows when it is delivered again after a crash. Nothing else can be taken. The
-- token is this delivery's: taking a copy's APPLYING rows takes them from that copy.
UPDATE ingestion_logs
   SET state = 8,
       attempts = CASE WHEN state = 8 THEN attempts ELSE attempts + 1 END,
       claimed_by = %(work_id)b,
       claim_token = %(token)b,
       updated_at = now()
 WHERE id = ANY(%(ids)b::uuid[])
   AND (state = 1 OR (state IN (8, 9) AND claimed_by = %(work_id)b))
RETURNING id, attempts;

-- name: routed_by_claim
-- Rows this work record already dealt with in an earlier delivery: settled under its own claim,
-- or routed by it to a retry record or a dead letter (whose ids they hold in claimed_by). They
-- are reported (and their retry and dead-letter records sent) again, never applied again.
SELECT id, state, claimed_by, retry_tier, (extract(epoch FROM next_attempt_at) * 1000)::int8, last_error
  FROM ingestion_logs
 WHERE id = ANY(%(ids)b::uuid[])
   AND ((claimed_by = %(work_id)b AND state IN (3, 5, 6, 7))
        OR (routed_by = %(work_id)b AND state IN (4, 7, 9)));

-- name: hold_claim
-- First in the settle transaction: lock the rows this delivery claimed, and count those still
-- under its token. Fewer than it claimed: another delivery of the record took them over and
-- settles them; this one writes and reports nothing.
SELECT count(*) FROM (
    SELECT 1 FROM ingestion_logs
     WHERE id = ANY(%(ids)b::uuid[]) AND claimed_by = %(work_id)b AND claim_token = %(token)b AND state = 8
       FOR UPDATE
) AS held;

-- name: record_outcomes
-- Each step also goes to the entity's history (0007_entity_events.sql), in the same statement.
WITH settled AS (
    UPDATE ingestion_logs AS l
       SET state = o.state, last_error = o.error, next_attempt_at = NULL, updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(states)b::int2[], %(errors)b::jsonb[]) AS o(id, state, error)
     WHERE l.id = o.id AND l.claimed_by = %(work_id)b AND l.state = 8
       -- Without this the planner may filter the whole table on claimed_by and join afterwards:
       -- one scan per work record, quadratic in the table size. The id list keeps it on the key.
       AND l.id = ANY(%(ids)b::uuid[])
    RETURNING l.id, l.state, l.attempts, l.retry_tier, o.error
)
INSERT INTO entity_events (entity_id, step, state, attempt, tier, work_id, error)
SELECT id, 'outcome', state, attempts, retry_tier, %(work_id)b, error FROM settled;

-- name: route_to_retry
-- Claimed by the retry record, so only that record can take them, at their due time.
WITH routed AS (
    UPDATE ingestion_logs AS l
       SET state = 9, claimed_by = %(child_id)b, routed_by = %(work_id)b, retry_tier = %(tier)b,
           next_attempt_at = to_timestamp(%(due_at_ms)b::int8 / 1000.0), last_error = o.error, updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(errors)b::jsonb[]) AS o(id, error)
     WHERE l.id = o.id AND l.claimed_by = %(work_id)b AND l.state = 8
       AND l.id = ANY(%(ids)b::uuid[])
    RETURNING l.id, l.attempts, l.next_attempt_at, o.error
)
INSERT INTO entity_events (entity_id, step, state, attempt, tier, work_id, error, detail)
SELECT id, 'retry', 9, attempts, %(tier)b, %(work_id)b, error,
       jsonb_build_object('to', %(child_id)b::text, 'due_at', next_attempt_at)
  FROM routed;

-- name: route_to_dlq
-- FAILED, claimed by the dead letter, until the dead-letter agent reads it and makes them ERRORED.
WITH routed AS (
    UPDATE ingestion_logs AS l
       SET state = 4, claimed_by = %(child_id)b, routed_by = %(work_id)b, last_error = o.error,
           next_attempt_at = NULL, updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(errors)b::jsonb[]) AS o(id, error)
     WHERE l.id = o.id AND l.claimed_by = %(work_id)b AND l.state = 8
       AND l.id = ANY(%(ids)b::uuid[])
    RETURNING l.id, l.attempts, o.error
)
INSERT INTO entity_events (entity_id, step, state, attempt, work_id, error, detail)
SELECT id, 'dead_letter', 4, attempts, %(work_id)b, error, jsonb_build_object('to', %(child_id)b::text)
  FROM routed;

-- name: insert_change_sets
-- One per answered attempt, also with an apply error (what was planned). A target that
-- returns the same change set again for an id it already applied: keep the first.
INSERT INTO change_sets (id, ingestion_log_id, attempt, warnings)
SELECT * FROM unnest(%(ids)b::text[], %(log_ids)b::uuid[], %(attempts)b::int4[], %(warnings)b::jsonb[])
ON CONFLICT (id) DO NOTHING;

-- name: insert_changes
INSERT INTO changes (change_set_id, seq, change_type, object_type, object_id, before, data)
SELECT * FROM unnest(%(change_set_ids)b::text[], %(seqs)b::int4[], %(change_types)b::text[],
                     %(object_types)b::text[], %(object_ids)b::int8[], %(befores)b::jsonb[], %(datas)b::jsonb[])
ON CONFLICT (change_set_id, seq) DO NOTHING;
