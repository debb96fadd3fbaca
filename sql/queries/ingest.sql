-- Statements of the ingest agent. One transaction per chunk of ingest records runs, in order:
-- claim_batches, find_duplicates, count_duplicates, (COPY of the new rows), set_batch_counts.

-- name: claim_batches
-- A batch is identified by (run_id, batch): a producer's retry or a redelivery after a crash
-- inserts nothing here, and RETURNING tells which batches are new to us.
INSERT INTO ingest_batches (run_id, batch, request_id, entity_count, new_count, duplicate_count,
                            source_topic, source_partition, source_offset)
SELECT run_id, batch, request_id, entity_count, 0, 0, source_topic, source_partition, source_offset
  FROM unnest(%(run_ids)b::text[], %(batches)b::int4[], %(request_ids)b::text[], %(entity_counts)b::int4[],
              %(topics)b::text[], %(partitions)b::int4[], %(offsets)b::int8[])
       AS b(run_id, batch, request_id, entity_count, source_topic, source_partition, source_offset)
ON CONFLICT (run_id, batch) DO NOTHING
RETURNING run_id, batch;

-- name: find_duplicates
-- The earliest row that is not ERRORED for each hash; after ERRORED the entity is queued again.
SELECT DISTINCT ON (entity_hash) entity_hash, id
  FROM ingestion_logs
 WHERE entity_hash = ANY(%(hashes)b::bytea[]) AND state <> 7
 ORDER BY entity_hash, created_at, id;

-- name: count_duplicates
UPDATE ingestion_logs AS l
   SET duplicate_count = l.duplicate_count + d.n, last_seen = now(), updated_at = now()
  FROM unnest(%(ids)b::uuid[], %(counts)b::int4[]) AS d(id, n)
 WHERE l.id = d.id
   AND l.id = ANY(%(ids)b::uuid[]);  -- keeps the plan on the primary key (see apply.sql)

-- name: log_duplicates
-- Each duplicate in the history of the row it duplicates (0007_entity_events.sql).
INSERT INTO entity_events (entity_id, step, detail)
SELECT id, 'duplicate', jsonb_build_object('run_id', run_id, 'batch', batch)
  FROM unnest(%(ids)b::uuid[], %(run_ids)b::text[], %(batches)b::int4[]) AS d(id, run_id, batch);

-- name: copy_new_rows
COPY ingestion_logs (id, request_id, run_id, batch, object_type, entity, entity_hash,
                     source_topic, source_partition, source_offset)
FROM STDIN (FORMAT BINARY);

-- name: set_batch_counts
UPDATE ingest_batches AS b
   SET new_count = c.new_count, duplicate_count = c.duplicate_count
  FROM unnest(%(run_ids)b::text[], %(batches)b::int4[], %(new_counts)b::int4[], %(duplicate_counts)b::int4[])
       AS c(run_id, batch, new_count, duplicate_count)
 WHERE b.run_id = c.run_id AND b.batch = c.batch;

-- name: batch_counts
SELECT run_id, batch, entity_count, new_count, duplicate_count
  FROM ingest_batches
 WHERE (run_id, batch) IN (SELECT * FROM unnest(%(run_ids)b::text[], %(batches)b::int4[]));

-- name: queued_rows_of_batches
-- Rows of already-known batches that may still lack a work record (the crash fell between the
-- commit and the produce): they are sent again; the claim in plan-apply makes that harmless.
SELECT run_id, batch, id, object_type, entity
  FROM ingestion_logs
 WHERE (run_id, batch) IN (SELECT * FROM unnest(%(run_ids)b::text[], %(batches)b::int4[]))
   AND state = 1
 ORDER BY run_id, batch, source_offset, id;
