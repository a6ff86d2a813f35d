-- Named queries of the SQLite store (sqlite3, ?n placeholders).

-- name: find_by_id
SELECT id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version
FROM provider_connections
WHERE id = ?1;

-- name: find_by_user_id
SELECT id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version
FROM provider_connections
WHERE user_id = ?1
ORDER BY created_at, id;

-- name: find_by_user_and_provider
SELECT id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version
FROM provider_connections
WHERE user_id = ?1 AND provider_id = ?2
ORDER BY created_at, id;

-- name: find_active_by_user
SELECT id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version
FROM provider_connections
WHERE user_id = ?1 AND status = 'active'
ORDER BY created_at, id;

-- name: find_expiring_soon
-- The status and NULL tests are literals so that the partial index applies to generic plans.
SELECT id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version
FROM provider_connections
WHERE status = 'active'
  AND credentials_expire_at IS NOT NULL
  AND credentials_expire_at <= ?1
ORDER BY credentials_expire_at, id;

-- name: insert
-- A new entity (version 0): created at version 1, or nothing when the id is taken.
INSERT INTO provider_connections (id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version, event_seq)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 1, ?15)
ON CONFLICT (id) DO NOTHING
RETURNING version AS value, event_seq AS last_seq, id AS connection_id, user_id, provider_slug, NULL AS from_status;

-- name: update
-- A stored entity: updated only while the stored version is the one the copy was read at.
UPDATE provider_connections SET
    user_id = ?2,
    provider_id = ?3,
    provider_slug = ?4,
    alias = ?5,
    status = ?6,
    status_reason = ?7,
    credential_type = ?8,
    encrypted_credentials = ?9,
    credentials_expire_at = ?10,
    connected_at = ?11,
    last_sync_at = ?12,
    created_at = ?13,
    updated_at = ?14,
    -- New credentials start a fresh refresh schedule.
    refresh_failures = CASE WHEN encrypted_credentials IS NOT ?9 THEN 0 ELSE refresh_failures END,
    next_refresh_at = CASE WHEN encrypted_credentials IS NOT ?9 THEN NULL ELSE next_refresh_at END,
    refresh_attempt_at = CASE WHEN encrypted_credentials IS NOT ?9 THEN NULL ELSE refresh_attempt_at END,
    refresh_attempt_fingerprint = CASE WHEN encrypted_credentials IS NOT ?9 THEN NULL ELSE refresh_attempt_fingerprint END,
    refresh_attempt_lost = CASE WHEN encrypted_credentials IS NOT ?9 THEN NULL ELSE refresh_attempt_lost END,
    last_refresh_error = CASE WHEN encrypted_credentials IS NOT ?9 THEN NULL ELSE last_refresh_error END,
    version = version + 1,
    event_seq = event_seq + ?16
WHERE id = ?1 AND version = ?15
RETURNING version AS value, event_seq AS last_seq, id AS connection_id, user_id, provider_slug, NULL AS from_status;

-- name: delete
-- The row goes; its events stay, connection.deleted numbered after them (?2: one).
DELETE FROM provider_connections
WHERE id = ?1
RETURNING id AS value, event_seq + ?2 AS last_seq, id AS connection_id, user_id, provider_slug, status AS from_status;

-- name: append_events
-- Number events about a connection that change nothing else on it (?2: how many).
UPDATE provider_connections
SET event_seq = event_seq + ?2
WHERE id = ?1
RETURNING id AS value, event_seq AS last_seq, id AS connection_id, user_id, provider_slug, NULL AS from_status;

-- name: list_by_user
-- A listing driven by the user index; the other filters only narrow the user's few rows.
-- Keyset pagination in id order (UUIDv7: creation order).
SELECT id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version
FROM provider_connections
WHERE user_id = ?1
  AND (?2 IS NULL OR provider_id = ?2)
  AND (?3 IS NULL OR status = ?3)
  AND (?5 IS NULL OR id > ?5)
  AND (?4 IS NULL OR (status = 'active' AND credentials_expire_at <= ?4))
  AND (?7 IS NULL OR ?7 = (status IN ('expired', 'revoked', 'failed')
                           OR (status = 'active' AND refresh_failures >= ?8)))
ORDER BY id
LIMIT ?6;

-- name: list_expiring
-- A listing driven by the partial expiry index (?1 is unused: always NULL here).
SELECT id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version
FROM provider_connections
WHERE status = 'active'
  AND credentials_expire_at IS NOT NULL
  AND credentials_expire_at <= ?4
  AND (?1 IS NULL OR user_id = ?1)
  AND (?2 IS NULL OR provider_id = ?2)
  AND (?3 IS NULL OR status = ?3)
  AND (?5 IS NULL OR id > ?5)
  AND (?7 IS NULL OR ?7 = (status IN ('expired', 'revoked', 'failed')
                           OR (status = 'active' AND refresh_failures >= ?8)))
