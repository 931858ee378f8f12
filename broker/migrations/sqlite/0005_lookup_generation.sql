-- The lookup generation: one number that changes in the same transaction as
-- any change to person codes or copies, whoever writes them. The query path
-- keeps its reads of those tables in memory while the number holds
-- (broker/src/lookups/cache.rs), because a SQLite reader drops its page cache
-- whenever any other connection commits.
CREATE TABLE lookup_generation (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    n INTEGER NOT NULL
);
INSERT INTO lookup_generation (id, n) VALUES (1, 0);

CREATE TRIGGER person_codes_insert_generation AFTER INSERT ON person_codes
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER person_codes_update_generation AFTER UPDATE ON person_codes
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER person_codes_delete_generation AFTER DELETE ON person_codes
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER copies_insert_generation AFTER INSERT ON copies
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER copies_update_generation AFTER UPDATE ON copies
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER copies_delete_generation AFTER DELETE ON copies
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
