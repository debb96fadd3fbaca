-- `streams trace` (streams/db/trace_store.py). Every lookup is on an index: the primary key,
-- ingestion_logs (run_id, batch), the entity_hash hash index, ingest_batches (request_id) and
-- entity_events (entity_id, at), so a trace answers at once whatever the table size.

-- name: entity
SELECT id, request_id, run_id, batch, object_type, state, attempts, last_error, next_attempt_at,
       duplicate_count, last_seen, requeued_from_state, source_topic, source_partition, source_offset,
       claimed_by, routed_by, retry_tier, created_at, updated_at, encode(entity_hash, 'hex')
  FROM ingestion_logs
 WHERE id = %(id)s;

-- name: ids_by_hash
SELECT id FROM ingestion_logs WHERE entity_hash = decode(%(hash)s, 'hex') ORDER BY created_at, id LIMIT %(limit)s;

-- name: batch_of_request
SELECT run_id, batch FROM ingest_batches WHERE request_id = %(request_id)s ORDER BY run_id, batch;

-- name: batches
SELECT run_id, batch, request_id, entity_count, new_count, duplicate_count, source_topic,
       source_partition, source_offset, accepted_at
  FROM ingest_batches
 WHERE run_id = %(run_id)s AND (%(batch)s::int4 IS NULL OR batch = %(batch)s::int4)
 ORDER BY batch
 LIMIT %(limit)s;

-- name: states_of_batches
SELECT state, count(*)
  FROM ingestion_logs
 WHERE run_id = %(run_id)s AND (%(batch)s::int4 IS NULL OR batch = %(batch)s::int4)
 GROUP BY state;

-- name: entities_of_batches
-- The entities that did not simply apply first, then the others (a trace looks for trouble).
SELECT id, batch, object_type, state, attempts, last_error->>'class', updated_at
  FROM ingestion_logs
 WHERE run_id = %(run_id)s AND (%(batch)s::int4 IS NULL OR batch = %(batch)s::int4)
 ORDER BY state IN (3, 5), attempts DESC, batch, id
 LIMIT %(limit)s;

-- name: events
SELECT at, step, state, attempt, tier, work_id, error, detail
  FROM entity_events
 WHERE entity_id = %(id)s
 ORDER BY at;

-- name: change_sets
SELECT s.id, s.attempt, s.created_at, s.warnings, c.seq, c.change_type, c.object_type, c.object_id
  FROM change_sets AS s
  LEFT JOIN changes AS c ON c.change_set_id = s.id
 WHERE s.ingestion_log_id = %(id)s
 ORDER BY s.created_at, s.id, c.seq;

-- name: replays
-- dlq_replay_records has one row per replayed dead letter: small, scanned.
SELECT d.replay_id, r.requested_by, d.dlq_topic, d.dlq_partition, d.dlq_offset, d.destination, d.status,
       d.created_at, d.sent_at
  FROM dlq_replay_records AS d
  LEFT JOIN dlq_replays AS r ON r.id = d.replay_id
 WHERE %(id)s = ANY(d.entity_ids)
 ORDER BY d.created_at;
