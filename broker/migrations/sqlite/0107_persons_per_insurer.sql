-- Persons are kept per insurer (医療保険者等ごとに区分管理, R2/R3): two insurers
-- registering the same Individual Number each have a person of their own,
-- with their own facts, eligibility and branch number. So the number's keyed
-- hash is unique per insurer, not overall.
--
-- Person codes: an insurer's code names its own person (`person_id`); a
-- linking org's code (municipality, agency) names the Individual Number
-- itself, by the same keyed hash, and has no `person_id`. A query maps the
-- requester's code to the provider's code of the same number hash; a link
-- between two linking orgs is in force only while some insurer has
-- registered the number (broker/src/identity.rs). Every code carries the
-- number hash, so the mapping is one indexed join.
--
-- SQLite cannot drop a column's UNIQUE or make a column nullable in place,
-- so the three tables are rebuilt: the children first copied to tables that
-- reference the new parent, the old ones dropped children first (which
-- leaves no row referring to a dropped table), and the new ones renamed
-- (renaming a parent rewrites its children's REFERENCES clauses).

CREATE TABLE persons_new (
    id TEXT PRIMARY KEY NOT NULL,
    insurer TEXT NOT NULL REFERENCES orgs(id),
    branch_number TEXT NOT NULL,
    number_hash BLOB NOT NULL,
    number_cipher BLOB NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    eligibility_lost_on TEXT,
    UNIQUE (insurer, branch_number),
    UNIQUE (insurer, number_hash)
);
INSERT INTO persons_new (id, insurer, branch_number, number_hash, number_cipher, created_at, updated_at, eligibility_lost_on)
    SELECT id, insurer, branch_number, number_hash, number_cipher, created_at, updated_at, eligibility_lost_on
    FROM persons;

CREATE TABLE person_facts_new (
    person_id TEXT PRIMARY KEY NOT NULL REFERENCES persons_new(id),
    insurer TEXT NOT NULL,
    facts_hash BLOB NOT NULL,
    facts_cipher BLOB NOT NULL,
    confirmed_at TEXT NOT NULL
);
INSERT INTO person_facts_new (person_id, insurer, facts_hash, facts_cipher, confirmed_at)
    SELECT person_id, insurer, facts_hash, facts_cipher, confirmed_at FROM person_facts;

CREATE TABLE person_codes_new (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    code TEXT NOT NULL,
    -- The insurer's own person; NULL for a linking org's code.
    person_id TEXT REFERENCES persons_new(id),
    number_hash BLOB NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (org_id, code),
    UNIQUE (org_id, person_id),
    UNIQUE (org_id, number_hash)
);
-- Until now one person stood for the number at every org: the code of the
-- person's insurer stays that person's; any other org's code becomes a link
-- to the number.
INSERT INTO person_codes_new (org_id, code, person_id, number_hash, created_at)
    SELECT c.org_id, c.code,
           CASE WHEN p.insurer = c.org_id THEN c.person_id END,
           p.number_hash, c.created_at
    FROM person_codes c JOIN persons p ON p.id = c.person_id;

DROP TABLE person_codes;
DROP TABLE person_facts;
DROP TABLE persons;
ALTER TABLE persons_new RENAME TO persons;
ALTER TABLE person_facts_new RENAME TO person_facts;
ALTER TABLE person_codes_new RENAME TO person_codes;

CREATE INDEX persons_eligibility ON persons (eligibility_lost_on)
    WHERE eligibility_lost_on IS NOT NULL;
-- Whether any insurer registered a number (links between linking orgs).
CREATE INDEX persons_number ON persons (number_hash);
CREATE INDEX person_facts_match ON person_facts (insurer, facts_hash);
CREATE INDEX person_facts_confirmed ON person_facts (confirmed_at);
-- Every code of a person (disclosure, erasure).
CREATE INDEX person_codes_person ON person_codes (person_id) WHERE person_id IS NOT NULL;
CREATE INDEX person_codes_number ON person_codes (number_hash);

-- The lookup generation (0005): the triggers went with the old table. A
-- person added or erased also changes answers (whether a link is in force).
CREATE TRIGGER person_codes_insert_generation AFTER INSERT ON person_codes
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER person_codes_update_generation AFTER UPDATE ON person_codes
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER person_codes_delete_generation AFTER DELETE ON person_codes
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER persons_insert_generation AFTER INSERT ON persons
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER persons_delete_generation AFTER DELETE ON persons
BEGIN UPDATE lookup_generation SET n = n + 1 WHERE id = 1; END;
UPDATE lookup_generation SET n = n + 1 WHERE id = 1;

-- Permits now bind the provider's code by a commitment instead of naming it
-- (R4). Stored results still hold permits that name it: they end now, so
-- they are never sent again (a pending one expires, with its record, at
-- the next sweep, as if nobody had decided).
UPDATE queries SET expires_at = '1970-01-01T00:00:00.000000Z'
    WHERE permit LIKE '%"provider_person_code"%';
