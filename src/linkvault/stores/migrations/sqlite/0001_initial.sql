-- Provider connections, their encrypted credentials and the refresh worker's lease.
-- UUIDs are 16-byte blobs; instants are integer microseconds since the Unix epoch, UTC.
CREATE TABLE provider_connections (
    id                    BLOB PRIMARY KEY CHECK (length(id) = 16),
    user_id               BLOB NOT NULL CHECK (length(user_id) = 16),
    provider_id           BLOB NOT NULL CHECK (length(provider_id) = 16),
    provider_slug         TEXT NOT NULL CHECK (trim(provider_slug) <> ''),
    alias                 TEXT,
    status                TEXT NOT NULL CHECK (
        status IN ('pending', 'active', 'expired', 'revoked', 'failed', 'disconnected')),
    status_reason         TEXT,
    credential_type       TEXT CHECK (credential_type IN (
        'oauth2', 'api_key', 'link_token', 'certificate', 'file_import', 'custom')),
    encrypted_credentials BLOB,
    credentials_expire_at INTEGER,
    connected_at          INTEGER,
    last_sync_at          INTEGER,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    version               INTEGER NOT NULL CHECK (version > 0),
    refresh_lease_owner   TEXT,
    refresh_lease_until   INTEGER,
    refresh_failures      INTEGER NOT NULL DEFAULT 0,
    next_refresh_at       INTEGER,
    last_refresh_error    TEXT,
    CHECK ((credential_type IS NULL) = (encrypted_credentials IS NULL)),
    CHECK (credentials_expire_at IS NULL OR encrypted_credentials IS NOT NULL),
    CHECK (status <> 'active' OR encrypted_credentials IS NOT NULL),
    CHECK (status <> 'disconnected' OR encrypted_credentials IS NULL)
);

CREATE INDEX provider_connections_user_idx
    ON provider_connections (user_id, created_at, id);

CREATE INDEX provider_connections_user_provider_idx
    ON provider_connections (user_id, provider_id);

CREATE INDEX provider_connections_expiring_idx
    ON provider_connections (credentials_expire_at)
    WHERE status = 'active' AND credentials_expire_at IS NOT NULL;
