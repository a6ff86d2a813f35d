-- Nothing to change in PostgreSQL: the SQLite migration of the same number drops
-- AUTOINCREMENT from its event positions. Kept so that a schema version means the same
-- step on both databases.
SELECT 1;
