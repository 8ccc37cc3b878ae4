-- tenantsync master store, PostgreSQL schema, version 5: the batcher's claim and the HTTP batch
-- queue. See the SQLite file of the same name for what each column means.
--
-- Claims and queue moves are single conditional statements (compare-and-set on epoch or
-- next_offset), and retaking an expired lease locks it with FOR UPDATE SKIP LOCKED, so racing
-- instances never take the same thing twice (see postgres.rs). partition is bigint like
-- positions.partition.
CREATE TABLE batchers (
    dataset        text COLLATE "C" NOT NULL PRIMARY KEY,
    owner          text COLLATE "C" NOT NULL,
    epoch          bigint NOT NULL,
    lease_until_ms bigint NOT NULL,
    checkpoint     bytea
);

CREATE TABLE batch_dispatch (
    dataset     text COLLATE "C" NOT NULL,
    partition   bigint NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (dataset, partition)
);

CREATE TABLE batch_leases (
    dataset       text COLLATE "C" NOT NULL,
    batch_id      text COLLATE "C" NOT NULL,
    partition     bigint NOT NULL,
    "offset"      bigint NOT NULL,
    expires_at_ms bigint NOT NULL,
    PRIMARY KEY (dataset, batch_id)
);
CREATE INDEX batch_leases_by_expiry ON batch_leases (dataset, expires_at_ms);
