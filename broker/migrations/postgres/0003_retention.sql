-- R15: personal data other than provision records have their own periods.
-- Identity-confirmation data (the basic four facts) are kept at most one year
-- from their last confirmation, so they move to a table of their own; a person
-- gains the day eligibility was lost, five years after which the person's
-- copies, codes and Individual Number are erased; branch numbers come from a
-- counter, so an erased person's number is never given again.
CREATE TABLE person_facts (
    person_id TEXT PRIMARY KEY NOT NULL REFERENCES persons(id),
    insurer TEXT NOT NULL,
    facts_hash BYTEA NOT NULL,
    facts_cipher BYTEA NOT NULL,
    confirmed_at TEXT NOT NULL
);
INSERT INTO person_facts (person_id, insurer, facts_hash, facts_cipher, confirmed_at)
    SELECT id, insurer, facts_hash, facts_cipher, updated_at FROM persons;
CREATE INDEX person_facts_match ON person_facts (insurer, facts_hash);
CREATE INDEX person_facts_confirmed ON person_facts (confirmed_at);
DROP INDEX persons_facts;
ALTER TABLE persons DROP COLUMN facts_hash;
ALTER TABLE persons DROP COLUMN facts_cipher;

-- YYYY-MM-DD; NULL while insured.
ALTER TABLE persons ADD COLUMN eligibility_lost_on TEXT;
CREATE INDEX persons_eligibility ON persons (eligibility_lost_on)
    WHERE eligibility_lost_on IS NOT NULL;

CREATE TABLE branch_counters (
    insurer TEXT PRIMARY KEY NOT NULL REFERENCES orgs(id),
    last BIGINT NOT NULL
);
INSERT INTO branch_counters (insurer, last)
    SELECT insurer, MAX(CAST(branch_number AS BIGINT)) FROM persons GROUP BY insurer;
