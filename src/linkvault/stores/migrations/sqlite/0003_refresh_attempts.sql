-- The refresh worker's write-ahead record of a token request, and per-provider circuits
-- (see the PostgreSQL migration of the same number for what each column means).
ALTER TABLE provider_connections ADD COLUMN refresh_attempt_at INTEGER;
ALTER TABLE provider_connections ADD COLUMN refresh_attempt_fingerprint TEXT;
ALTER TABLE provider_connections ADD COLUMN refresh_attempt_lost TEXT;

CREATE INDEX provider_connections_attempt_idx
    ON provider_connections (refresh_attempt_at)
    WHERE refresh_attempt_at IS NOT NULL;

CREATE TABLE provider_circuits (
    provider_slug TEXT PRIMARY KEY,
    failures      INTEGER NOT NULL DEFAULT 0,
    opened        INTEGER NOT NULL DEFAULT 0,
    open_until    INTEGER,
    last_error    TEXT,
    updated_at    INTEGER NOT NULL
);