ORDER BY id
LIMIT ?6;

-- name: list_all
-- A listing in primary-key order; provider and status only filter.
SELECT id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version
FROM provider_connections
WHERE (?1 IS NULL OR user_id = ?1)
  AND (?2 IS NULL OR provider_id = ?2)
  AND (?3 IS NULL OR status = ?3)
  AND (?5 IS NULL OR id > ?5)
  AND (?4 IS NULL OR (status = 'active' AND credentials_expire_at <= ?4))
  AND (?7 IS NULL OR ?7 = (status IN ('expired', 'revoked', 'failed')
                           OR (status = 'active' AND refresh_failures >= ?8)))
ORDER BY id
LIMIT ?6;

-- name: claim_due
-- Lease due refreshable connections to one worker; run under BEGIN IMMEDIATE, which holds
-- the single write lock, so no two workers can claim the same row. Providers whose circuit is
-- open (?7, a JSON array) are left alone.
UPDATE provider_connections
SET refresh_lease_owner = ?5, refresh_lease_until = ?6
WHERE id IN (
    SELECT id
    FROM provider_connections
    WHERE status = 'active'
      AND credentials_expire_at IS NOT NULL
      AND credentials_expire_at <= ?1
      AND credential_type IN ('oauth2', 'link_token')
      AND (next_refresh_at IS NULL OR next_refresh_at <= ?2)
      AND (refresh_lease_until IS NULL OR refresh_lease_until <= ?2)
      AND refresh_failures < ?3
      AND provider_slug NOT IN (SELECT value FROM json_each(?7))
    ORDER BY credentials_expire_at
    LIMIT ?4
)
RETURNING id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version, refresh_failures, refresh_attempt_at, refresh_attempt_fingerprint, refresh_attempt_lost;

-- name: claim_lost
-- Lease connections whose last refresh request's answer is known lost (record_lost), oldest
-- first (under BEGIN IMMEDIATE, as claim_due). A worker's crash leaves a due row: claim_due.
UPDATE provider_connections
SET refresh_lease_owner = ?4, refresh_lease_until = ?5
WHERE id IN (
    SELECT id
    FROM provider_connections
    WHERE refresh_attempt_lost IS NOT NULL
      AND status = 'active'
      AND (refresh_lease_until IS NULL OR refresh_lease_until <= ?1)
      AND refresh_failures < ?2
      AND provider_slug NOT IN (SELECT value FROM json_each(?6))
    ORDER BY refresh_attempt_at
    LIMIT ?3
)
RETURNING id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version, refresh_failures, refresh_attempt_at, refresh_attempt_fingerprint, refresh_attempt_lost;

-- name: finish_claim
-- Close a lease this worker still holds once the answer is known: reset the schedule after a
-- success, or record the failure and when to try again.
UPDATE provider_connections
SET refresh_lease_owner = NULL,
    refresh_lease_until = NULL,
    refresh_failures = CASE WHEN ?3 THEN 0 ELSE refresh_failures + 1 END,
    next_refresh_at = ?4,
    last_refresh_error = ?5,
    refresh_attempt_at = NULL,
    refresh_attempt_fingerprint = NULL,
    refresh_attempt_lost = NULL,
    event_seq = event_seq + ?6
WHERE id = ?1 AND refresh_lease_owner = ?2
RETURNING refresh_failures AS value, event_seq AS last_seq, id AS connection_id, user_id, provider_slug, NULL AS from_status;

-- name: begin_attempts
-- The fence before a refresh request: extend the lease only while this worker still holds it
-- and the row still holds the grant the request will spend, and record the attempt first
-- (its first time is kept across replays of the same refresh token). Run once per request;
-- requests fenced together share one transaction and its commit.
UPDATE provider_connections
SET refresh_lease_until = ?4,
    refresh_attempt_at = CASE WHEN refresh_attempt_fingerprint = ?5 THEN refresh_attempt_at ELSE ?3 END,
    refresh_attempt_fingerprint = ?5
WHERE id = ?1
  AND refresh_lease_owner = ?2
  AND refresh_lease_until > ?3
  AND status = 'active'
  AND encrypted_credentials = ?6
RETURNING id, refresh_attempt_at;

-- name: extend_lease
-- Heartbeat: push a live lease further out, only while this worker still holds it.
UPDATE provider_connections
SET refresh_lease_until = ?4
WHERE id = ?1 AND refresh_lease_owner = ?2 AND refresh_lease_until > ?3
RETURNING refresh_lease_until;

