-- tenantsync master store, PostgreSQL schema, version 4: the audit log, server secrets and
-- tenant erasures. See the SQLite file of the same name for what each column means.
--
-- Appends to audit_log take a SHARE ROW EXCLUSIVE lock on it, so seqs (from the identity's
-- sequence, which is not transactional) become visible in order and a reader paging by seq
-- misses nothing.
CREATE TABLE audit_log (
    seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     bigint NOT NULL,
    actor  text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    detail text NOT NULL
);

CREATE TABLE secrets (
    name  text COLLATE "C" NOT NULL PRIMARY KEY,
    value bytea NOT NULL
);

-- apply reads its batch's tenants here; one that finds a running erasure takes a shared
-- advisory lock that finish_erasure takes exclusively (see postgres.rs).
CREATE TABLE tenant_erasures (
    tenant      text COLLATE "C" NOT NULL PRIMARY KEY,
    started_at  bigint NOT NULL,
    finished_at bigint,
    erased      bigint NOT NULL
);
CREATE INDEX running_erasures ON tenant_erasures (tenant) WHERE finished_at IS NULL;
