-- One delivery's hold on its APPLYING rows. Two deliveries of one work record share its id
-- (claimed_by), so a copy read twice (a retry record sent again after a crash, a zombie worker
-- after a rebalance) can take over rows another copy is still applying. Each claim writes a
-- fresh token; a delivery settles only rows that still carry its own, so exactly one copy
-- settles and reports them (streams.db.apply_store.ClaimLost).
ALTER TABLE ingestion_logs ADD COLUMN claim_token uuid;
