-- Decisions on pending (sensitive) queries: the operator's rejection reason
-- shown to the requester, and who decided. A pending query that expired
-- stays as a tombstone (status 'expired', no payload) for result_ttl_secs,
-- so its requester is told it expired rather than that it never existed.
ALTER TABLE queries ADD COLUMN reason TEXT;
ALTER TABLE queries ADD COLUMN decided_by TEXT;
