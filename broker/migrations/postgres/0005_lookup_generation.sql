-- The lookup generation: one number that changes in the same transaction as
-- any change to person codes or copies, whoever writes them. The query path
-- keeps its reads of those tables in memory while the number holds
-- (broker/src/lookups/cache.rs), as on SQLite (its 0005).
--
-- Unlike SQLite, PostgreSQL writers run concurrently, and the number is one
-- row: bumping it takes that row's lock until commit. So the bump is a
-- deferred constraint trigger: it runs at commit, after every statement of
-- the transaction, and once per transaction (a transaction-local setting
-- holding the transaction's id marks it done, so no session-level setting
-- can stand in for it). Two writers then only queue for the instant of their
-- commits, and since the row is the last lock either takes, they cannot
-- deadlock on it.
CREATE TABLE lookup_generation (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    n BIGINT NOT NULL
);
INSERT INTO lookup_generation (id, n) VALUES (1, 0);

CREATE FUNCTION lookup_generation_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('kakehashi.lookup_generation_bumped', true)
            IS DISTINCT FROM pg_current_xact_id()::text THEN
        UPDATE lookup_generation SET n = n + 1 WHERE id = 1;
        PERFORM set_config('kakehashi.lookup_generation_bumped', pg_current_xact_id()::text, true);
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER person_codes_generation
    AFTER INSERT OR UPDATE OR DELETE ON person_codes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION lookup_generation_bump();
CREATE CONSTRAINT TRIGGER copies_generation
    AFTER INSERT OR UPDATE OR DELETE ON copies
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION lookup_generation_bump();

-- TRUNCATE fires no row trigger; it is rare (an operator's), so it bumps at once.
CREATE TRIGGER person_codes_truncate_generation
    AFTER TRUNCATE ON person_codes
    FOR EACH STATEMENT EXECUTE FUNCTION lookup_generation_bump();
CREATE TRIGGER copies_truncate_generation
    AFTER TRUNCATE ON copies
    FOR EACH STATEMENT EXECUTE FUNCTION lookup_generation_bump();
