-- The event log (a transactional outbox): every status change and credential event of a
-- connection, written by the statement or transaction that makes the change.
-- event_seq on the connection is the sequence of its last event: the statement that writes
-- events bumps it under the row's lock, so one connection's events are numbered in the order
-- their changes committed. Events outlive their connection (no foreign key): the log keeps a
-- deleted connection's history, connection.deleted last.
ALTER TABLE provider_connections ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE connection_events (
    -- The writing transaction: readers of the whole log return only events of transactions
    -- older than every transaction still running, in (tx_id, position) order, so that an
    -- event committed late never lands behind a cursor that has already moved past it.
    tx_id         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    position      bigserial,
    id            uuid NOT NULL,  -- uuid7, made by linkvault: unique without an index
    connection_id uuid NOT NULL,
    user_id       uuid NOT NULL,
    provider_slug text NOT NULL,
    seq           bigint NOT NULL CHECK (seq > 0),
    type          text NOT NULL,
    from_status   text,
    to_status     text,
    reason        text,
    data          jsonb NOT NULL DEFAULT '{}',
    occurred_at   timestamptz NOT NULL,
    -- Two indexes only: each is written by every change that logs an event.
    PRIMARY KEY (tx_id, position),
    UNIQUE (connection_id, seq)
);
