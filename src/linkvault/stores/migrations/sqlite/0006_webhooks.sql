-- Webhook endpoints and their deliveries; see the PostgreSQL migration of the same number.
CREATE TABLE webhook_endpoints (
    id              BLOB PRIMARY KEY CHECK (length(id) = 16),
    url             TEXT NOT NULL,
    event_types     TEXT NOT NULL DEFAULT '[]',
    sealed_secret   BLOB NOT NULL,
    enabled         INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE webhook_fanout (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    cursor TEXT NOT NULL
);
INSERT INTO webhook_fanout (id, cursor) VALUES (1, '0.0');

CREATE TABLE webhook_deliveries (
    id               BLOB PRIMARY KEY CHECK (length(id) = 16),
    endpoint_id      BLOB NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         BLOB NOT NULL,
    event_type       TEXT NOT NULL,
    connection_id    BLOB NOT NULL,
    seq              INTEGER NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    lease_owner      TEXT,
    lease_until      INTEGER,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_chain_idx ON webhook_deliveries (endpoint_id, connection_id, seq)
    WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    id           BLOB PRIMARY KEY CHECK (length(id) = 16),
    delivery_id  BLOB NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, attempted_at);
