-- Auditor search (R16, broker/src/records/search.rs): a period becomes a
-- range of sequence numbers before any walk, as on SQLite (0106): the
-- lowest and highest sequence numbers of each UTC day it covers, one probe
-- of this index per day, in that day's month partition only. A walk then
-- starts at the period's last record instead of at the end of its month.
-- SQLite has had the same index since 0106 (records_search_day).
CREATE INDEX records_search_day ON records ((substr(recorded_at, 1, 10)), seq);
