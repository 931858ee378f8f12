-- The session that began the TOTP enrolment in progress (its token hash,
-- hex): the key not yet confirmed is shown again to that session only, so
-- another login with the same password cannot read a key the person is
-- about to confirm (broker/src/people).
ALTER TABLE users ADD COLUMN totp_enrolment_session TEXT;
