-- tenantsync master store, SQLite schema, version 5: the batcher's claim and the HTTP batch
-- queue.
--
-- Times are milliseconds since the Unix epoch, as the caller passes them (the store reads no
-- clock for these tables).

-- Which batcher turns a dataset's state log into batches: one owner at a time. epoch rises by
-- one every time the claim is taken, which fences a batcher that lost it (its renewals with the
-- old epoch fail). checkpoint is the batcher's own opaque progress, kept across claims.
CREATE TABLE batchers (
    dataset        TEXT    NOT NULL PRIMARY KEY,
    owner          TEXT    NOT NULL,
    epoch          INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    checkpoint     BLOB
) WITHOUT ROWID;

-- The HTTP queue's position per partition of a dataset's batches log: the next offset not yet
-- handed out. A missing row means 0.
CREATE TABLE batch_dispatch (
    dataset     TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (dataset, partition)
) WITHOUT ROWID;

-- Batches handed out and not yet acknowledged, with where each sits in the batches log. A lease
-- whose expires_at_ms has passed may be retaken by another worker; acknowledging deletes it.
CREATE TABLE batch_leases (
    dataset       TEXT    NOT NULL,
    batch_id      TEXT    NOT NULL,
    partition     INTEGER NOT NULL,
    "offset"      INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (dataset, batch_id)
) WITHOUT ROWID;
-- Finding the earliest expired lease of a dataset reads only the expired ones.
CREATE INDEX batch_leases_by_expiry ON batch_leases (dataset, expires_at_ms);
