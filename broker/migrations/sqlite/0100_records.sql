-- Provision records (R14): append-only, hash-linked, sealed by signed
-- checkpoints. Canonical encoding and hashes: interfaces/src/audit.rs.
-- Order is `seq` (gap-free, assigned by the writer under the head lock);
-- `recorded_at` is informative and never used for order (R23).
CREATE TABLE records (
    seq INTEGER PRIMARY KEY NOT NULL,
    recorded_at TEXT NOT NULL,
    query_id TEXT NOT NULL,
    permit_id TEXT,
    flow_id TEXT,
    flow_list_version INTEGER,
    procedure_code TEXT,
    requester TEXT NOT NULL,
    provider TEXT,
    -- Item codes separated by one space (codes contain no spaces); never values.
    items TEXT NOT NULL,
    -- Per-org person codes with the salts of their hash commitments.
    requester_code TEXT,
    requester_salt BLOB,
    provider_code TEXT,
    provider_salt BLOB,
    outcome TEXT NOT NULL,
    reason TEXT,
    approver TEXT,
    -- JSON details of export and purge records.
    detail TEXT,
    -- Chain hash of this record.
    hash BLOB NOT NULL
);
CREATE INDEX records_recorded_at ON records (recorded_at);
CREATE INDEX records_requester_code ON records (requester_code) WHERE requester_code IS NOT NULL;
CREATE INDEX records_provider_code ON records (provider_code) WHERE provider_code IS NOT NULL;

-- The chain head (locked by every writer transaction) and the purge cut the
-- remaining chain starts from.
CREATE TABLE records_head (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    cut_seq INTEGER NOT NULL,
    cut_hash BLOB NOT NULL
);
INSERT INTO records_head (id, seq, hash, cut_seq, cut_hash)
VALUES (1, 0, zeroblob(32), 0, zeroblob(32));

-- Signed checkpoints: "the chain up to seq ends in head_hash".
CREATE TABLE record_checkpoints (
    seq INTEGER PRIMARY KEY NOT NULL,
    head_hash BLOB NOT NULL,
    signed_at TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key BLOB NOT NULL,
    signature BLOB NOT NULL
);
