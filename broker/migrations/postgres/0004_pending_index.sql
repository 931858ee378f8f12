-- Only pending results are ever looked up by provider and status (for
-- approval); auto-answered ones no longer pay an index entry each.
DROP INDEX queries_pending;
CREATE INDEX queries_pending ON queries (provider) WHERE status = 'pending';
