-- Named statements of the reference target, loaded once by streams/target/store.py.
-- A block starts with `-- name: <name>` and runs to the next one. Bulk statements take
-- parallel arrays and unnest them, so a request of 1000 entities is one round trip each.
-- Arrays are sent in binary (`%(x)b`): the text format escapes every quote of every JSON
-- document in Python, which cost 20 times more than the statement itself (measured).

-- name: lock_schema
-- Serialises schema.sql between servers starting at once on the same database.
SELECT pg_advisory_xact_lock(hashtext('streams_target.schema'))

-- name: fetch_results
SELECT id::text, change_set::text
FROM streams_target.results
WHERE id = ANY(%(ids)b::uuid[])

-- name: fetch_objects
SELECT o.object_type, o.natural_key, o.object_id, o.version, o.data::text
FROM unnest(%(object_types)b::text[], %(natural_keys)b::text[]) AS k(object_type, natural_key)
JOIN streams_target.objects AS o
  ON o.object_type = k.object_type AND o.natural_key = k.natural_key

-- name: upsert_objects
-- Creates (version 1) and updates (version read + 1) in one statement. A row whose version
-- moved since it was read, or a create whose key appeared meanwhile, is neither written nor
-- returned: the caller compares the count and retries the request. Sorted by key so that two
-- requests touching the same keys lock them in the same order (no deadlock in the common case).
INSERT INTO streams_target.objects AS o (object_type, natural_key, data, version)
SELECT w.object_type, w.natural_key, w.data::jsonb, w.version
FROM unnest(%(object_types)b::text[], %(natural_keys)b::text[], %(data)b::text[], %(versions)b::bigint[])
    AS w(object_type, natural_key, data, version)
ORDER BY w.object_type, w.natural_key
ON CONFLICT (object_type, natural_key) DO UPDATE
    SET data = excluded.data, version = excluded.version, updated_at = now()
    WHERE o.version = excluded.version - 1
RETURNING o.object_type, o.natural_key, o.object_id

-- name: insert_results
-- An id another request stored meanwhile is skipped and not returned; the caller retries.
-- Every id stored is also appended to the receipt log `applies`, in the same statement (no
-- extra round trip), with the change type of its change set.
WITH stored AS (
    INSERT INTO streams_target.results (id, change_set)
    SELECT r.id, r.change_set::json
    FROM unnest(%(ids)b::uuid[], %(change_sets)b::text[]) AS r(id, change_set)
    ORDER BY r.id
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), logged AS (
    INSERT INTO streams_target.applies (id, change_type)
    SELECT s.id, t.change_type
    FROM stored AS s
    JOIN unnest(%(ids)b::uuid[], %(change_types)b::text[]) AS t(id, change_type) ON t.id = s.id
)
SELECT id::text FROM stored

-- name: count_results
SELECT count(*) FROM streams_target.results

-- name: count_applied_twice
-- Ids the receipt log shows created or updated more than once (0 while the target is right).
SELECT count(*) FROM (
    SELECT id FROM streams_target.applies WHERE change_type <> 'noop' GROUP BY id HAVING count(*) > 1
) AS twice
