-- The refresh worker's write-ahead record of a token request, and per-provider circuits.
--
-- refresh_attempt_at / _fingerprint are set, in the statement that confirms the lease, just
-- before a refresh request is sent, and cleared once its answer is known. A row that still
-- holds them when it is claimed again had its answer lost (a worker stopped, or the answer
-- never came): the next attempt is a replay of a refresh token that may have been spent.
-- The fingerprint is a truncated SHA-256 of that refresh token, never the token.
ALTER TABLE provider_connections
    ADD COLUMN refresh_attempt_at timestamptz,
    ADD COLUMN refresh_attempt_fingerprint text,
    ADD COLUMN refresh_attempt_lost text;

-- Connections whose last request's answer was lost are claimed before anything else.
CREATE INDEX provider_connections_attempt_idx
    ON provider_connections (refresh_attempt_at)
    WHERE refresh_attempt_at IS NOT NULL;

-- A circuit per provider, shared by every worker: consecutive failures, and until when
-- refreshes to the provider pause.
CREATE TABLE provider_circuits (
    provider_slug text PRIMARY KEY,
    failures      integer NOT NULL DEFAULT 0,
    opened        integer NOT NULL DEFAULT 0,
    open_until    timestamptz,
    last_error    text,
    updated_at    timestamptz NOT NULL
);
