-- The key ids (fingerprints, never the keys) of the key directory a
-- database is used with, so a node started with other key files is refused
-- (docs/keys.md). role: lookup | permit | kek | sealer. state: active (at
-- most one per role), previous (still accepted during a rotation),
-- retired. A permit key signs from active_from; a previous permit key stays
-- published until retire_after (its last permit has expired).
CREATE TABLE key_ids (
    role TEXT NOT NULL,
    key_id TEXT NOT NULL,
    state TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    active_from TEXT,
    retire_after TEXT,
    PRIMARY KEY (role, key_id)
);
CREATE UNIQUE INDEX key_ids_one_active ON key_ids (role) WHERE state = 'active';
