-- tenantsync master store, SQLite schema, version 6: changes-log entries that could not be
-- decoded, kept so that an admin can see what was skipped and why.

-- One row per entry skipped. id is AUTOINCREMENT so that a number is never reused, even after
-- the oldest rows were dropped: a reader paging by id misses nothing. at is microseconds since
-- the Unix epoch.
CREATE TABLE rejected_entries (
    id        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    dataset   TEXT    NOT NULL,
    partition INTEGER NOT NULL,
    "offset"  INTEGER NOT NULL,
    reason    TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    UNIQUE (dataset, partition, "offset")
);
-- Paging a dataset's entries, and finding its oldest to drop.
CREATE INDEX rejected_entries_by_dataset ON rejected_entries (dataset, id);

-- What was dropped to keep a dataset's entries bounded, per partition: how many entries, and
-- the highest offset dropped (recording an entry at or below it again changes nothing).
CREATE TABLE rejected_drops (
    dataset         TEXT    NOT NULL,
    partition       INTEGER NOT NULL,
    dropped         INTEGER NOT NULL,
    dropped_through INTEGER NOT NULL,
    PRIMARY KEY (dataset, partition)
) WITHOUT ROWID;
