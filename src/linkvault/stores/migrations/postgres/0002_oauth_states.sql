-- Pending OAuth2 authorizations: single-use state (stored hashed) and the sealed PKCE verifier.
CREATE TABLE oauth_states (
    state_hash      bytea PRIMARY KEY,
    connection_id   uuid NOT NULL REFERENCES provider_connections (id) ON DELETE CASCADE,
    sealed_verifier bytea NOT NULL,
    redirect_uri    text NOT NULL,
    return_to       text,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL
);

CREATE INDEX oauth_states_expires_idx ON oauth_states (expires_at);
CREATE INDEX oauth_states_connection_idx ON oauth_states (connection_id);
