-- tenantsync master store, PostgreSQL schema, version 1.
--
-- Created in the first schema of the connection's search_path. Ids use COLLATE "C" so that
-- comparisons and ORDER BY are byte order of the UTF-8 encoding, as on SQLite. data is `json`,
-- not `jsonb`: json keeps the text exactly as written and accepts every string serde_json
-- produces, while jsonb rejects "\u0000" (a poison change would block its partition forever).

-- Declared datasets.
CREATE TABLE datasets (
    name       text COLLATE "C" NOT NULL PRIMARY KEY,
    partitions bigint NOT NULL
);

-- The current state of every record. data IS NULL marks a tombstone (a deleted record keeps
-- its version so that a later write continues above it).
CREATE TABLE records (
    dataset    text COLLATE "C" NOT NULL,
    tenant     text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    version    bigint NOT NULL,
    data       json,
    updated_at timestamptz NOT NULL,
    change_id  text COLLATE "C" NOT NULL,
    PRIMARY KEY (dataset, tenant, id)
);

-- The outcome of every change ever applied, keyed by its idempotency key. id is the record the
-- change addressed: a change id belongs to that one record, and a later change of another record
-- with the same id is rejected key_reused (and not stored here). status is one of
-- applied | unchanged | version_conflict | not_found; version is the resulting version for
-- applied and unchanged, the record's current version for the rejections.
CREATE TABLE applied_changes (
    dataset   text COLLATE "C" NOT NULL,
    tenant    text COLLATE "C" NOT NULL,
    change_id text COLLATE "C" NOT NULL,
    id        text COLLATE "C" NOT NULL,
    status    text NOT NULL,
    version   bigint NOT NULL,
    PRIMARY KEY (dataset, tenant, change_id)
);

-- Per changes-log partition: one past the last offset applied. Written in the same transaction
-- as the records it covers, and never decreased. apply locks this row (SELECT ... FOR UPDATE)
-- to serialise concurrent appliers of one partition.
CREATE TABLE positions (
    dataset     text COLLATE "C" NOT NULL,
    partition   bigint NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (dataset, partition)
);
