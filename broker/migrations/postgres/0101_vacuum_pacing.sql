-- Autovacuum's pace on the two tables every answer writes to (R13, R14).
--
-- Both grow by one row per query and are read back rarely, so autovacuum's
-- passes over them are insert-driven: each one visits every page the new
-- rows filled and dirties it again (visibility map, hint bits). At the
-- default pace (a 2 ms rest per 200 cost units) that pass rewrites ~40 MB/s,
-- and every answer's record commit waits for its WAL flush behind those
-- writes: p99 at half rate went from ~6 ms to 13-50 ms while a pass ran
-- (benches/README.md, session 14). Resting 10 ms instead spreads the same
-- work five times as long (~7 MB/s of pages). A host that sustains more
-- than ~6 000 queries a second for hours can reset it per table
-- (`ALTER TABLE queries RESET (autovacuum_vacuum_cost_delay)`).
--
-- New month partitions get the same setting when the writer creates them
-- (broker/src/records/db.rs, PARTITION_STORAGE).
ALTER TABLE queries SET (autovacuum_vacuum_cost_delay = 10);
-- Every partition of records there is already, the default one included.
DO $$
DECLARE part record;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'records'
    LOOP
        EXECUTE format('ALTER TABLE %I SET (autovacuum_vacuum_cost_delay = 10)', part.relname);
    END LOOP;
END $$;