-- name: complete_refresh
-- Success: the new tokens, the next refresh time and the closed lease in one statement, applied
-- only while the row still holds the grant this refresh started from.
UPDATE provider_connections
SET encrypted_credentials = ?4,
    credentials_expire_at = ?5,
    updated_at = ?6,
    version = version + 1,
    refresh_lease_owner = CASE WHEN refresh_lease_owner = ?2 THEN NULL ELSE refresh_lease_owner END,
    refresh_lease_until = CASE WHEN refresh_lease_owner = ?2 THEN NULL ELSE refresh_lease_until END,
    refresh_failures = 0,
    next_refresh_at = ?7,
    last_refresh_error = NULL,
    refresh_attempt_at = NULL,
    refresh_attempt_fingerprint = NULL,
    refresh_attempt_lost = NULL,
    event_seq = event_seq + ?8
WHERE id = ?1 AND status = 'active' AND encrypted_credentials = ?3
RETURNING version AS value, event_seq AS last_seq, id AS connection_id, user_id, provider_slug, NULL AS from_status;

-- name: record_lost
-- A request was sent and its answer never came: keep the attempt on record, say how its answer
-- was lost, and hand the connection back for an immediate replay (no failure counted).
UPDATE provider_connections
SET refresh_lease_owner = NULL,
    refresh_lease_until = NULL,
    next_refresh_at = NULL,
    refresh_attempt_lost = ?3,
    last_refresh_error = ?4
WHERE id = ?1 AND refresh_lease_owner = ?2 AND refresh_attempt_at IS NOT NULL
RETURNING refresh_failures;

-- name: release_claims
-- Hand back leases that were never started (shutdown), leaving the schedule as it was.
UPDATE provider_connections
SET refresh_lease_owner = NULL, refresh_lease_until = NULL
WHERE refresh_lease_owner = ?2 AND hex(id) IN (SELECT value FROM json_each(?1));

-- name: refresh_backlog
-- Due connections (?3: below that many failures), whoever leases them, how many of them are
-- not leased right now, and the expiry of the most overdue one. Due: inside the horizon and
-- past its scheduled time (or waiting out a failure's backoff), or holding a lost answer.
SELECT count(*),
       coalesce(sum(refresh_lease_until IS NULL OR refresh_lease_until <= ?2), 0),
       min(CASE WHEN refresh_lease_until IS NULL OR refresh_lease_until <= ?2 THEN credentials_expire_at END)
FROM provider_connections
WHERE status = 'active'
  AND credential_type IN ('oauth2', 'link_token')
  AND (?3 IS NULL OR refresh_failures < ?3)
  AND (refresh_attempt_at IS NOT NULL
       OR (credentials_expire_at IS NOT NULL
           AND credentials_expire_at <= ?1
           AND (next_refresh_at IS NULL OR next_refresh_at <= ?2 OR refresh_failures > 0)));

-- name: open_circuits
-- Providers whose circuit is open now, and until when.
SELECT provider_slug, open_until
FROM provider_circuits
WHERE open_until > ?1;

-- name: circuit_failure
-- Count one more failure at a provider; failures older than the window (?3) start afresh.
INSERT INTO provider_circuits (provider_slug, failures, opened, open_until, last_error, updated_at)
VALUES (?1, 1, 0, NULL, ?4, ?2)
ON CONFLICT (provider_slug) DO UPDATE
SET failures = CASE WHEN provider_circuits.updated_at < ?3 THEN 1
                    ELSE provider_circuits.failures + 1 END,
    last_error = EXCLUDED.last_error,
    updated_at = EXCLUDED.updated_at
RETURNING failures, opened, open_until;

-- name: open_circuit
-- Open (or re-open) a provider's circuit, once however many workers decide it at the same time.
UPDATE provider_circuits
SET opened = opened + 1, open_until = ?2, failures = 0, updated_at = ?4
WHERE provider_slug = ?1 AND opened = ?3 AND (open_until IS NULL OR open_until <= ?4)
RETURNING open_until;

-- name: close_circuit
-- A success at the provider: it is healthy again.
UPDATE provider_circuits
SET failures = 0, opened = 0, open_until = NULL
WHERE provider_slug = ?1 AND (failures > 0 OR opened > 0)
RETURNING provider_slug;

-- name: connection_health
-- The refresh worker's record of each of these connections (?1, a JSON array of hex ids);
-- ?2 and ?3, the lowest and highest of them, keep the read to a range of the primary key.
SELECT id, refresh_failures, next_refresh_at, last_refresh_error
FROM provider_connections
WHERE id BETWEEN ?2 AND ?3
  AND hex(id) IN (SELECT value FROM json_each(?1));

-- name: find_sealed_outside
-- Rotation: connections whose credentials were not sealed under the key with this header.
SELECT id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version
FROM provider_connections
WHERE encrypted_credentials IS NOT NULL
  AND substr(encrypted_credentials, 1, length(?1)) <> ?1
  AND (?2 IS NULL OR id > ?2)
ORDER BY id
LIMIT ?3;

-- name: count_sealed_with
SELECT count(*)
FROM provider_connections
WHERE encrypted_credentials IS NOT NULL
  AND substr(encrypted_credentials, 1, length(?1)) = ?1;

-- name: claim_connection
-- Lease one ACTIVE connection for an immediate refresh, unless another worker holds it.
UPDATE provider_connections
SET refresh_lease_owner = ?2, refresh_lease_until = ?4
WHERE id = ?1
  AND status = 'active'
  AND (refresh_lease_until IS NULL OR refresh_lease_until <= ?3)
RETURNING id, user_id, provider_id, provider_slug, alias, status, status_reason, credential_type, encrypted_credentials, credentials_expire_at, connected_at, last_sync_at, created_at, updated_at, version, refresh_failures, refresh_attempt_at, refresh_attempt_fingerprint, refresh_attempt_lost;

-- name: put_state
INSERT INTO oauth_states
    (state_hash, connection_id, sealed_verifier, redirect_uri, return_to, created_at, expires_at, renews)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8);

