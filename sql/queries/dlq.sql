-- Statements of `streams dlq replay` (streams/dlq/store.py). Per batch of dead letters:
-- requeue_rows and insert_markers in one transaction, then (records produced and flushed)
-- mark_sent.

-- name: try_lock
-- One replay at a time per database: the "already replayed?" answers it plans with stay true
-- until it has written its own markers. Session-level, so a crash releases it.
SELECT pg_try_advisory_lock(%(key)b::int8);

-- name: markers
-- One row per replayed dead letter of the topic; a pending row wins over sent ones.
SELECT DISTINCT ON (dlq_partition, dlq_offset)
       dlq_partition, dlq_offset, replay_id, status, destination, entity_ids
  FROM dlq_replay_records
 WHERE dlq_topic = %(topic)b
 ORDER BY dlq_partition, dlq_offset, status = 'pending' DESC, created_at DESC;

-- name: errored_rows
-- Read-only, for --dry-run: which of these rows a replay would requeue.
SELECT id FROM ingestion_logs WHERE id = ANY(%(ids)b::uuid[]) AND state = 7;

-- name: requeue_rows
-- ERRORED rows only: a row another replay requeued, or one applied since, stays as it is.
-- `fresh` (destination ingest.work) starts the attempt count again, as the record's attempt 1.
WITH requeued AS (
    UPDATE ingestion_logs
       SET state = 1,
           requeued_from_state = 7,
           attempts = CASE WHEN %(fresh)b THEN 0 ELSE attempts END,
           next_attempt_at = NULL,
           retry_tier = NULL,  -- a replay starts outside the tiers
           claimed_by = NULL,
           updated_at = now()
     WHERE id = ANY(%(ids)b::uuid[]) AND state = 7
    RETURNING id, attempts
), logged AS (
    INSERT INTO entity_events (entity_id, step, state, attempt, detail)
    SELECT id, 'requeued', 1, attempts, jsonb_build_object('replay_id', %(replay_id)b::text, 'fresh', %(fresh)b)
      FROM requeued
)
SELECT id FROM requeued;

-- name: insert_marker
INSERT INTO dlq_replay_records (dlq_topic, dlq_partition, dlq_offset, replay_id, destination, entity_ids)
VALUES (%(topic)b, %(partition)b, %(offset)b, %(replay_id)b, %(destination)b, %(entity_ids)b::uuid[]);

-- name: mark_sent
UPDATE dlq_replay_records AS r
   SET status = 'sent', sent_at = now(), sent_by = %(sent_by)b
  FROM unnest(%(partitions)b::int4[], %(offsets)b::int8[], %(replay_ids)b::uuid[]) AS s(p, o, replay_id)
 WHERE r.dlq_topic = %(topic)b
   AND r.dlq_partition = s.p AND r.dlq_offset = s.o AND r.replay_id = s.replay_id
   AND r.status = 'pending';

-- name: insert_replay
INSERT INTO dlq_replays (id, filters, destination, requested_by, again)
VALUES (%(id)b, %(filters)b, %(destination)b, %(requested_by)b, %(again)b);

-- name: finish_replay
UPDATE dlq_replays
   SET matched = %(matched)b, replayed = %(replayed)b, resent = %(resent)b, skipped = %(skipped)b,
       error = %(error)b, finished_at = now()
 WHERE id = %(id)b;
