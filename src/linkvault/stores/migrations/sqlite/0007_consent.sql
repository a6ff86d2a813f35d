-- See the PostgreSQL migration of the same number.
ALTER TABLE provider_connections ADD COLUMN consent_warned_for INTEGER;
ALTER TABLE oauth_states ADD COLUMN renews INTEGER NOT NULL DEFAULT 0 CHECK (renews IN (0, 1));
