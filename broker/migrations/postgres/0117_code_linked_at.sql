-- When an org last linked the number behind a code (R15). A linking org's
-- code whose number no insurer keeps a person for answers nothing (every
-- flow has the insurer on one side), so it is identity data kept for no
-- use: it is erased, with its copies, once its last link is older than the
-- identity-confirmation period. Linking the number again keeps it.
ALTER TABLE person_codes ADD COLUMN linked_at TEXT NOT NULL DEFAULT '';
-- The index before the update: on PostgreSQL the update queues the
-- deferred foreign-key checks, which forbid an index after it in the same
-- transaction.
CREATE INDEX person_codes_linked_at ON person_codes (linked_at) WHERE person_id IS NULL;
UPDATE person_codes SET linked_at = created_at;
