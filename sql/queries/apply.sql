-- Statements of the plan-apply agent, one transaction per work record.

-- name: claim
-- QUEUED or PENDING_RETRY rows become APPLYING under this work record's claim. A redelivered
-- record (same work id) takes back its own APPLYING rows; nobody else can take them.
UPDATE ingestion_logs
   SET state = 8,
       attempts = CASE WHEN state = 8 THEN attempts ELSE attempts + 1 END,
       claimed_by = %(work_id)b,
       updated_at = now()
 WHERE id = ANY(%(ids)b::uuid[])
   AND (state IN (1, 9) OR (state = 8 AND claimed_by = %(work_id)b))
RETURNING id, attempts;

-- name: settled_by_claim
-- Rows this work record already settled in an earlier delivery, to report them again.
SELECT id, state
  FROM ingestion_logs
 WHERE id = ANY(%(ids)b::uuid[]) AND claimed_by = %(work_id)b AND state IN (3, 4, 5, 6, 7);

-- name: record_outcomes
UPDATE ingestion_logs AS l
   SET state = o.state, last_error = o.error, next_attempt_at = NULL, updated_at = now()
  FROM unnest(%(ids)b::uuid[], %(states)b::int2[], %(errors)b::jsonb[]) AS o(id, state, error)
 WHERE l.id = o.id AND l.claimed_by = %(work_id)b AND l.state = 8
   -- Without this the planner may filter the whole table on claimed_by and join afterwards:
   -- one scan per work record, quadratic in the table size. The id list keeps it on the key.
   AND l.id = ANY(%(ids)b::uuid[]);

-- name: insert_change_sets
-- The target returns the same change set again for an id it already applied: keep the first.
INSERT INTO change_sets (id, ingestion_log_id, attempt)
SELECT * FROM unnest(%(ids)b::text[], %(log_ids)b::uuid[], %(attempts)b::int4[])
ON CONFLICT (id) DO NOTHING;

-- name: insert_changes
INSERT INTO changes (change_set_id, seq, change_type, object_type, object_id, before, data)
SELECT * FROM unnest(%(change_set_ids)b::text[], %(seqs)b::int4[], %(change_types)b::text[],
                     %(object_types)b::text[], %(object_ids)b::int8[], %(befores)b::jsonb[], %(datas)b::jsonb[])
ON CONFLICT (change_set_id, seq) DO NOTHING;
