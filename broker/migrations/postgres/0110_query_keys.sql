-- Idempotency keys of POST /v1/queries (the IETF Idempotency-Key header):
-- a retry under the same key gets the same query back and makes no second
-- provision record. The key is claimed (with the query id it will have)
-- before the query runs; the outcome is written once it is known. A denied
-- query keeps its error here, since it stores nothing in `queries`.
CREATE TABLE query_keys (
    requester TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    query_id TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    done BIGINT NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (requester, idempotency_key)
);
CREATE INDEX query_keys_expiry ON query_keys (expires_at);
