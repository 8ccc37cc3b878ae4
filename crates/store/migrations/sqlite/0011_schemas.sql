-- tenantsync master store, SQLite schema, version 11: data contracts. Schema versions per
-- dataset and format, each dataset's contract settings, and the store-wide registry row.

-- One version of a dataset's schema in one format ('json' or 'avro'). id is unique across the
-- table, taken from schema_registry.last_id; version counts from 1 per (dataset, format).
-- schema is the text as registered; created_at is microseconds since the Unix epoch.
CREATE TABLE schemas (
    id         INTEGER NOT NULL PRIMARY KEY,
    dataset    TEXT    NOT NULL,
    format     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    schema     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (dataset, format, version)
);

-- A dataset's contract settings; no row reads as the defaults (no mode of its own, no Avro).
-- compatibility is the schema crate's spelling of a mode; avro is 0 or 1.
CREATE TABLE contract_settings (
    dataset       TEXT    NOT NULL PRIMARY KEY,
    compatibility TEXT,
    avro          INTEGER NOT NULL
) WITHOUT ROWID;

-- Exactly one row. last_id is the highest schema id ever assigned (ids are never reused, so it
-- only rises); generation rises by one in the transaction of every new version and every
-- settings change, so that a cache can tell it is stale with one read;
-- default_compatibility is the store-wide mode, NULL when never set.
CREATE TABLE schema_registry (
    singleton             INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    last_id               INTEGER NOT NULL,
    generation            INTEGER NOT NULL,
    default_compatibility TEXT
);
INSERT INTO schema_registry (singleton, last_id, generation, default_compatibility)
VALUES (1, 0, 0, NULL);
