-- tenantsync master store, PostgreSQL schema, version 10: push targets. See the SQLite file of
-- the same name for what each column means.
--
-- The target's row in push_targets orders writes against a delete, which deletes that row
-- first: a claim locks it FOR KEY SHARE, recording attempts FOR NO KEY UPDATE and a replay
-- (replace_push_progress) FOR UPDATE, which also makes a replay and a claim wait for each
-- other. A progress write under a claim locks the claim's row FOR SHARE, so that a takeover or
-- a fence (which update it) and the write happen one after the other. Whoever comes second
-- waits for the first to commit. Names are compared and sorted byte by byte (COLLATE "C").
CREATE TABLE push_targets (
    kind       text COLLATE "C" NOT NULL,
    name       text COLLATE "C" NOT NULL,
    definition text NOT NULL,
    revision   bigint NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE push_claims (
    kind           text COLLATE "C" NOT NULL,
    name           text COLLATE "C" NOT NULL,
    owner          text COLLATE "C" NOT NULL,
    epoch          bigint NOT NULL,
    lease_until_ms bigint NOT NULL,
    status         text,
    PRIMARY KEY (kind, name)
);

CREATE TABLE push_epochs (
    kind  text COLLATE "C" NOT NULL,
    name  text COLLATE "C" NOT NULL,
    epoch bigint NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE push_progress (
    kind       text COLLATE "C" NOT NULL,
    name       text COLLATE "C" NOT NULL,
    dataset    text COLLATE "C" NOT NULL,
    tenant     text COLLATE "C" NOT NULL,
    next_seq   bigint NOT NULL,
    live_from  bigint NOT NULL,
    state      text,
    updated_at bigint NOT NULL,
    PRIMARY KEY (kind, name, dataset, tenant)
);

CREATE TABLE push_attempts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text COLLATE "C" NOT NULL,
    name       text COLLATE "C" NOT NULL,
    at         bigint NOT NULL,
    message    text NOT NULL,
    dataset    text COLLATE "C" NOT NULL,
    tenant     text COLLATE "C" NOT NULL,
    records    bigint NOT NULL,
    status     bigint,
    latency_ms bigint NOT NULL,
    error      text
);
CREATE INDEX push_attempts_by_target ON push_attempts (kind, name, id);
