-- tenantsync master store, SQLite schema, version 1.
--
-- Ids are TEXT with the default BINARY collation, so comparisons and ORDER BY are byte order
-- of the UTF-8 encoding. The tables are WITHOUT ROWID: every lookup is by primary key, and a
-- clustered primary key saves a second b-tree per write.

-- Declared datasets.
CREATE TABLE datasets (
    name       TEXT    NOT NULL PRIMARY KEY,
    partitions INTEGER NOT NULL
) WITHOUT ROWID;

-- The current state of every record. data IS NULL marks a tombstone (a deleted record keeps
-- its version so that a later write continues above it). updated_at is microseconds since the
-- Unix epoch; data is the record's JSON object as text.
CREATE TABLE records (
    dataset    TEXT    NOT NULL,
    tenant     TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    data       TEXT,
    updated_at INTEGER NOT NULL,
    change_id  TEXT    NOT NULL,
    PRIMARY KEY (dataset, tenant, id)
) WITHOUT ROWID;

-- The outcome of every change ever applied, keyed by its idempotency key. id is the record the
-- change addressed: a change id belongs to that one record, and a later change of another record
-- with the same id is rejected key_reused (and not stored here). status is one of
-- applied | unchanged | version_conflict | not_found; version is the resulting version for
-- applied and unchanged, the record's current version for the rejections.
CREATE TABLE applied_changes (
    dataset   TEXT    NOT NULL,
    tenant    TEXT    NOT NULL,
    change_id TEXT    NOT NULL,
    id        TEXT    NOT NULL,
    status    TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (dataset, tenant, change_id)
) WITHOUT ROWID;

-- Per changes-log partition: one past the last offset applied. Written in the same transaction
-- as the records it covers, and never decreased.
CREATE TABLE positions (
    dataset     TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (dataset, partition)
) WITHOUT ROWID;
