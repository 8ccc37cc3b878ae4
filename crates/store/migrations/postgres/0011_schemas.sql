-- tenantsync master store, PostgreSQL schema, version 11: data contracts. See the SQLite file
-- of the same name for what each column means.
--
-- Every write of this concern (a new version, a settings change) locks the one row of
-- schema_registry first (FOR UPDATE, or the UPDATE that raises the generation): registrations
-- happen one after the other store-wide, so a version's compare-and-set reads the latest
-- version under the lock, and ids (taken from last_id under it) rise in commit order. Names
-- are compared and sorted byte by byte (COLLATE "C").
CREATE TABLE schemas (
    id         bigint NOT NULL PRIMARY KEY,
    dataset    text COLLATE "C" NOT NULL,
    format     text COLLATE "C" NOT NULL,
    version    bigint NOT NULL,
    schema     text NOT NULL,
    created_at bigint NOT NULL,
    UNIQUE (dataset, format, version)
);

CREATE TABLE contract_settings (
    dataset       text COLLATE "C" NOT NULL PRIMARY KEY,
    compatibility text,
    avro          boolean NOT NULL
);

CREATE TABLE schema_registry (
    singleton             boolean NOT NULL PRIMARY KEY CHECK (singleton),
    last_id               bigint NOT NULL,
    generation            bigint NOT NULL,
    default_compatibility text
);
INSERT INTO schema_registry (singleton, last_id, generation, default_compatibility)
VALUES (true, 0, 0, NULL);
