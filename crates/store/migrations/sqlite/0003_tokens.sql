-- tenantsync master store, SQLite schema, version 3: API tokens.
--
-- A token is stored only as the hex SHA-256 of its text (hash), never the text itself. scopes is
-- a JSON array of scope strings (admin, read:DATASET:TENANT, write:DATASET:TENANT, * for all);
-- created_at is microseconds since the Unix epoch. Revoking a token deletes its row.
CREATE TABLE tokens (
    name       TEXT NOT NULL PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    scopes     TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
