-- See the PostgreSQL migration of the same number.
ALTER TABLE provider_connections ADD COLUMN consent_warned_for INTEGER;
