-- Webhook endpoints and their deliveries (issue 11). An endpoint's signing secret is sealed
-- with the key ring (the endpoint id as associated data), never kept in clear.
CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY,
    url             text NOT NULL,
    event_types     text[] NOT NULL DEFAULT '{}',  -- empty: every event
    sealed_secret   bytea NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    disabled_reason text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- Where the fan-out stands in the event log: one row, locked by the transaction that moves it
-- and inserts the deliveries of the events it passes, so no event is fanned out twice or skipped.
CREATE TABLE webhook_fanout (
    id     smallint PRIMARY KEY CHECK (id = 1),
    cursor text NOT NULL
);
INSERT INTO webhook_fanout (id, cursor) VALUES (1, '0.0');

-- One event for one endpoint. The payload is fixed at fan-out: every attempt sends the same
-- bytes under the same webhook-id (the event id).
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    connection_id    uuid NOT NULL,
    seq              bigint NOT NULL,
    payload          text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,  -- failed attempts since fan-out or replay
    next_attempt_at  timestamptz,
    lease_owner      text,
    lease_until      timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL,
    delivered_at     timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
-- The head of each (endpoint, connection) chain: sequence n+1 waits for n.
CREATE INDEX webhook_deliveries_chain_idx ON webhook_deliveries (endpoint_id, connection_id, seq)
    WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    id           uuid PRIMARY KEY,
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at timestamptz NOT NULL,
    status_code  integer,
    error        text
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, attempted_at);
