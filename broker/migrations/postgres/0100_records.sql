-- Provision records (R14): append-only, hash-linked, sealed by signed
-- checkpoints. Canonical encoding and hashes: interfaces/src/audit.rs.
-- Order is `seq` (gap-free, assigned by the writer under the head row lock);
-- `recorded_at` is informative and never used for order (R23).
-- Range-partitioned by UTC month (`part_month` = yyyymm) so the retention
-- purge (R15) drops whole partitions; the writer creates each month's
-- partition ahead of time, the default partition only catches stragglers.
CREATE TABLE records (
    seq BIGINT NOT NULL,
    part_month INTEGER NOT NULL,
    recorded_at TEXT COLLATE "C" NOT NULL,
    query_id TEXT NOT NULL,
    permit_id TEXT,
    flow_id TEXT,
    flow_list_version BIGINT,
    procedure_code TEXT,
    requester TEXT NOT NULL,
    provider TEXT,
    -- Item codes separated by one space (codes contain no spaces); never values.
    items TEXT NOT NULL,
    -- Per-org person codes with the salts of their hash commitments.
    requester_code TEXT,
    requester_salt BYTEA,
    provider_code TEXT,
    provider_salt BYTEA,
    outcome TEXT NOT NULL,
    reason TEXT,
    approver TEXT,
    -- JSON details of export and purge records.
    detail TEXT,
    -- Chain hash of this record.
    hash BYTEA NOT NULL,
    PRIMARY KEY (seq, part_month)
) PARTITION BY RANGE (part_month);
CREATE TABLE records_default PARTITION OF records DEFAULT;
CREATE INDEX records_recorded_at ON records (recorded_at);
CREATE INDEX records_requester_code ON records (requester_code) WHERE requester_code IS NOT NULL;
CREATE INDEX records_provider_code ON records (provider_code) WHERE provider_code IS NOT NULL;

-- The chain head (row-locked by every writer transaction, on every node) and
-- the purge cut the remaining chain starts from.
CREATE TABLE records_head (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    cut_seq BIGINT NOT NULL,
    cut_hash BYTEA NOT NULL
);
INSERT INTO records_head (id, seq, hash, cut_seq, cut_hash)
VALUES (1, 0, decode(repeat('00', 32), 'hex'), 0, decode(repeat('00', 32), 'hex'));

-- Signed checkpoints: "the chain up to seq ends in head_hash".
CREATE TABLE record_checkpoints (
    seq BIGINT PRIMARY KEY NOT NULL,
    head_hash BYTEA NOT NULL,
    signed_at TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    signature BYTEA NOT NULL
);
