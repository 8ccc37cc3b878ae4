-- tenantsync master store, SQLite schema, version 10: push targets, which deliver changes to
-- webhook endpoints and database sinks. Every instance sharing the store sees the same
-- definitions, claims and progress. kind is 'webhook' or 'sink'; the two kinds are separate
-- namespaces. Deleting a target deletes its rows in every table below but push_epochs, in one
-- transaction.

-- A target's definition: JSON text that only the push component reads. revision starts at 1
-- and rises by one whenever the text changes. created_at and updated_at are microseconds since
-- the Unix epoch.
CREATE TABLE push_targets (
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    definition TEXT    NOT NULL,
    revision   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;

-- Which instance delivers a target: one owner at a time. epoch rises by one every time the
-- claim is taken or fenced (a replay), which fences a holder that lost it: its renewals and
-- progress writes with the old epoch fail. lease_until_ms is milliseconds since the Unix epoch,
-- as the caller passes it (-9223372036854775808 after a release or a fence). status is the
-- holder's last report, JSON text kept across claims.
CREATE TABLE push_claims (
    kind           TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    owner          TEXT    NOT NULL,
    epoch          INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    status         TEXT,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;

-- The highest epoch a deleted target's claim had, kept after the delete: the first claim of a
-- target created again under the name continues above it, so that a holder of the deleted one
-- is fenced from the new one.
CREATE TABLE push_epochs (
    kind  TEXT    NOT NULL,
    name  TEXT    NOT NULL,
    epoch INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;

-- A target's position on one tenant of one dataset: everything before (next_seq, live_from)
-- was delivered. state is JSON text the push component keeps with it (the message being
-- retried), NULL when there is none. updated_at is microseconds since the Unix epoch.
CREATE TABLE push_progress (
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    dataset    TEXT    NOT NULL,
    tenant     TEXT    NOT NULL,
    next_seq   INTEGER NOT NULL,
    live_from  INTEGER NOT NULL,
    state      TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, name, dataset, tenant)
) WITHOUT ROWID;

-- A target's recent delivery attempts, bounded per target; id orders them by recording (the
-- newest has the highest). at is microseconds since the Unix epoch; status is the HTTP status
-- answered, if any; error is NULL for a success.
CREATE TABLE push_attempts (
    id         INTEGER NOT NULL PRIMARY KEY,
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    message    TEXT    NOT NULL,
    dataset    TEXT    NOT NULL,
    tenant     TEXT    NOT NULL,
    records    INTEGER NOT NULL,
    status     INTEGER,
    latency_ms INTEGER NOT NULL,
    error      TEXT
);
-- Listing a target's newest attempts, and finding its oldest to drop.
CREATE INDEX push_attempts_by_target ON push_attempts (kind, name, id);
