-- Two-person flow-list changes (R8): a version is proposed by one
-- administrator and in force only once a different one approves it; the
-- version in force is the highest approved one. Every version keeps who
-- proposed and who approved it, and when.
--
-- Versions stored before this migration were in force by loading alone:
-- they count as proposed and approved by 'host:migration' at their load
-- time. The table is rebuilt because SQLite cannot add NOT NULL columns
-- without a default, nor CHECK constraints, to an existing table.
CREATE TABLE flow_lists_approval (
    version INTEGER PRIMARY KEY NOT NULL,
    sha256 TEXT NOT NULL,
    body TEXT NOT NULL,
    loaded_at TEXT NOT NULL,
    proposed_by TEXT NOT NULL,
    proposed_at TEXT NOT NULL,
    approved_by TEXT,
    approved_at TEXT,
    CHECK ((approved_by IS NULL) = (approved_at IS NULL)),
    -- Nobody approves their own version; only the configuration file and
    -- this migration, which stand for a review made elsewhere, do both.
    CHECK (approved_by IS NULL OR approved_by <> proposed_by
           OR proposed_by IN ('host:config', 'host:migration'))
);

INSERT INTO flow_lists_approval
    (version, sha256, body, loaded_at, proposed_by, proposed_at, approved_by, approved_at)
SELECT version, sha256, body, loaded_at, 'host:migration', loaded_at, 'host:migration', loaded_at
FROM flow_lists;

DROP TABLE flow_lists;
ALTER TABLE flow_lists_approval RENAME TO flow_lists;

-- One row, updated to itself as the first statement of every transaction
-- that proposes or approves: writers on every broker and host command take
-- turns, so two approvals never both see themselves as the newest.
CREATE TABLE flow_list_writer (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1)
);
INSERT INTO flow_list_writer (id) VALUES (1);
