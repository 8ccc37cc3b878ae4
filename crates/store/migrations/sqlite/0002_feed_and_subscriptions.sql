-- tenantsync master store, SQLite schema, version 2: the tenant change feed, tombstone purging
-- and subscriptions.

-- seq: the changes-log offset of the change that last wrote the record. A tenant's records all
-- come from one partition, applied in offset order, so within a tenant a later write always has
-- a higher seq: reading a tenant's records by seq is reading its history in order, keeping only
-- each key's latest state. Records written by schema version 1 get their rank within the tenant
-- (0, 1, ...): distinct, and below the offset of any change applied later (the partition had
-- applied at least that many changes).
ALTER TABLE records ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE records SET seq = ranked.r - 1
FROM (SELECT dataset, tenant, id,
             row_number() OVER (PARTITION BY dataset, tenant ORDER BY id) AS r
      FROM records) AS ranked
WHERE records.dataset = ranked.dataset AND records.tenant = ranked.tenant
  AND records.id = ranked.id;
CREATE INDEX records_by_seq ON records (dataset, tenant, seq);
-- Tombstones by age, for purging those past retention.
CREATE INDEX tombstones_by_age ON records (dataset, updated_at) WHERE data IS NULL;

-- Per tenant, what purging tombstones took away: purged_below is one past the highest seq of a
-- purged tombstone (a feed cursor below it may have missed a delete), version_floor the highest
-- version purged (a key created later starts above it, so versions never go down).
CREATE TABLE tenant_horizons (
    dataset       TEXT    NOT NULL,
    tenant        TEXT    NOT NULL,
    purged_below  INTEGER NOT NULL,
    version_floor INTEGER NOT NULL,
    PRIMARY KEY (dataset, tenant)
) WITHOUT ROWID;

-- Named subscriptions. datasets is a JSON array of dataset names; tenants a JSON array of
-- tenant ids, or NULL for every tenant. created_at (microseconds) tells a subscription from an
-- earlier one of the same name: cursors carry it.
CREATE TABLE subscriptions (
    name       TEXT    NOT NULL PRIMARY KEY,
    datasets   TEXT    NOT NULL,
    tenants    TEXT,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- What a subscription acknowledged, per dataset and tenant: a feed position (see the feed).
CREATE TABLE subscription_progress (
    name      TEXT    NOT NULL,
    dataset   TEXT    NOT NULL,
    tenant    TEXT    NOT NULL,
    next_seq  INTEGER NOT NULL,
    live_from INTEGER NOT NULL,
    acked_at  INTEGER NOT NULL,
    PRIMARY KEY (name, dataset, tenant)
) WITHOUT ROWID;
