-- Failed logins as user ids nobody has, counted by the same lockout rule as
-- users' own failures (broker/src/people/lockout.rs), so that someone
-- without the password gets the same answers whether or not an id exists,
-- on every node. A row is keyed by a keyed hash (HMAC-SHA256 under the
-- broker's lookup key) of the id typed, never the id: what was typed may be
-- a password or an Individual Number in the wrong field. expires_at is when
-- the row answers as no row at all (its count lapsed, its lock passed); the
-- sweeper deletes it then, so made-up ids cannot grow the table. Where the
-- broker is the one node (SQLite) the counts are kept in memory instead
-- (broker/src/people/unknown_ids.rs) and this table stays empty.
CREATE TABLE unknown_login_failures (
    id_hash BLOB PRIMARY KEY NOT NULL,
    failed_count INTEGER NOT NULL,
    locked_until TEXT,
    last_failed_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    -- Bumped by every update, so concurrent attempts update compare-and-set.
    revision INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX unknown_login_failures_expiry ON unknown_login_failures (expires_at);
