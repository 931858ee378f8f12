-- Operation log (操作ログ, R17): every human action, append-only, hash-linked,
-- each entry signed, sealed by chained signed checkpoints. Canonical encoding,
-- hashes and signatures: broker/src/oplog/entry.rs and chain.rs.
-- Order is `seq` (gap-free, assigned under the head row's lock on every
-- node); `logged_at` is fixed-width RFC 3339 UTC, so text order is time order.
-- Never holds a password, TOTP secret, item value or Individual Number.
CREATE TABLE operation_log (
    seq BIGINT PRIMARY KEY NOT NULL,
    logged_at TEXT COLLATE "C" NOT NULL,
    -- A personal user id, or host:<login name> for the host CLI.
    actor TEXT NOT NULL,
    org TEXT,
    action TEXT NOT NULL,
    target TEXT,
    -- success or refused, with the refusal's stable code.
    result TEXT NOT NULL,
    result_code TEXT,
    -- Client IP address.
    source TEXT,
    detail TEXT,
    -- Chain hash of this entry and the sealer's signature over it.
    hash BYTEA NOT NULL,
    key_id TEXT NOT NULL,
    signature BYTEA NOT NULL
);
CREATE INDEX operation_log_logged_at ON operation_log (logged_at);
CREATE INDEX operation_log_actor ON operation_log (actor, seq);
CREATE INDEX operation_log_org ON operation_log (org, seq) WHERE org IS NOT NULL;

-- The chain head, row-locked by every append and checkpoint.
CREATE TABLE operation_log_head (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
INSERT INTO operation_log_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

-- Signed checkpoints: "the log up to seq ends in head_hash; the checkpoint
-- before this one is at prev_seq".
CREATE TABLE operation_log_checkpoints (
    seq BIGINT PRIMARY KEY NOT NULL,
    head_hash BYTEA NOT NULL,
    prev_seq BIGINT NOT NULL,
    signed_at TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature BYTEA NOT NULL
);

-- Append-only: the broker never changes or deletes an entry or checkpoint.
-- Whoever drops these triggers to rewrite history is caught by
-- `kakehashi-broker oplog verify`.
CREATE FUNCTION operation_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the operation log is append-only';
END
$$;
CREATE TRIGGER operation_log_no_update BEFORE UPDATE ON operation_log
    FOR EACH ROW EXECUTE FUNCTION operation_log_append_only();
CREATE TRIGGER operation_log_no_delete BEFORE DELETE ON operation_log
    FOR EACH ROW EXECUTE FUNCTION operation_log_append_only();
CREATE TRIGGER operation_log_no_truncate BEFORE TRUNCATE ON operation_log
    FOR EACH STATEMENT EXECUTE FUNCTION operation_log_append_only();
CREATE TRIGGER operation_log_checkpoints_no_update BEFORE UPDATE ON operation_log_checkpoints
    FOR EACH ROW EXECUTE FUNCTION operation_log_append_only();
CREATE TRIGGER operation_log_checkpoints_no_delete BEFORE DELETE ON operation_log_checkpoints
    FOR EACH ROW EXECUTE FUNCTION operation_log_append_only();
CREATE TRIGGER operation_log_checkpoints_no_truncate BEFORE TRUNCATE ON operation_log_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION operation_log_append_only();
