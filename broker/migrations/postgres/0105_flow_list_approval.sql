-- Two-person flow-list changes (R8): a version is proposed by one
-- administrator and in force only once a different one approves it; the
-- version in force is the highest approved one. Every version keeps who
-- proposed and who approved it, and when.
--
-- Versions stored before this migration were in force by loading alone:
-- they count as proposed and approved by 'host:migration' at their load
-- time.
ALTER TABLE flow_lists ADD COLUMN proposed_by TEXT;
ALTER TABLE flow_lists ADD COLUMN proposed_at TEXT;
ALTER TABLE flow_lists ADD COLUMN approved_by TEXT;
ALTER TABLE flow_lists ADD COLUMN approved_at TEXT;
UPDATE flow_lists
SET proposed_by = 'host:migration', proposed_at = loaded_at,
    approved_by = 'host:migration', approved_at = loaded_at;
ALTER TABLE flow_lists ALTER COLUMN proposed_by SET NOT NULL;
ALTER TABLE flow_lists ALTER COLUMN proposed_at SET NOT NULL;
ALTER TABLE flow_lists ADD CONSTRAINT flow_lists_approval_complete
    CHECK ((approved_by IS NULL) = (approved_at IS NULL));
-- Nobody approves their own version; only the configuration file and this
-- migration, which stand for a review made elsewhere, do both.
ALTER TABLE flow_lists ADD CONSTRAINT flow_lists_two_people
    CHECK (approved_by IS NULL OR approved_by <> proposed_by
           OR proposed_by IN ('host:config', 'host:migration'));

-- One row, updated to itself as the first statement of every transaction
-- that proposes or approves: writers on every broker and host command take
-- turns, so two approvals never both see themselves as the newest.
CREATE TABLE flow_list_writer (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1)
);
INSERT INTO flow_list_writer (id) VALUES (1);