-- name: take_state
-- Single use: the row is gone once read, whether or not it had expired.
DELETE FROM oauth_states
WHERE state_hash = ?1
RETURNING connection_id, sealed_verifier, redirect_uri, return_to, created_at, expires_at, renews;

-- name: purge_states
DELETE FROM oauth_states WHERE expires_at < ?1;

-- name: count_sealed_outside
-- Rotation: connections whose credentials start with none of these headers (hex, in a JSON
-- array), in one snapshot.
SELECT count(*)
FROM provider_connections
WHERE encrypted_credentials IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM json_each(?1) AS header
      WHERE hex(substr(encrypted_credentials, 1, length(header.value) / 2)) = header.value
  );

-- name: count_states_sealed_with
-- Pending authorizations whose PKCE verifier was sealed under the key with this header.
SELECT count(*)
FROM oauth_states
WHERE expires_at > ?2
  AND substr(sealed_verifier, 1, length(?1)) = ?1;

-- name: insert_event
INSERT INTO connection_events (id, connection_id, user_id, provider_slug, seq, type, from_status, to_status, reason, data, occurred_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11);

-- name: connection_events
-- One connection's events in their order, after sequence ?2.
SELECT position, id, connection_id, user_id, provider_slug, seq, type, from_status, to_status, reason, data, occurred_at, '0'
FROM connection_events
WHERE connection_id = ?1 AND seq > ?2
ORDER BY seq
LIMIT ?3;

-- name: events_after
-- The whole log after the cursor's position ?2 (one writer at a time: positions are handed
-- out in commit order; ?1, the transaction part of the cursor, is always '0' here).
SELECT position, id, connection_id, user_id, provider_slug, seq, type, from_status, to_status, reason, data, occurred_at, ?1
FROM connection_events
WHERE position > ?2
ORDER BY position
LIMIT ?3;

-- name: lapsed_authorizations
-- PENDING connections whose every authorization expired unanswered (valid up to and
-- including its expiry, as the callback takes it), as of ?1 (expired
-- authorizations are kept a day for this; see put_state).
SELECT DISTINCT s.connection_id
FROM oauth_states s
JOIN provider_connections c ON c.id = s.connection_id
WHERE s.expires_at < ?1
  AND c.status = 'pending'
  AND NOT EXISTS (
      SELECT 1 FROM oauth_states live
      WHERE live.connection_id = s.connection_id AND live.expires_at >= ?1)
LIMIT ?2;

-- name: webhook_insert_endpoint
INSERT INTO webhook_endpoints (id, url, event_types, sealed_secret, enabled, disabled_reason, created_at, updated_at)
VALUES (?1, ?2, ?3, ?4, 1, NULL, ?5, ?5);

-- name: webhook_endpoints
SELECT id, url, event_types, sealed_secret, enabled, disabled_reason, created_at, updated_at
FROM webhook_endpoints
ORDER BY created_at, id;

-- name: webhook_endpoint
SELECT id, url, event_types, sealed_secret, enabled, disabled_reason, created_at, updated_at
FROM webhook_endpoints
WHERE id = ?1;

