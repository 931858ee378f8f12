-- People: personal accounts of staff (R19, R20). Timestamps are fixed-width
-- RFC 3339 UTC text, as everywhere, so the same SQL serves both backends.
-- Passwords are Argon2id PHC strings; TOTP secrets are encrypted with the
-- broker's data key; session ids are stored only as SHA-256 hashes.
CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    number_privilege BOOLEAN NOT NULL DEFAULT FALSE,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    password_hash TEXT NOT NULL,
    password_temporary BOOLEAN NOT NULL,
    password_set_at TEXT NOT NULL,
    totp_cipher BYTEA,
    totp_enrolled BOOLEAN NOT NULL DEFAULT FALSE,
    -- The RFC 6238 step of the last accepted code; a code of this step or
    -- an earlier one is refused.
    totp_last_step BIGINT,
    failed_count BIGINT NOT NULL DEFAULT 0,
    locked_until TEXT,
    last_login_at TEXT,
    last_login_from TEXT,
    last_failed_at TEXT,
    last_failed_from TEXT,
    -- Bumped by every update of the failure count, lock and TOTP step, so
    -- concurrent logins of one user update them compare-and-set.
    revision BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX users_org ON users (org_id);

CREATE TABLE user_roles (
    user_id TEXT NOT NULL REFERENCES users(id),
    role TEXT NOT NULL CHECK (role IN ('operator', 'auditor', 'administrator')),
    granted_at TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
);

-- The most recent password hashes (current included), newest the highest seq.
CREATE TABLE password_history (
    user_id TEXT NOT NULL REFERENCES users(id),
    seq BIGINT NOT NULL,
    password_hash TEXT NOT NULL,
    set_at TEXT NOT NULL,
    PRIMARY KEY (user_id, seq)
);

-- prev_*: the user's last successful and failed login when the session
-- began, shown for the whole session.
CREATE TABLE user_sessions (
    token_hash BYTEA PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id),
    stage TEXT NOT NULL CHECK (stage IN ('password_change', 'totp_enrolment', 'totp', 'full')),
    csrf_token TEXT NOT NULL,
    source TEXT,
    created_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    prev_login_at TEXT,
    prev_login_from TEXT,
    prev_failed_at TEXT,
    prev_failed_from TEXT
);
CREATE INDEX user_sessions_user ON user_sessions (user_id);
CREATE INDEX user_sessions_seen ON user_sessions (last_seen_at);
