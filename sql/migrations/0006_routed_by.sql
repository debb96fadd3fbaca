-- The work record that routed a row to a retry tier or to the dead-letter topic (the row's
-- claim then belongs to the record it was routed to). A work record delivered again after a
-- crash finds the rows it already routed by this column and sends their records again, with
-- the ids they were given the first time (streams.records.WorkRecord).
ALTER TABLE ingestion_logs ADD COLUMN routed_by text;
