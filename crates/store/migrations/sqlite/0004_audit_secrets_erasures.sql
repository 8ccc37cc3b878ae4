-- tenantsync master store, SQLite schema, version 4: the audit log, server secrets and tenant
-- erasures.

-- Admin actions, in append order. seq is AUTOINCREMENT so that a number is never reused, even
-- after the highest row is gone. at is microseconds since the Unix epoch; detail is a JSON
-- value as text (never a token's secret).
CREATE TABLE audit_log (
    seq    INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT    NOT NULL
);

-- Secrets the server makes once and every instance on this store shares (the HMAC key of
-- feed cursors). A row is written once and never replaced.
CREATE TABLE secrets (
    name  TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- The last erasure of each tenant ever erased. finished_at IS NULL while it runs: apply then
-- refuses the tenant's changes other than the erasure's own. started_at and finished_at are
-- microseconds since the Unix epoch; erased counts the records tombstoned so far (progress).
CREATE TABLE tenant_erasures (
    tenant      TEXT    NOT NULL PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    erased      INTEGER NOT NULL
) WITHOUT ROWID;
-- Every apply reads the running erasures; this keeps that read to the (usually empty) running
-- set however many tenants were erased before.
CREATE INDEX running_erasures ON tenant_erasures (tenant) WHERE finished_at IS NULL;
