-- Auditor search (R16, broker/src/records/search.rs): every filter walks an
-- index of (column, seq) newest first, so a page costs the same at any depth.
-- A period needs no index of its own: the month partitions it touches are
-- the only ones read (part_month is the month of recorded_at). Person codes
-- use records_requester_code and records_provider_code (0100).
CREATE INDEX records_search_requester ON records (requester, seq);
CREATE INDEX records_search_provider ON records (provider, seq);
CREATE INDEX records_search_flow ON records (flow_id, seq);
CREATE INDEX records_search_outcome ON records (outcome, seq);
