-- When an org last linked the number behind a code (R15). A linking org's
-- code whose number no insurer keeps a person for answers nothing (every
-- flow has the insurer on one side), so it is identity data kept for no
-- use: it is erased, with its copies, once both its creation and its last
-- link are older than the identity-confirmation period. Linking the number
-- again keeps it. Rows from before have '' here: their creation time
-- counts (no rewrite of the table).
ALTER TABLE person_codes ADD COLUMN linked_at TEXT NOT NULL DEFAULT '';
CREATE INDEX person_codes_linked_at ON person_codes (linked_at) WHERE person_id IS NULL;
-- A link again moves linked_at only, which changes no answer: it does not
-- bump the lookup generation (the cache of lookups would be emptied by a
-- nightly re-link of every resident).
DROP TRIGGER person_codes_update_generation;
CREATE TRIGGER person_codes_update_generation
    AFTER UPDATE OF org_id, code, person_id, number_hash ON person_codes
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
