-- The retry tier a PENDING_RETRY row was sent to. With next_attempt_at it lets a work record
-- that is delivered again after a crash send the same retry record again instead of applying
-- the rows before their due time.
ALTER TABLE ingestion_logs ADD COLUMN retry_tier smallint;
