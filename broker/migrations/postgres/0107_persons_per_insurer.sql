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

-- The lookup generation's trigger on person_codes is deferred to commit;
-- an ALTER TABLE after rows changed would meet its pending events. Run it
-- at once instead, within this transaction.
SET CONSTRAINTS ALL IMMEDIATE;

ALTER TABLE persons DROP CONSTRAINT persons_number_hash_key;
ALTER TABLE persons ADD CONSTRAINT persons_insurer_number_hash_key UNIQUE (insurer, number_hash);
-- Whether any insurer registered a number (links between linking orgs).
CREATE INDEX persons_number ON persons (number_hash);

ALTER TABLE person_codes ADD COLUMN number_hash BYTEA;
ALTER TABLE person_codes ALTER COLUMN person_id DROP NOT NULL;
-- Until now one person stood for the number at every org: the code of the
-- person's insurer stays that person's; any other org's code becomes a link
-- to the number.
UPDATE person_codes c
    SET number_hash = p.number_hash,
        person_id = CASE WHEN p.insurer = c.org_id THEN c.person_id END
    FROM persons p
    WHERE p.id = c.person_id;
ALTER TABLE person_codes ALTER COLUMN number_hash SET NOT NULL;
ALTER TABLE person_codes ADD CONSTRAINT person_codes_org_number_key UNIQUE (org_id, number_hash);
-- Every code of a person (disclosure, erasure) and of a number (mapping).
CREATE INDEX person_codes_person ON person_codes (person_id) WHERE person_id IS NOT NULL;
CREATE INDEX person_codes_number ON person_codes (number_hash);

-- A person added or erased also changes answers (whether a link is in
-- force), so it moves the lookup generation too (0005).
CREATE CONSTRAINT TRIGGER persons_generation
    AFTER INSERT OR DELETE ON persons
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION lookup_generation_bump();
CREATE TRIGGER persons_truncate_generation
    AFTER TRUNCATE ON persons
    FOR EACH STATEMENT EXECUTE FUNCTION lookup_generation_bump();

-- Permits now bind the provider's code by a commitment instead of naming it
-- (R4). Stored results still hold permits that name it: they end now, so
-- they are never sent again (a pending one expires, with its record, at
-- the next sweep, as if nobody had decided).
UPDATE queries SET expires_at = '1970-01-01T00:00:00.000000Z'
    WHERE permit LIKE '%"provider_person_code"%';
