-- Consent that ends by rule (a provider's consent_lifetime): the connected_at whose coming end
-- was announced (connection.consent_expiring), so it is announced once per consent; a
-- reconnect sets a new connected_at and so a new one. Not indexed: the warning sweep reads
-- rarely, while an index would cost every refresh that writes the row.
ALTER TABLE provider_connections ADD COLUMN consent_warned_for timestamptz;

-- An authorization started to renew the consent of a connection that is still ACTIVE: its
-- callback replaces the grant; any other callback for an ACTIVE connection exchanges nothing.
ALTER TABLE oauth_states ADD COLUMN renews boolean NOT NULL DEFAULT false;
