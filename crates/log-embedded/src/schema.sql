-- Schema of the embedded log (DIR/log.sqlite3). Applied at every open; every statement is
-- idempotent. A change to a table needs a new `user_version` and a migration step in lib.rs.

-- One row per topic. `id` is what entries refer to, so a topic name is stored once.
CREATE TABLE IF NOT EXISTS topics (
    id                     INTEGER PRIMARY KEY,
    name                   TEXT    NOT NULL UNIQUE,
    partitions             INTEGER NOT NULL CHECK (partitions > 0),
    cleanup                TEXT    NOT NULL CHECK (cleanup IN ('delete', 'compact')),
    -- Only for cleanup = 'compact': how long a tombstone that is the last entry of its key is kept.
    tombstone_retention_ms INTEGER
) STRICT;

-- The next offset of every partition, written in the same transaction as the entries it
-- covers. Kept here rather than derived from MAX(offset) because compaction may delete the
-- last entries of a partition, and offsets must never be reused.
CREATE TABLE IF NOT EXISTS partitions (
    topic_id    INTEGER NOT NULL REFERENCES topics (id),
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition)
) STRICT, WITHOUT ROWID;

-- The entries. `value` NULL is a tombstone; `headers` NULL means none, otherwise the compact
-- binary encoding of codec.rs.
CREATE TABLE IF NOT EXISTS entries (
    topic_id     INTEGER NOT NULL,
    partition    INTEGER NOT NULL,
    offset       INTEGER NOT NULL,
    -- Before the blobs, so compaction's scans read it without walking a large value.
    timestamp_ms INTEGER NOT NULL,
    key          BLOB    NOT NULL,
    value        BLOB,
    headers      BLOB,
    PRIMARY KEY (topic_id, partition, offset)
) STRICT, WITHOUT ROWID;

-- Committed positions of consumer groups: the offset of the next entry the group wants.
CREATE TABLE IF NOT EXISTS group_offsets (
    group_name  TEXT    NOT NULL,
    topic_id    INTEGER NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_name, topic_id, partition)
) STRICT, WITHOUT ROWID;
