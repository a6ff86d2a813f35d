-- Pending OAuth2 authorizations: single-use state (stored hashed) and the sealed PKCE verifier.
CREATE TABLE oauth_states (
    state_hash      BLOB PRIMARY KEY,
    connection_id   BLOB NOT NULL REFERENCES provider_connections (id) ON DELETE CASCADE,
    sealed_verifier BLOB NOT NULL,
    redirect_uri    TEXT NOT NULL,
    return_to       TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
);

CREATE INDEX oauth_states_expires_idx ON oauth_states (expires_at);
CREATE INDEX oauth_states_connection_idx ON oauth_states (connection_id);
