-- Auditor search (R16, broker/src/records/search.rs): every filter walks an
-- index of (column, seq) newest first, so a page costs the same at any depth.
-- The keys are few (orgs, flows, outcomes, days) and grow at the right end,
-- so each commit adds to a few hot pages per index, not to random ones as
-- the person codes would (those stay in the side index, 0101).
--
-- A period is bounded by the lowest and highest sequence numbers of each
-- UTC day it covers: one probe per day of this index.
CREATE INDEX records_search_day ON records (substr(recorded_at, 1, 10), seq);
CREATE INDEX records_search_requester ON records (requester, seq);
CREATE INDEX records_search_provider ON records (provider, seq);
CREATE INDEX records_search_flow ON records (flow_id, seq);
CREATE INDEX records_search_outcome ON records (outcome, seq);
