-- Provider connections, their encrypted credentials and the refresh worker's lease.
CREATE TABLE provider_connections (
    id                    uuid PRIMARY KEY,
    user_id               uuid NOT NULL,
    provider_id           uuid NOT NULL,
    provider_slug         text NOT NULL CHECK (btrim(provider_slug) <> ''),
    alias                 text,
    status                text NOT NULL CHECK (
        status IN ('pending', 'active', 'expired', 'revoked', 'failed', 'disconnected')),
    status_reason         text,
    credential_type       text CHECK (credential_type IN (
        'oauth2', 'api_key', 'link_token', 'certificate', 'file_import', 'custom')),
    encrypted_credentials bytea,
    credentials_expire_at timestamptz,
    connected_at          timestamptz,
    last_sync_at          timestamptz,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    version               bigint NOT NULL CHECK (version > 0),
    refresh_lease_owner   text,
    refresh_lease_until   timestamptz,
    refresh_failures      integer NOT NULL DEFAULT 0,
    next_refresh_at       timestamptz,
    last_refresh_error    text,
    CHECK ((credential_type IS NULL) = (encrypted_credentials IS NULL)),
    CHECK (credentials_expire_at IS NULL OR encrypted_credentials IS NOT NULL),
    CHECK (status <> 'active' OR encrypted_credentials IS NOT NULL),
    CHECK (status <> 'disconnected' OR encrypted_credentials IS NULL)
);

-- find_by_user_id, find_active_by_user (status filtered on the few rows of one user)
CREATE INDEX provider_connections_user_idx
    ON provider_connections (user_id, created_at, id);

-- find_by_user_and_provider
CREATE INDEX provider_connections_user_provider_idx
    ON provider_connections (user_id, provider_id);

-- find_expiring_soon and the refresh worker's claim. The predicate is a literal, never a
-- bound parameter, so the index also serves generic plans of prepared statements.
CREATE INDEX provider_connections_expiring_idx
    ON provider_connections (credentials_expire_at)
    WHERE status = 'active' AND credentials_expire_at IS NOT NULL;
