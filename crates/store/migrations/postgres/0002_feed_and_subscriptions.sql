-- tenantsync master store, PostgreSQL schema, version 2: the tenant change feed, tombstone
-- purging and subscriptions. See the SQLite file of the same name for what each column means.

-- seq: the changes-log offset of the change that last wrote the record; rows written by schema
-- version 1 get their rank within the tenant.
ALTER TABLE records ADD COLUMN seq bigint NOT NULL DEFAULT 0;
UPDATE records SET seq = ranked.r - 1
FROM (SELECT dataset, tenant, id,
             row_number() OVER (PARTITION BY dataset, tenant ORDER BY id) AS r
      FROM records) AS ranked
WHERE records.dataset = ranked.dataset AND records.tenant = ranked.tenant
  AND records.id = ranked.id;
CREATE INDEX records_by_seq ON records (dataset, tenant, seq);
CREATE INDEX tombstones_by_age ON records (dataset, updated_at) WHERE data IS NULL;

CREATE TABLE tenant_horizons (
    dataset       text COLLATE "C" NOT NULL,
    tenant        text COLLATE "C" NOT NULL,
    purged_below  bigint NOT NULL,
    version_floor bigint NOT NULL,
    PRIMARY KEY (dataset, tenant)
);

CREATE TABLE subscriptions (
    name       text COLLATE "C" NOT NULL PRIMARY KEY,
    datasets   text NOT NULL,
    tenants    text,
    created_at bigint NOT NULL
);

CREATE TABLE subscription_progress (
    name      text COLLATE "C" NOT NULL,
    dataset   text COLLATE "C" NOT NULL,
    tenant    text COLLATE "C" NOT NULL,
    next_seq  bigint NOT NULL,
    live_from bigint NOT NULL,
    acked_at  bigint NOT NULL,
    PRIMARY KEY (name, dataset, tenant)
);
