-- The event log (a transactional outbox); see the PostgreSQL migration of the same number.
-- SQLite has one writer at a time, so positions are handed out in commit order.
ALTER TABLE provider_connections ADD COLUMN event_seq INTEGER NOT NULL DEFAULT 0;

CREATE TABLE connection_events (
    position      INTEGER PRIMARY KEY AUTOINCREMENT,
    id            BLOB NOT NULL CHECK (length(id) = 16),  -- uuid7, unique without an index
    connection_id BLOB NOT NULL CHECK (length(connection_id) = 16),
    user_id       BLOB NOT NULL CHECK (length(user_id) = 16),
    provider_slug TEXT NOT NULL,
    seq           INTEGER NOT NULL CHECK (seq > 0),
    type          TEXT NOT NULL,
    from_status   TEXT,
    to_status     TEXT,
    reason        TEXT,
    data          TEXT NOT NULL DEFAULT '{}',
    occurred_at   INTEGER NOT NULL,
    UNIQUE (connection_id, seq)
);
