-- RFC 3161 time-stamp token (DER) of each checkpoint, when the configured
-- TSA answered ([records] tsa_url); NULL when none was configured or the TSA
-- was unreachable while sealing (docs/evidence.md).
ALTER TABLE record_checkpoints ADD COLUMN tsa_token BLOB;
