-- tenantsync master store, SQLite schema, version 9: sources, which read changes straight from
-- service databases (an outbox table, Debezium topics). Every instance sharing the store sees
-- the same definitions and claims. Deleting a source deletes its rows in every table below, in
-- one transaction.

-- A source's definition: JSON text that only the sources component reads. revision starts at 1
-- and rises by one whenever the text changes. updated_at is microseconds since the Unix epoch.
CREATE TABLE sources (
    name       TEXT    NOT NULL PRIMARY KEY,
    definition TEXT    NOT NULL,
    revision   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Which instance reads a shard of a source: one owner at a time. epoch rises by one every time
-- the claim is taken, which fences a holder that lost it (its renewals with the old epoch
-- fail). lease_until_ms is milliseconds since the Unix epoch, as the caller passes it
-- (-9223372036854775808 after a release). status is the holder's last report, JSON text kept
-- across claims.
CREATE TABLE source_shards (
    source         TEXT    NOT NULL,
    shard          INTEGER NOT NULL,
    owner          TEXT    NOT NULL,
    epoch          INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    status         TEXT,
    PRIMARY KEY (source, shard)
) WITHOUT ROWID;

-- Rows or events a source could not turn into changes, one per position in the source. id is
-- AUTOINCREMENT so that a number is never reused, even after the oldest rows were dropped: a
-- reader paging by id misses nothing. at is microseconds since the Unix epoch.
CREATE TABLE source_rejected (
    id       INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    source   TEXT    NOT NULL,
    position TEXT    NOT NULL,
    reason   TEXT    NOT NULL,
    at       INTEGER NOT NULL,
    UNIQUE (source, position)
);
-- Paging a source's rejections, and finding its oldest to drop.
CREATE INDEX source_rejected_by_source ON source_rejected (source, id);

-- How many rejections of a source were dropped to keep them bounded.
CREATE TABLE source_rejected_drops (
    source  TEXT    NOT NULL PRIMARY KEY,
    dropped INTEGER NOT NULL
) WITHOUT ROWID;
