-- tenantsync master store, PostgreSQL schema, version 6: changes-log entries that could not be
-- decoded. See the SQLite file of the same name for what each column means.
--
-- Recording takes an advisory lock per dataset before it inserts, so ids (from the identity's
-- sequence, which is not transactional) become visible in order within a dataset and a reader
-- paging by id misses nothing. partition is bigint like positions.partition.
CREATE TABLE rejected_entries (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dataset   text COLLATE "C" NOT NULL,
    partition bigint NOT NULL,
    "offset"  bigint NOT NULL,
    reason    text NOT NULL,
    at        bigint NOT NULL,
    UNIQUE (dataset, partition, "offset")
);
CREATE INDEX rejected_entries_by_dataset ON rejected_entries (dataset, id);

CREATE TABLE rejected_drops (
    dataset         text COLLATE "C" NOT NULL,
    partition       bigint NOT NULL,
    dropped         bigint NOT NULL,
    dropped_through bigint NOT NULL,
    PRIMARY KEY (dataset, partition)
);
