-- Keep the refresh's write-ahead record out of every index, so the statement that records an
-- attempt before each token request changes no indexed column (a HOT update in PostgreSQL:
-- no index entries written). Only answers known to be lost (refresh_attempt_lost, set by
-- record_lost) are indexed, for claim_lost; an attempt whose worker died is still due, at the
-- head of the queue, and is claimed by claim_due once its short lease lapses.
DROP INDEX IF EXISTS provider_connections_attempt_idx;

CREATE INDEX provider_connections_lost_idx
    ON provider_connections (id)
    WHERE refresh_attempt_lost IS NOT NULL;
