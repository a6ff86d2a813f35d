-- Event positions without AUTOINCREMENT: a plain INTEGER PRIMARY KEY is the rowid, handed
-- out as the largest position + 1, which is monotonic as long as the newest event is never
-- deleted (nothing deletes events; a future purge must keep the newest one). AUTOINCREMENT
-- also wrote the sqlite_sequence table on every insert, an extra b-tree page per save that
-- logs an event.
CREATE TABLE connection_events_new (
    position      INTEGER PRIMARY KEY,
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

INSERT INTO connection_events_new
    (position, id, connection_id, user_id, provider_slug, seq, type, from_status, to_status,
     reason, data, occurred_at)
SELECT position, id, connection_id, user_id, provider_slug, seq, type, from_status, to_status,
       reason, data, occurred_at
FROM connection_events;

DROP TABLE connection_events;

ALTER TABLE connection_events_new RENAME TO connection_events;