-- name: webhook_delete_endpoint
DELETE FROM webhook_endpoints WHERE id = ?1 RETURNING id;

-- name: webhook_set_enabled
UPDATE webhook_endpoints
SET enabled = ?2, disabled_reason = ?3, updated_at = ?4
WHERE id = ?1
RETURNING id;

-- name: webhook_lock_cursor
-- Read inside a BEGIN IMMEDIATE transaction: the one writer holds it until the move.
SELECT cursor FROM webhook_fanout WHERE id = 1;

-- name: webhook_move_cursor
UPDATE webhook_fanout SET cursor = ?1 WHERE id = 1;

-- name: webhook_insert_delivery
INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, connection_id, seq, payload, next_attempt_at, created_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
ON CONFLICT (endpoint_id, event_id) DO NOTHING;

-- name: webhook_claim
-- See the PostgreSQL query; one writer at a time, so no row locks are needed.
UPDATE webhook_deliveries
SET lease_owner = ?3, lease_until = ?4
WHERE id IN (
    SELECT d.id
    FROM webhook_deliveries AS d
    JOIN webhook_endpoints AS e ON e.id = d.endpoint_id
    WHERE d.status = 'pending'
      AND e.enabled
      AND d.next_attempt_at <= ?1
      AND (d.lease_until IS NULL OR d.lease_until <= ?1)
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries AS p
          WHERE p.endpoint_id = d.endpoint_id
            AND p.connection_id = d.connection_id
            AND p.status = 'pending'
            AND p.seq < d.seq
      )
    ORDER BY d.next_attempt_at, d.seq
    LIMIT ?2
)
RETURNING id, endpoint_id, event_id, event_type, connection_id, seq, payload, status, attempts, next_attempt_at, last_status_code, last_error, created_at, delivered_at;

-- name: webhook_finish
UPDATE webhook_deliveries
SET status = ?3,
    attempts = ?4,
    next_attempt_at = ?5,
    last_status_code = ?6,
    last_error = ?7,
    delivered_at = CASE WHEN ?3 = 'delivered' THEN ?8 ELSE delivered_at END,
    lease_owner = NULL,
    lease_until = NULL
WHERE id = ?1 AND lease_owner = ?2
RETURNING endpoint_id;

-- name: webhook_insert_attempt
INSERT INTO webhook_attempts (id, delivery_id, attempted_at, status_code, error)
VALUES (?1, ?2, ?3, ?4, ?5);

-- name: webhook_deliveries
SELECT id, endpoint_id, event_id, event_type, connection_id, seq, payload, status, attempts, next_attempt_at, last_status_code, last_error, created_at, delivered_at
FROM webhook_deliveries
WHERE endpoint_id = ?1
ORDER BY id DESC
LIMIT ?2;

-- name: webhook_delivery
SELECT id, endpoint_id, event_id, event_type, connection_id, seq, payload, status, attempts, next_attempt_at, last_status_code, last_error, created_at, delivered_at
FROM webhook_deliveries
WHERE id = ?1;

-- name: webhook_attempts
SELECT id, delivery_id, attempted_at, status_code, error
FROM webhook_attempts
WHERE hex(delivery_id) IN (SELECT value FROM json_each(?1))
ORDER BY attempted_at, id;

-- name: webhook_replay
UPDATE webhook_deliveries
SET status = 'pending', attempts = 0, next_attempt_at = ?3, lease_owner = NULL, lease_until = NULL
WHERE endpoint_id = ?1 AND id = ?2
RETURNING id;

-- name: webhook_reseal
UPDATE webhook_endpoints SET sealed_secret = ?3 WHERE id = ?1 AND sealed_secret = ?2 RETURNING id;

-- name: consent_ending
-- ACTIVE connections at provider ?1 that consented at or before ?2 (their consent ends
-- within the warning's lead time) and were not warned of this consent yet, oldest first.
SELECT id, connected_at
FROM provider_connections
WHERE provider_slug = ?1
  AND status = 'active'
  AND connected_at <= ?2
  AND (consent_warned_for IS NULL OR consent_warned_for <> connected_at)
ORDER BY connected_at
LIMIT ?3;

-- name: warn_consent
-- Record the warning for the consent given at ?2, once, while it is still the current one.
UPDATE provider_connections
SET consent_warned_for = connected_at,
    event_seq = event_seq + ?3
WHERE id = ?1
  AND status = 'active'
  AND connected_at = ?2
  AND (consent_warned_for IS NULL OR consent_warned_for <> connected_at)
RETURNING id AS value, event_seq AS last_seq, id AS connection_id, user_id, provider_slug, NULL AS from_status;
