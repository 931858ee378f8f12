-- The person-code indexes move to a side file filled in batches off the
-- commit path (broker/src/records/person_index.rs): random codes put every
-- record on a random leaf of both, written and fsynced with every commit.
DROP INDEX records_requester_code;
DROP INDEX records_provider_code;
