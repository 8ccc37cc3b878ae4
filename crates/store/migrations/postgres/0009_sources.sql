-- tenantsync master store, PostgreSQL schema, version 9: sources. See the SQLite file of the
-- same name for what each column means.
--
-- A claim, and recording rejections, lock the source's row first (FOR KEY SHARE, FOR NO KEY
-- UPDATE), and deleting a source deletes that row first: a claim or recording racing a delete
-- either commits before the delete reads the other tables, or finds no source. Recording takes
-- the row lock before it inserts, so ids (from the identity's sequence, which is not
-- transactional) become visible in order within a source. shard is bigint like partitions
-- elsewhere. Names are compared and sorted byte by byte (COLLATE "C").
CREATE TABLE sources (
    name       text COLLATE "C" NOT NULL PRIMARY KEY,
    definition text NOT NULL,
    revision   bigint NOT NULL,
    updated_at bigint NOT NULL
);

CREATE TABLE source_shards (
    source         text COLLATE "C" NOT NULL,
    shard          bigint NOT NULL,
    owner          text COLLATE "C" NOT NULL,
    epoch          bigint NOT NULL,
    lease_until_ms bigint NOT NULL,
    status         text,
    PRIMARY KEY (source, shard)
);

CREATE TABLE source_rejected (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source   text COLLATE "C" NOT NULL,
    position text COLLATE "C" NOT NULL,
    reason   text NOT NULL,
    at       bigint NOT NULL,
    UNIQUE (source, position)
);
CREATE INDEX source_rejected_by_source ON source_rejected (source, id);

CREATE TABLE source_rejected_drops (
    source  text COLLATE "C" NOT NULL PRIMARY KEY,
    dropped bigint NOT NULL
);
