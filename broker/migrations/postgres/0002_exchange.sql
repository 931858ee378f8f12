-- Timestamps are RFC 3339 UTC text with fixed width on both backends, so the
-- same SQL (with $N placeholders) serves SQLite and PostgreSQL.
-- Data keys: AES-256 keys wrapped by a key-encryption key from the key directory.
CREATE TABLE data_keys (
    id TEXT PRIMARY KEY NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped BYTEA NOT NULL,
    created_at TEXT NOT NULL
);

-- Insured and linked persons. The Individual Number is only stored encrypted,
-- with a keyed hash for lookup; the basic four facts likewise.
CREATE TABLE persons (
    id TEXT PRIMARY KEY NOT NULL,
    insurer TEXT NOT NULL REFERENCES orgs(id),
    branch_number TEXT NOT NULL,
    number_hash BYTEA NOT NULL UNIQUE,
    number_cipher BYTEA NOT NULL,
    facts_hash BYTEA NOT NULL,
    facts_cipher BYTEA NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (insurer, branch_number)
);
CREATE INDEX persons_facts ON persons (insurer, facts_hash);

-- Per-organisation person codes: random, so two orgs' codes cannot be linked.
CREATE TABLE person_codes (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    code TEXT NOT NULL,
    person_id TEXT NOT NULL REFERENCES persons(id),
    created_at TEXT NOT NULL,
    PRIMARY KEY (org_id, code),
    UNIQUE (org_id, person_id)
);

-- Deposited copies, one row per provider and person, encrypted at rest.
CREATE TABLE copies (
    provider TEXT NOT NULL REFERENCES orgs(id),
    person_code TEXT NOT NULL,
    cipher BYTEA NOT NULL,
    deposited_at TEXT NOT NULL,
    PRIMARY KEY (provider, person_code)
);

-- Every version of the flow list; the highest is in force.
CREATE TABLE flow_lists (
    version BIGINT PRIMARY KEY NOT NULL,
    sha256 TEXT NOT NULL,
    body TEXT NOT NULL,
    loaded_at TEXT NOT NULL
);

-- Query results and pending work; only ciphertext, deleted when expired (R13).
CREATE TABLE queries (
    id TEXT PRIMARY KEY NOT NULL,
    requester TEXT NOT NULL,
    provider TEXT NOT NULL,
    status TEXT NOT NULL,
    permit TEXT NOT NULL,
    envelope TEXT,
    pending_cipher BYTEA,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX queries_expiry ON queries (expires_at);
CREATE INDEX queries_pending ON queries (provider, status);
