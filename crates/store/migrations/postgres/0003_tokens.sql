-- tenantsync master store, PostgreSQL schema, version 3: API tokens.
--
-- A token is stored only as the hex SHA-256 of its text (hash), never the text itself. scopes is
-- a JSON array of scope strings (admin, read:DATASET:TENANT, write:DATASET:TENANT, * for all);
-- created_at is microseconds since the Unix epoch. Revoking a token deletes its row.
CREATE TABLE tokens (
    name       text COLLATE "C" NOT NULL PRIMARY KEY,
    hash       text COLLATE "C" NOT NULL UNIQUE,
    scopes     text NOT NULL,
    created_at bigint NOT NULL
);
