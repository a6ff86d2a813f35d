-- Consent that ends by rule (a provider's consent_lifetime): the connected_at whose coming end
-- was announced (connection.consent_expiring), so it is announced once per consent; a
-- reconnect sets a new connected_at and so a new one. Not indexed: the warning sweep reads
-- rarely, while an index would cost every refresh that writes the row.
ALTER TABLE provider_connections ADD COLUMN consent_warned_for timestamptz;
