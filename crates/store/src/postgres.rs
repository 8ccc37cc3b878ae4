//! The PostgreSQL backend, for deployments that outgrow one machine or already run PostgreSQL.
//!
//! Connections come from a deadpool pool; tables live in the first schema of the URL's
//! `search_path` (`?options=-csearch_path%3Dmy_schema`), so several stores can share a database.
//! `apply` locks the partition's position row (`SELECT ... FOR UPDATE`) before reading anything,
//! which serialises concurrent appliers of one partition: the second one waits, then reads the
//! advanced position and the first one's outcomes, and applies nothing twice. Each batch costs a
//! handful of round trips whatever its size: statements are pipelined, and records and outcomes
//! are loaded and written with one array-parameter (`unnest`) statement each. Version floors are
//! loaded in a statement of their own after the records (READ COMMITTED gives it a later
//! snapshot), so a tombstone purged meanwhile is seen either as a row or as its floor.
//!
//! The feed reads a tenant's end and its records in one statement (one snapshot) and its horizon
//! in the next; purging deletes tombstones and raises their tenants' horizons in one statement.
//! An `ack` takes a share lock on its subscription's row and deleting a subscription deletes the
//! row before its progress, so an ack racing a delete never leaves progress behind.
//!
//! A batch reads which of its tenants are being erased right after the position lock; one that
//! finds some takes a shared advisory lock (the erasure gate) that `finish_erasure` takes
//! exclusively, so a finish never commits under a batch that saw its erasure running. Audit
//! appends lock the audit table against each other, so seqs become visible in order.
//!
//! Batcher claims and the batch queue are single statements that compare and set: a claim is
//! an upsert whose `WHERE` only lets a free claim (or its own owner's) be taken, a renewal an
//! update on the epoch, a queue move an update (or, from position 0, an upsert) on the
//! position with the lease inserted by the same statement. Racers wait on the row lock and
//! re-check the condition on the winner's version, so exactly one wins. Retaking an expired
//! lease picks it with `FOR UPDATE SKIP LOCKED`, so racing retakers take different leases.
//!
//! This module must never decide what a change does itself: that is [`crate::apply`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tenantsync_core::{
    ChangeId, DatasetName, EntityId, Record, SubscriptionName, TenantId, TokenName,
};
use tokio_postgres::NoTls;
use tokio_postgres::Row;
use tracing::info;

use crate::apply;
use crate::migrations::{self, Migration};
use crate::rows::{self, RecordRow};
use crate::{
    Applied, AuditEntry, BatchLease, BatcherClaim, Dataset, Erasure, FeedRecord, LoggedChange,
    MasterStore, Offset, Progress, StoreError, StoredOutcome, StoredToken, Subscription,
    TenantFeed,
};

const POOL_SIZE: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a pooled connection before giving up with a (transient) error.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// Serialises migrations across processes; per schema, so stores in different schemas of one
/// database do not wait for each other.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(\
     hashtext('tenantsync-store-migrations:' || coalesce(current_schema(), '')))";

const INSERT_POSITION: &str = "INSERT INTO positions (dataset, partition, next_offset) \
     VALUES ($1, $2, 0) ON CONFLICT DO NOTHING";
const LOCK_POSITION: &str = "SELECT next_offset FROM positions \
     WHERE dataset = $1 AND partition = $2 FOR UPDATE";
const UPDATE_POSITION: &str = "UPDATE positions SET next_offset = GREATEST(next_offset, $3) \
     WHERE dataset = $1 AND partition = $2";
const SELECT_POSITION: &str =
    "SELECT next_offset FROM positions WHERE dataset = $1 AND partition = $2";
/// `slot` (1-based) says which of the asked-for keys a row answers. The LATERAL ... LIMIT 1
/// keeps the plan one primary-key probe per key: left to itself the planner may pick a merge join
/// that reads the whole index on every batch, which gets slower as the table grows.
const LOAD_RECORDS: &str = "SELECT r.tenant, r.id, r.version, r.data::text, r.updated_at, \
     r.change_id, k.slot \
     FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(tenant, id, slot) \
     CROSS JOIN LATERAL (SELECT * FROM records \
       WHERE dataset = $1 AND tenant = k.tenant AND id = k.id LIMIT 1) r";
const LOAD_OUTCOMES: &str = "SELECT a.id, a.status, a.version, k.slot \
     FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(tenant, change_id, slot) \
     CROSS JOIN LATERAL (SELECT id, status, version FROM applied_changes \
       WHERE dataset = $1 AND tenant = k.tenant AND change_id = k.change_id LIMIT 1) a";
/// Which of the batch's tenants are being erased. Run right after the position lock and before
/// the loads; for almost every batch it finds nothing and that is all. When it finds some, the
/// batch takes [`ERASURE_GATE_SHARED`] and reads them again: see there.
const LOAD_ERASING: &str = "SELECT tenant FROM tenant_erasures \
     WHERE tenant = ANY($1::text[]) AND finished_at IS NULL";
/// Keeps `finish_erasure` (which takes the gate exclusively, first) from committing while a
/// batch that saw an erasure running is still writing; otherwise the refusals that batch stores
/// would outlive the erasure. A batch that takes the gate reads the running erasures again
/// after it: if a finish committed in between, that read (and the loads, read again) see it.
/// A lock rather than row locks on `tenant_erasures`: PostgreSQL queues a shared request
/// behind a waiting exclusive one, so a busy tenant's batches cannot starve the finish. One
/// gate per schema; only batches of tenants being erased take it.
const ERASURE_GATE_SHARED: &str = "SELECT pg_advisory_xact_lock_shared(\
     hashtext('tenantsync-store-erasures:' || coalesce(current_schema(), '')))";
const ERASURE_GATE: &str = "SELECT pg_advisory_xact_lock(\
     hashtext('tenantsync-store-erasures:' || coalesce(current_schema(), '')))";
/// Run after [`LOAD_RECORDS`], as a statement of its own: see [`crate::apply::plan_batch`].
const LOAD_FLOORS: &str = "SELECT tenant, version_floor FROM tenant_horizons \
     WHERE dataset = $1 AND tenant = ANY($2::text[])";
const WRITE_RECORDS: &str = "INSERT INTO records \
     (dataset, tenant, id, version, data, updated_at, change_id, seq) \
     SELECT $1, t, i, v, d::json, u, c, s \
     FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::timestamptz[], $7::text[], \
       $8::int8[]) AS x(t, i, v, d, u, c, s) \
     ON CONFLICT (dataset, tenant, id) DO UPDATE SET version = excluded.version, \
     data = excluded.data, updated_at = excluded.updated_at, change_id = excluded.change_id, \
     seq = excluded.seq";
/// A plain insert: under the position lock an outcome can only exist already if the same tenant
/// was applied through two partitions, and then failing (and retrying) beats applying twice.
const WRITE_OUTCOMES: &str = "INSERT INTO applied_changes \
     (dataset, tenant, change_id, id, status, version) \
     SELECT $1, t, c, i, s, v \
     FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[]) \
       AS x(t, c, i, s, v)";
const SELECT_RECORD: &str = "SELECT tenant, id, version, data::text, updated_at, change_id \
     FROM records WHERE dataset = $1 AND tenant = $2 AND id = $3";
const SELECT_OUTCOME: &str = "SELECT id, status, version FROM applied_changes \
     WHERE dataset = $1 AND tenant = $2 AND change_id = $3";
const SCAN_FIRST: &str = "SELECT tenant, id, version, data::text, updated_at, change_id \
     FROM records WHERE dataset = $1 AND tenant = $2 ORDER BY id LIMIT $3";
const SCAN_AFTER: &str = "SELECT tenant, id, version, data::text, updated_at, change_id \
     FROM records WHERE dataset = $1 AND tenant = $2 AND id > $3 ORDER BY id LIMIT $4";
/// The tenant's end and a page of its feed in one statement, so both come from one snapshot
/// (the end is never below a seq on the page). Always one row at least: with no records on the
/// page, a single row whose record columns are NULL carries the end. `$4` is `live_from`, NULL
/// for the end.
const SELECT_FEED: &str = "WITH e AS MATERIALIZED (SELECT GREATEST(\
       coalesce((SELECT max(seq) + 1 FROM records WHERE dataset = $1 AND tenant = $2), 0), \
       coalesce((SELECT purged_below FROM tenant_horizons WHERE dataset = $1 AND tenant = $2), 0)\
     )::int8 AS end_seq) \
     SELECT e.end_seq, r.tenant, r.id, r.version, r.data::text, r.updated_at, r.change_id, r.seq \
     FROM e LEFT JOIN LATERAL (SELECT * FROM records \
       WHERE dataset = $1 AND tenant = $2 AND seq >= $3 \
         AND (data IS NOT NULL OR seq >= coalesce($4::int8, e.end_seq)) \
       ORDER BY seq LIMIT $5) r ON true \
     ORDER BY r.seq";
/// Run after [`SELECT_FEED`], as a statement of its own, so it sees any purge that took rows
/// away from the page.
const SELECT_HORIZON: &str =
    "SELECT purged_below FROM tenant_horizons WHERE dataset = $1 AND tenant = $2";
/// The distinct tenants are found by skipping through the `(dataset, tenant, seq)` index, one
/// probe per tenant (a plain GROUP BY would read every record of the dataset), and each
/// tenant's highest seq with one more probe.
const TENANT_ENDS: &str = "WITH RECURSIVE t(tenant) AS (\
       (SELECT tenant FROM records WHERE dataset = $1 ORDER BY tenant LIMIT 1) \
       UNION ALL \
       SELECT (SELECT r.tenant FROM records r WHERE r.dataset = $1 AND r.tenant > t.tenant \
               ORDER BY r.tenant LIMIT 1) \
       FROM t WHERE t.tenant IS NOT NULL), \
     ends(tenant, end_seq) AS (\
       SELECT t.tenant, (SELECT max(r.seq) + 1 FROM records r \
                         WHERE r.dataset = $1 AND r.tenant = t.tenant) \
       FROM t WHERE t.tenant IS NOT NULL \
       UNION ALL \
       SELECT tenant, purged_below FROM tenant_horizons WHERE dataset = $1) \
     SELECT tenant, max(end_seq)::int8 FROM ends GROUP BY tenant ORDER BY tenant";
/// One statement, so one transaction: the tombstones go and their tenants' horizons and version
/// floors rise together (horizon rows upserted in tenant order, so concurrent purges lock them
/// alike). The outer `data IS NULL AND updated_at < $2` is checked again on a row a concurrent
/// apply rewrote while this waited for its lock, so a recreated record survives.
const PURGE_TOMBSTONES: &str = "WITH gone AS (\
       DELETE FROM records WHERE (dataset, tenant, id) IN (\
         SELECT dataset, tenant, id FROM records \
         WHERE dataset = $1 AND data IS NULL AND updated_at < $2 \
         ORDER BY updated_at LIMIT $3) \
       AND data IS NULL AND updated_at < $2 \
       RETURNING tenant, seq, version), \
     per_tenant AS (\
       SELECT tenant, max(seq) + 1 AS purged_below, max(version) AS version_floor, \
              count(*) AS n \
       FROM gone GROUP BY tenant), \
     raised AS (\
       INSERT INTO tenant_horizons (dataset, tenant, purged_below, version_floor) \
       SELECT $1, tenant, purged_below, version_floor FROM per_tenant \
       ORDER BY tenant \
       ON CONFLICT (dataset, tenant) DO UPDATE SET \
         purged_below = GREATEST(tenant_horizons.purged_below, excluded.purged_below), \
         version_floor = GREATEST(tenant_horizons.version_floor, excluded.version_floor)) \
     SELECT coalesce(sum(n), 0)::int8 FROM per_tenant";
/// `xmax = 0` holds for a row this statement inserted, not for one it updated: it tells a
/// creation from an update in one statement, race-free.
const PUT_SUBSCRIPTION: &str = "INSERT INTO subscriptions (name, datasets, tenants, created_at) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (name) DO UPDATE SET datasets = excluded.datasets, tenants = excluded.tenants \
     RETURNING name, datasets, tenants, created_at, xmax = 0";
const SELECT_SUBSCRIPTION: &str =
    "SELECT name, datasets, tenants, created_at FROM subscriptions WHERE name = $1";
const SELECT_SUBSCRIPTIONS: &str =
    "SELECT name, datasets, tenants, created_at FROM subscriptions ORDER BY name";
/// First of the two statements of a delete: it takes the row lock an `ack` waits for.
const DELETE_SUBSCRIPTION: &str = "DELETE FROM subscriptions WHERE name = $1";
/// Second, with a snapshot taken after the first got its lock: it sees every progress row an
/// ack committed before.
const DELETE_PROGRESS: &str = "DELETE FROM subscription_progress WHERE name = $1";
const SELECT_PROGRESS: &str = "SELECT dataset, tenant, next_seq, live_from, acked_at \
     FROM subscription_progress WHERE name = $1 ORDER BY dataset, tenant";
/// Writes only if the subscription exists with this `created_at`; `FOR SHARE` makes a
/// concurrent delete either wait for this ack (and then delete its row) or win (and this one
/// writes nothing).
const ACK: &str = "INSERT INTO subscription_progress \
     (name, dataset, tenant, next_seq, live_from, acked_at) \
     SELECT name, $3, $4, $5, $6, $7 FROM subscriptions \
     WHERE name = $1 AND created_at = $2 FOR SHARE \
     ON CONFLICT (name, dataset, tenant) DO UPDATE SET next_seq = excluded.next_seq, \
     live_from = excluded.live_from, acked_at = excluded.acked_at";
/// Serialises appends (not reads): an identity's values are handed out outside transactions, so
/// without it a reader could see seq 8 committed before seq 7 and page past 7 for good.
const LOCK_AUDIT: &str = "LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE";
const APPEND_AUDIT: &str = "INSERT INTO audit_log (at, actor, action, target, detail) \
     VALUES ($1, $2, $3, $4, $5) RETURNING seq";
const SELECT_AUDIT: &str = "SELECT seq, at, actor, action, target, detail FROM audit_log \
     WHERE seq > $1 ORDER BY seq LIMIT $2";
/// Inserts or, for an existing secret, returns the stored value in one statement: a racer's
/// insert waits for the first one's commit and then returns its value.
const SECRET: &str = "INSERT INTO secrets (name, value) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING value";
const SELECT_ERASURE: &str =
    "SELECT tenant, started_at, finished_at, erased FROM tenant_erasures WHERE tenant = $1";
const INSERT_ERASURE: &str = "INSERT INTO tenant_erasures (tenant, started_at, finished_at, erased) \
     VALUES ($1, $2, NULL, 0) ON CONFLICT (tenant) DO NOTHING \
     RETURNING tenant, started_at, finished_at, erased";
/// Serialises a start with other starts and with finishes of the same tenant.
const LOCK_ERASURE: &str = "SELECT tenant, started_at, finished_at, erased FROM tenant_erasures \
     WHERE tenant = $1 FOR NO KEY UPDATE";
const RESTART_ERASURE: &str = "UPDATE tenant_erasures \
     SET started_at = $2, finished_at = NULL, erased = 0 WHERE tenant = $1 \
     RETURNING tenant, started_at, finished_at, erased";
const RUNNING_ERASURES: &str = "SELECT tenant, started_at, finished_at, erased \
     FROM tenant_erasures WHERE finished_at IS NULL ORDER BY tenant";
const ERASURE_PROGRESS: &str = "UPDATE tenant_erasures SET erased = $2 \
     WHERE tenant = $1 AND finished_at IS NULL";
/// Run after [`ERASURE_GATE`].
const LOCK_RUNNING_ERASURE: &str = "SELECT 1 FROM tenant_erasures \
     WHERE tenant = $1 AND finished_at IS NULL FOR UPDATE";
/// Every dataset that can hold records or outcomes: `apply` writes a dataset's position row in
/// the transaction of its first batch, so this covers datasets never declared too. Each is then
/// one probe of the records' primary key, not a scan of every tenant.
const COUNT_LIVE: &str = "SELECT count(*)::int8 FROM records WHERE dataset IN \
     (SELECT dataset FROM positions UNION SELECT name FROM datasets) \
     AND tenant = $1 AND data IS NOT NULL";
/// One statement: the tenant's records go, its horizons and version floors rise as a purge
/// raises them (one past the highest seq deleted is the tenant's end), its outcomes go and the
/// erasure is finished.
const FINISH_ERASURE: &str = "WITH ds AS (\
       SELECT dataset FROM positions UNION SELECT name FROM datasets), \
     gone AS (\
       DELETE FROM records WHERE dataset IN (SELECT dataset FROM ds) AND tenant = $1 \
       RETURNING dataset, seq, version), \
     per_dataset AS (\
       SELECT dataset, max(seq) + 1 AS purged_below, max(version) AS version_floor \
       FROM gone GROUP BY dataset), \
     raised AS (\
       INSERT INTO tenant_horizons (dataset, tenant, purged_below, version_floor) \
       SELECT dataset, $1, purged_below, version_floor FROM per_dataset \
       ORDER BY dataset \
       ON CONFLICT (dataset, tenant) DO UPDATE SET \
         purged_below = GREATEST(tenant_horizons.purged_below, excluded.purged_below), \
         version_floor = GREATEST(tenant_horizons.version_floor, excluded.version_floor)), \
     forgotten AS (\
       DELETE FROM applied_changes WHERE dataset IN (SELECT dataset FROM ds) AND tenant = $1) \
     UPDATE tenant_erasures SET finished_at = $2 WHERE tenant = $1";
/// Takes the claim when there is none, when its lease expired (`$4` is now) or when it is the
/// same owner's. A racer's insert waits for the first one's commit, then its `WHERE` is checked
/// against the committed claim: it finds a live lease of another owner and returns no row.
const CLAIM_BATCHER: &str = "INSERT INTO batchers \
     (dataset, owner, epoch, lease_until_ms, checkpoint) VALUES ($1, $2, 1, $3, NULL) \
     ON CONFLICT (dataset) DO UPDATE SET owner = excluded.owner, epoch = batchers.epoch + 1, \
     lease_until_ms = excluded.lease_until_ms \
     WHERE batchers.lease_until_ms <= $4 OR batchers.owner = excluded.owner \
     RETURNING epoch, checkpoint";
const RENEW_BATCHER: &str = "UPDATE batchers \
     SET lease_until_ms = $3, checkpoint = coalesce($4::bytea, checkpoint) \
     WHERE dataset = $1 AND epoch = $2";
const SELECT_DISPATCH: &str = "SELECT partition, next_offset FROM batch_dispatch \
     WHERE dataset = $1 ORDER BY partition";
/// `claim_batch` from position 0 (`$3` is 0), which may have no row yet: the insert creates it,
/// a racer's insert waits for that commit and then finds the position moved. The lease is inserted only
/// when the position moved (`moved` has a row), in the same statement.
const CLAIM_FIRST_BATCH: &str = "WITH moved AS (\
       INSERT INTO batch_dispatch (dataset, partition, next_offset) VALUES ($1, $2, $5) \
       ON CONFLICT (dataset, partition) DO UPDATE SET next_offset = excluded.next_offset \
       WHERE batch_dispatch.next_offset = $3 \
       RETURNING 1) \
     INSERT INTO batch_leases (dataset, batch_id, partition, \"offset\", expires_at_ms) \
     SELECT $1::text, $6::text, $2::int8, $4::int8, $7::int8 FROM moved";
/// `claim_batch` from a position above 0: a missing row is position 0, so not `$3`, and nothing
/// moves. A racer's update waits on the row lock, then re-checks `next_offset = $3` on the
/// winner's version and matches nothing.
const CLAIM_NEXT_BATCH: &str = "WITH moved AS (\
       UPDATE batch_dispatch SET next_offset = $5 \
       WHERE dataset = $1 AND partition = $2 AND next_offset = $3 \
       RETURNING 1) \
     INSERT INTO batch_leases (dataset, batch_id, partition, \"offset\", expires_at_ms) \
     SELECT $1::text, $6::text, $2::int8, $4::int8, $7::int8 FROM moved";
/// SKIP LOCKED: a racer passes over the lease another one is retaking and takes the next. One
/// that read a lease before another's retake committed re-checks `expires_at_ms <= $2` on the
/// new version when locking it, and skips it.
const RETAKE_BATCH: &str = "UPDATE batch_leases SET expires_at_ms = $3 \
     WHERE dataset = $1 AND batch_id = (SELECT batch_id FROM batch_leases \
       WHERE dataset = $1 AND expires_at_ms <= $2 ORDER BY expires_at_ms, batch_id LIMIT 1 \
       FOR UPDATE SKIP LOCKED) \
     RETURNING batch_id, partition, \"offset\", expires_at_ms";
const ACK_BATCH: &str = "DELETE FROM batch_leases WHERE dataset = $1 AND batch_id = $2";
const SELECT_BATCH_LEASE: &str = "SELECT batch_id, partition, \"offset\", expires_at_ms \
     FROM batch_leases WHERE dataset = $1 AND batch_id = $2";
/// Inserts or, for an existing dataset, returns the stored partition count in one statement.
const DECLARE_DATASET: &str = "INSERT INTO datasets (name, partitions) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING partitions";

/// The PostgreSQL master store.
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (any libpq-style URL; `options=-csearch_path%3DS`
    /// selects the schema) and applies missing migrations. TLS is not supported yet.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| StoreError::InvalidUrl(redact(url)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tenantsync");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let mut client = pool.get().await?;
        migrate(&mut client).await?;
        Ok(Self { pool })
    }
}

/// Hides a password in a URL that is about to appear in an error message.
fn redact(url: &str) -> String {
    if url.contains("password=") {
        return "<url with a password parameter>".to_owned();
    }
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _password)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute(MIGRATION_LOCK, &[]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tenantsync_migrations (
             version    bigint      NOT NULL PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM tenantsync_migrations",
            &[],
        )
        .await?
        .get(0);
    let known = migrations::latest(migrations::POSTGRES);
    if current > known {
        return Err(StoreError::Corrupt {
            what: "schema version",
            detail: format!(
                "database is at schema version {current}, newer than this build's {known}"
            ),
        });
    }
    for Migration { version, name, sql } in migrations::POSTGRES {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO tenantsync_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        info!(migration = name, "applied postgres migration");
    }
    tx.commit().await?;
    Ok(())
}

fn record_row(row: &Row) -> Result<Record, StoreError> {
    RecordRow {
        tenant: row.try_get(0)?,
        id: row.try_get(1)?,
        version: row.try_get(2)?,
        data: row.try_get(3)?,
        updated_at: row.try_get(4)?,
        change_id: row.try_get(5)?,
    }
    .into_record()
}

/// The entry a 1-based `WITH ORDINALITY` slot number points at.
fn slot<T>(slots: &mut [T], ordinal: i64) -> Result<&mut T, StoreError> {
    usize::try_from(ordinal - 1)
        .ok()
        .and_then(|i| slots.get_mut(i))
        .ok_or_else(|| corrupt_id("lookup slot", format!("slot {ordinal} was not asked for")))
}

fn corrupt_id(what: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

/// A row of (name, datasets, tenants, created_at).
fn subscription_row(row: &Row) -> Result<Subscription, StoreError> {
    let datasets: &str = row.try_get(1)?;
    let tenants: Option<&str> = row.try_get(2)?;
    rows::subscription_from_row(row.try_get(0)?, datasets, tenants, row.try_get(3)?)
}

/// A row of (name, hash, scopes, created_at).
fn token_row(row: &Row) -> Result<StoredToken, StoreError> {
    let scopes: &str = row.try_get(2)?;
    rows::token_from_row(row.try_get(0)?, row.try_get(1)?, scopes, row.try_get(3)?)
}

/// A row of (tenant, started_at, finished_at, erased).
fn erasure_row(row: &Row) -> Result<Erasure, StoreError> {
    rows::erasure_from_row(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    )
}

/// A row of (batch_id, partition, offset, expires_at_ms).
fn batch_lease_row(row: &Row) -> Result<BatchLease, StoreError> {
    rows::batch_lease_from_row(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    )
}

/// The columns of a batch of record writes, as arrays for one `unnest` insert.
#[derive(Default)]
struct RecordColumns<'a> {
    tenants: Vec<&'a str>,
    ids: Vec<&'a str>,
    versions: Vec<i64>,
    data: Vec<Option<String>>,
    updated_at: Vec<DateTime<Utc>>,
    change_ids: Vec<&'a str>,
    seqs: Vec<i64>,
}

impl<'a> RecordColumns<'a> {
    fn new(records: impl Iterator<Item = (&'a Record, Offset)>) -> Result<Self, StoreError> {
        let mut c = Self::default();
        for (r, seq) in records {
            c.tenants.push(r.tenant.as_str());
            c.ids.push(r.id.as_str());
            c.versions.push(rows::to_i64("version", r.version)?);
            c.data
                .push(r.data.as_ref().map(rows::encode_data).transpose()?);
            c.updated_at.push(r.updated_at);
            c.change_ids.push(r.change_id.as_str());
            c.seqs.push(rows::to_i64("seq", seq)?);
        }
        Ok(c)
    }
}

#[async_trait]
impl MasterStore for PostgresStore {
    async fn declare_dataset(&self, dataset: &Dataset) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(DECLARE_DATASET).await?;
        let existing: i64 = client
            .query_one(
                &stmt,
                &[&dataset.name.as_str(), &i64::from(dataset.partitions)],
            )
            .await?
            .try_get(0)?;
        let existing = u32::try_from(existing).map_err(|_| {
            corrupt_id(
                "dataset partitions",
                format!("dataset {}: {existing} partitions", dataset.name),
            )
        })?;
        if existing != dataset.partitions {
            return Err(StoreError::DatasetMismatch {
                dataset: dataset.name.to_string(),
                existing,
                requested: dataset.partitions,
            });
        }
        Ok(())
    }

    async fn datasets(&self) -> Result<Vec<Dataset>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT name, partitions FROM datasets ORDER BY name")
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|row| {
                let name: String = row.try_get(0)?;
                let partitions: i64 = row.try_get(1)?;
                Ok(Dataset {
                    name: DatasetName::new(name).map_err(|e| corrupt_id("dataset name", e))?,
                    partitions: u32::try_from(partitions).map_err(|_| {
                        corrupt_id("dataset partitions", format!("{partitions} partitions"))
                    })?,
                })
            })
            .collect()
    }

    async fn apply(
        &self,
        dataset: &DatasetName,
        partition: u32,
        changes: &[LoggedChange],
        next_offset: Offset,
    ) -> Result<Applied, StoreError> {
        let ds = dataset.as_str();
        let part = i64::from(partition);
        let lookups = apply::lookups(changes);
        let key_tenants: Vec<&str> = lookups.keys.iter().map(|(t, _)| t.as_str()).collect();
        let key_ids: Vec<&str> = lookups.keys.iter().map(|(_, id)| id.as_str()).collect();
        let outcome_tenants: Vec<&str> =
            lookups.change_ids.iter().map(|(t, _)| t.as_str()).collect();
        let outcome_ids: Vec<&str> = lookups.change_ids.iter().map(|(_, c)| c.as_str()).collect();
        let batch_tenants: Vec<&str> = lookups.tenants.iter().map(|t| t.as_str()).collect();

        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (
            insert_position,
            lock_position,
            load_erasing,
            erasure_gate,
            load_records,
            load_outcomes,
            load_floors,
        ) = tokio::try_join!(
            tx.prepare_cached(INSERT_POSITION),
            tx.prepare_cached(LOCK_POSITION),
            tx.prepare_cached(LOAD_ERASING),
            tx.prepare_cached(ERASURE_GATE_SHARED),
            tx.prepare_cached(LOAD_RECORDS),
            tx.prepare_cached(LOAD_OUTCOMES),
            tx.prepare_cached(LOAD_FLOORS),
        )?;
        let loads = || async {
            tokio::try_join!(
                async {
                    tx.query(&load_records, &[&ds, &key_tenants, &key_ids])
                        .await
                },
                async {
                    tx.query(&load_outcomes, &[&ds, &outcome_tenants, &outcome_ids])
                        .await
                },
            )
        };
        let erasing_of = |rows: &[Row]| -> Result<HashSet<TenantId>, StoreError> {
            let mut erasing = HashSet::new();
            for row in rows {
                let tenant: &str = row.try_get(0)?;
                let i = batch_tenants.binary_search(&tenant).map_err(|_| {
                    corrupt_id("erasure", format!("tenant {tenant:?} was not asked for"))
                })?;
                erasing.insert(lookups.tenants[i].clone());
            }
            Ok(erasing)
        };
        // One round trip: the server runs these in order, so the loads see everything committed
        // by whoever held the position lock before us.
        let (_, position, erasing_rows, (mut record_rows, mut outcome_rows)) = tokio::try_join!(
            async { tx.execute(&insert_position, &[&ds, &part]).await },
            async { tx.query_one(&lock_position, &[&ds, &part]).await },
            async { tx.query(&load_erasing, &[&batch_tenants]).await },
            loads(),
        )?;
        let position = rows::to_u64("position", position.try_get(0)?)?;
        let mut erasing = erasing_of(&erasing_rows)?;
        if !erasing.is_empty() {
            let (_, again) =
                tokio::try_join!(async { tx.execute(&erasure_gate, &[]).await }, async {
                    tx.query(&load_erasing, &[&batch_tenants]).await
                },)?;
            let again = erasing_of(&again)?;
            if again != erasing {
                // An erasure finished (or started) since the first read: what the loads read
                // may predate it.
                (record_rows, outcome_rows) = loads().await?;
                erasing = again;
            }
        }

        let mut records: Vec<Option<Record>> = vec![None; lookups.keys.len()];
        for row in &record_rows {
            let record = record_row(row)?;
            *slot(&mut records, row.try_get(6)?)? = Some(record);
        }
        let mut outcomes: Vec<Option<StoredOutcome>> = vec![None; lookups.change_ids.len()];
        for row in &outcome_rows {
            let status: String = row.try_get(1)?;
            let outcome = rows::stored_outcome_from_row(row.try_get(0)?, &status, row.try_get(2)?)?;
            *slot(&mut outcomes, row.try_get(3)?)? = Some(outcome);
        }
        // Another round trip, but only for batches that create keys, and it must come after
        // the records' statement anyway.
        let creating = apply::tenants_creating(&lookups, &records);
        let mut floors: HashMap<TenantId, u64> = HashMap::new();
        if !creating.is_empty() {
            let names: Vec<&str> = creating.iter().map(|t| t.as_str()).collect();
            for row in tx.query(&load_floors, &[&ds, &names]).await? {
                let tenant: &str = row.try_get(0)?;
                let floor = rows::to_u64("version floor", row.try_get(1)?)?;
                let i = names.binary_search(&tenant).map_err(|_| {
                    corrupt_id(
                        "version floor",
                        format!("tenant {tenant:?} was not asked for"),
                    )
                })?;
                floors.insert(creating[i].clone(), floor);
            }
        }

        let plan = apply::plan_batch(
            dataset,
            partition,
            changes,
            &lookups,
            position,
            next_offset,
            records,
            outcomes,
            &floors,
            &erasing,
            Utc::now(),
        );

        let columns = RecordColumns::new(
            plan.written
                .iter()
                .map(|&(i, seq)| (&plan.applied.states[i], seq)),
        )?;
        let mut o_tenants = Vec::with_capacity(plan.first_applied.len());
        let mut o_ids = Vec::with_capacity(plan.first_applied.len());
        let mut o_records = Vec::with_capacity(plan.first_applied.len());
        let mut o_statuses = Vec::with_capacity(plan.first_applied.len());
        let mut o_versions = Vec::with_capacity(plan.first_applied.len());
        for &i in &plan.first_applied {
            let change = &changes[i].change;
            let (status, version) = rows::outcome_to_row(&plan.applied.outcomes[i])?;
            o_tenants.push(change.tenant.as_str());
            o_ids.push(change.change_id.as_str());
            o_records.push(change.id.as_str());
            o_statuses.push(status);
            o_versions.push(version);
        }
        let new_position = rows::to_i64("next offset", plan.position)?;
        let (write_records, write_outcomes, update_position) = tokio::try_join!(
            tx.prepare_cached(WRITE_RECORDS),
            tx.prepare_cached(WRITE_OUTCOMES),
            tx.prepare_cached(UPDATE_POSITION),
        )?;
        let write_records = async {
            if columns.tenants.is_empty() {
                return Ok(0);
            }
            tx.execute(
                &write_records,
                &[
                    &ds,
                    &columns.tenants,
                    &columns.ids,
                    &columns.versions,
                    &columns.data,
                    &columns.updated_at,
                    &columns.change_ids,
                    &columns.seqs,
                ],
            )
            .await
        };
        let write_outcomes = async {
            if o_tenants.is_empty() {
                return Ok(0);
            }
            tx.execute(
                &write_outcomes,
                &[
                    &ds,
                    &o_tenants,
                    &o_ids,
                    &o_records,
                    &o_statuses,
                    &o_versions,
                ],
            )
            .await
        };
        let update_position = async {
            if plan.position == position {
                return Ok(0);
            }
            tx.execute(&update_position, &[&ds, &part, &new_position])
                .await
        };
        tokio::try_join!(write_records, write_outcomes, update_position)?;
        tx.commit().await?;
        Ok(plan.applied)
    }

    async fn position(&self, dataset: &DatasetName, partition: u32) -> Result<Offset, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_POSITION).await?;
        let row = client
            .query_opt(&stmt, &[&dataset.as_str(), &i64::from(partition)])
            .await?;
        match row {
            Some(row) => rows::to_u64("position", row.try_get(0)?),
            None => Ok(0),
        }
    }

    async fn get(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        id: &EntityId,
    ) -> Result<Option<Record>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_RECORD).await?;
        client
            .query_opt(&stmt, &[&dataset.as_str(), &tenant.as_str(), &id.as_str()])
            .await?
            .as_ref()
            .map(record_row)
            .transpose()
    }

    async fn outcome(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        change_id: &ChangeId,
    ) -> Result<Option<StoredOutcome>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_OUTCOME).await?;
        let row = client
            .query_opt(
                &stmt,
                &[&dataset.as_str(), &tenant.as_str(), &change_id.as_str()],
            )
            .await?;
        match row {
            Some(row) => {
                let status: String = row.try_get(1)?;
                Ok(Some(rows::stored_outcome_from_row(
                    row.try_get(0)?,
                    &status,
                    row.try_get(2)?,
                )?))
            }
            None => Ok(None),
        }
    }

    async fn outcomes(
        &self,
        dataset: &DatasetName,
        change_ids: &[(TenantId, ChangeId)],
    ) -> Result<Vec<Option<StoredOutcome>>, StoreError> {
        if change_ids.is_empty() {
            return Ok(Vec::new());
        }
        let tenants: Vec<&str> = change_ids.iter().map(|(t, _)| t.as_str()).collect();
        let ids: Vec<&str> = change_ids.iter().map(|(_, c)| c.as_str()).collect();
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(LOAD_OUTCOMES).await?;
        let found = client
            .query(&stmt, &[&dataset.as_str(), &tenants, &ids])
            .await?;
        let mut out: Vec<Option<StoredOutcome>> = vec![None; change_ids.len()];
        for row in &found {
            let status: String = row.try_get(1)?;
            let outcome = rows::stored_outcome_from_row(row.try_get(0)?, &status, row.try_get(2)?)?;
            *slot(&mut out, row.try_get(3)?)? = Some(outcome);
        }
        Ok(out)
    }

    async fn scan(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        after: Option<&EntityId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let found = match after {
            None => {
                let stmt = client.prepare_cached(SCAN_FIRST).await?;
                client
                    .query(&stmt, &[&dataset.as_str(), &tenant.as_str(), &limit])
                    .await?
            }
            Some(after) => {
                let stmt = client.prepare_cached(SCAN_AFTER).await?;
                client
                    .query(
                        &stmt,
                        &[&dataset.as_str(), &tenant.as_str(), &after.as_str(), &limit],
                    )
                    .await?
            }
        };
        found.iter().map(record_row).collect()
    }

    async fn tenant_feed(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        from: Offset,
        live_from: Option<Offset>,
        limit: usize,
    ) -> Result<TenantFeed, StoreError> {
        let (ds, t) = (dataset.as_str(), tenant.as_str());
        let from = rows::to_i64("feed seq", from)?;
        let live_from = live_from
            .map(|l| rows::to_i64("feed live_from", l))
            .transpose()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let (feed, horizon) = tokio::try_join!(
            client.prepare_cached(SELECT_FEED),
            client.prepare_cached(SELECT_HORIZON),
        )?;
        // Pipelined, but the server runs them in order: the horizon's snapshot is the later one.
        let (found, horizon) = tokio::try_join!(
            async {
                client
                    .query(&feed, &[&ds, &t, &from, &live_from, &limit])
                    .await
            },
            async { client.query_opt(&horizon, &[&ds, &t]).await },
        )?;
        let end = match found.first() {
            Some(row) => rows::to_u64("feed end", row.try_get(0)?)?,
            None => return Err(corrupt_id("feed end", "the feed query returned no row")),
        };
        let mut records = Vec::with_capacity(found.len());
        for row in &found {
            let seq: Option<i64> = row.try_get(7)?;
            let Some(seq) = seq else { continue };
            records.push(FeedRecord {
                seq: rows::to_u64("seq", seq)?,
                record: RecordRow {
                    tenant: row.try_get(1)?,
                    id: row.try_get(2)?,
                    version: row.try_get(3)?,
                    data: row.try_get(4)?,
                    updated_at: row.try_get(5)?,
                    change_id: row.try_get(6)?,
                }
                .into_record()?,
            });
        }
        let horizon = match horizon {
            Some(row) => rows::to_u64("horizon", row.try_get(0)?)?,
            None => 0,
        };
        Ok(TenantFeed {
            records,
            end,
            horizon,
        })
    }

    async fn tenant_ends(
        &self,
        dataset: &DatasetName,
    ) -> Result<Vec<(TenantId, Offset)>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(TENANT_ENDS).await?;
        client
            .query(&stmt, &[&dataset.as_str()])
            .await?
            .iter()
            .map(|row| {
                let tenant: String = row.try_get(0)?;
                let tenant = TenantId::new(tenant).map_err(|e| corrupt_id("feed tenant", e))?;
                Ok((tenant, rows::to_u64("tenant end", row.try_get(1)?)?))
            })
            .collect()
    }

    async fn purge_tombstones(
        &self,
        dataset: &DatasetName,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(PURGE_TOMBSTONES).await?;
        let purged: i64 = client
            .query_one(&stmt, &[&dataset.as_str(), &before, &limit])
            .await?
            .try_get(0)?;
        rows::to_u64("purged tombstones", purged)
    }

    async fn put_subscription(
        &self,
        subscription: &Subscription,
    ) -> Result<(Subscription, bool), StoreError> {
        let (datasets, tenants) = rows::subscription_to_row(subscription)?;
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(PUT_SUBSCRIPTION).await?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &subscription.name.as_str(),
                    &datasets,
                    &tenants,
                    &rows::to_micros(subscription.created_at),
                ],
            )
            .await?;
        Ok((subscription_row(&row)?, row.try_get(4)?))
    }

    async fn subscription(
        &self,
        name: &SubscriptionName,
    ) -> Result<Option<Subscription>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_SUBSCRIPTION).await?;
        client
            .query_opt(&stmt, &[&name.as_str()])
            .await?
            .as_ref()
            .map(subscription_row)
            .transpose()
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_SUBSCRIPTIONS).await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(subscription_row)
            .collect()
    }

    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<bool, StoreError> {
        let name = name.as_str();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (delete_subscription, delete_progress) = tokio::try_join!(
            tx.prepare_cached(DELETE_SUBSCRIPTION),
            tx.prepare_cached(DELETE_PROGRESS),
        )?;
        // Pipelined; the server runs them in this order, which is what keeps acks out.
        let (deleted, _) = tokio::try_join!(
            async { tx.execute(&delete_subscription, &[&name]).await },
            async { tx.execute(&delete_progress, &[&name]).await },
        )?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn subscription_progress(
        &self,
        name: &SubscriptionName,
    ) -> Result<Vec<Progress>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_PROGRESS).await?;
        client
            .query(&stmt, &[&name.as_str()])
            .await?
            .iter()
            .map(|row| {
                rows::progress_from_row(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                )
            })
            .collect()
    }

    async fn ack(
        &self,
        name: &SubscriptionName,
        created_at: DateTime<Utc>,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let next_seq = rows::to_i64("next_seq", progress.position.next_seq)?;
        let live_from = rows::to_i64("live_from", progress.position.live_from)?;
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(ACK).await?;
        let written = client
            .execute(
                &stmt,
                &[
                    &name.as_str(),
                    &rows::to_micros(created_at),
                    &progress.dataset.as_str(),
                    &progress.tenant.as_str(),
                    &next_seq,
                    &live_from,
                    &rows::to_micros(progress.acked_at),
                ],
            )
            .await?;
        Ok(written > 0)
    }

    async fn create_token(&self, token: &StoredToken) -> Result<bool, StoreError> {
        let scopes = rows::scopes_to_row(token)?;
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO tokens (name, hash, scopes, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .await?;
        let inserted = client
            .execute(
                &stmt,
                &[
                    &token.name.as_str(),
                    &token.hash,
                    &scopes,
                    &rows::to_micros(token.created_at),
                ],
            )
            .await?;
        Ok(inserted > 0)
    }

    async fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT name, hash, scopes, created_at FROM tokens ORDER BY name")
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(token_row)
            .collect()
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT name, hash, scopes, created_at FROM tokens WHERE hash = $1")
            .await?;
        client
            .query_opt(&stmt, &[&hash])
            .await?
            .as_ref()
            .map(token_row)
            .transpose()
    }

    async fn revoke_token(&self, name: &TokenName) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("DELETE FROM tokens WHERE name = $1")
            .await?;
        Ok(client.execute(&stmt, &[&name.as_str()]).await? > 0)
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let detail = rows::audit_detail_to_row(entry)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (lock, append) = tokio::try_join!(
            tx.prepare_cached(LOCK_AUDIT),
            tx.prepare_cached(APPEND_AUDIT),
        )?;
        let (_, row) = tokio::try_join!(async { tx.execute(&lock, &[]).await }, async {
            tx.query_one(
                &append,
                &[
                    &rows::to_micros(entry.at),
                    &entry.actor,
                    &entry.action,
                    &entry.target,
                    &detail,
                ],
            )
            .await
        },)?;
        let seq: i64 = row.try_get(0)?;
        tx.commit().await?;
        rows::to_u64("audit seq", seq)
    }

    async fn audit_log(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        // No seq is above i64::MAX, so clamping keeps the answer (empty) right.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_AUDIT).await?;
        client
            .query(&stmt, &[&after, &limit])
            .await?
            .iter()
            .map(|row| {
                let detail: &str = row.try_get(5)?;
                rows::audit_from_row(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                    detail,
                )
            })
            .collect()
    }

    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SECRET).await?;
        Ok(client
            .query_one(&stmt, &[&name, &candidate])
            .await?
            .try_get(0)?)
    }

    async fn start_erasure(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<(Erasure, bool), StoreError> {
        let (t, at) = (tenant.as_str(), rows::to_micros(at));
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (insert, lock, restart) = tokio::try_join!(
            tx.prepare_cached(INSERT_ERASURE),
            tx.prepare_cached(LOCK_ERASURE),
            tx.prepare_cached(RESTART_ERASURE),
        )?;
        if let Some(row) = tx.query_opt(&insert, &[&t, &at]).await? {
            let started = erasure_row(&row)?;
            tx.commit().await?;
            return Ok((started, true));
        }
        // The row exists (a conflicting insert waits for the other's commit); lock its latest
        // version so that it cannot finish or restart under us.
        let existing = erasure_row(&tx.query_one(&lock, &[&t]).await?)?;
        if existing.finished_at.is_none() {
            tx.commit().await?;
            return Ok((existing, false));
        }
        let started = erasure_row(&tx.query_one(&restart, &[&t, &at]).await?)?;
        tx.commit().await?;
        Ok((started, true))
    }

    async fn erasure(&self, tenant: &TenantId) -> Result<Option<Erasure>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_ERASURE).await?;
        client
            .query_opt(&stmt, &[&tenant.as_str()])
            .await?
            .as_ref()
            .map(erasure_row)
            .transpose()
    }

    async fn running_erasures(&self) -> Result<Vec<Erasure>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RUNNING_ERASURES).await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(erasure_row)
            .collect()
    }

    async fn erasure_progress(&self, tenant: &TenantId, erased: u64) -> Result<(), StoreError> {
        let erased = rows::to_i64("erasure progress", erased)?;
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(ERASURE_PROGRESS).await?;
        client.execute(&stmt, &[&tenant.as_str(), &erased]).await?;
        Ok(())
    }

    async fn finish_erasure(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let (t, at) = (tenant.as_str(), rows::to_micros(at));
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (gate, lock, count_live, finish) = tokio::try_join!(
            tx.prepare_cached(ERASURE_GATE),
            tx.prepare_cached(LOCK_RUNNING_ERASURE),
            tx.prepare_cached(COUNT_LIVE),
            tx.prepare_cached(FINISH_ERASURE),
        )?;
        // In this order, each a statement of its own: once the gate is held no batch that saw
        // the erasure running is writing, and the later snapshots see what they committed.
        tx.execute(&gate, &[]).await?;
        if tx.query_opt(&lock, &[&t]).await?.is_none() {
            return Ok(0);
        }
        let live: i64 = tx.query_one(&count_live, &[&t]).await?.try_get(0)?;
        if live != 0 {
            return rows::to_u64("live records", live);
        }
        tx.execute(&finish, &[&t, &at]).await?;
        tx.commit().await?;
        Ok(0)
    }

    async fn claim_batcher(
        &self,
        dataset: &DatasetName,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<BatcherClaim>, StoreError> {
        let lease_until = now_ms.saturating_add(lease_ms);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(CLAIM_BATCHER).await?;
        client
            .query_opt(&stmt, &[&dataset.as_str(), &owner, &lease_until, &now_ms])
            .await?
            .map(|row| rows::batcher_claim_from_row(row.try_get(0)?, row.try_get(1)?))
            .transpose()
    }

    async fn renew_batcher(
        &self,
        dataset: &DatasetName,
        epoch: u64,
        now_ms: i64,
        lease_ms: i64,
        checkpoint: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let epoch = rows::to_i64("batcher epoch", epoch)?;
        let lease_until = now_ms.saturating_add(lease_ms);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RENEW_BATCHER).await?;
        let renewed = client
            .execute(
                &stmt,
                &[&dataset.as_str(), &epoch, &lease_until, &checkpoint],
            )
            .await?;
        Ok(renewed > 0)
    }

    async fn batch_dispatch(
        &self,
        dataset: &DatasetName,
    ) -> Result<Vec<(u32, Offset)>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_DISPATCH).await?;
        client
            .query(&stmt, &[&dataset.as_str()])
            .await?
            .iter()
            .map(|row| {
                Ok((
                    rows::batch_partition_from_row(row.try_get(0)?)?,
                    rows::to_u64("batch queue position", row.try_get(1)?)?,
                ))
            })
            .collect()
    }

    async fn claim_batch(
        &self,
        dataset: &DatasetName,
        partition: u32,
        expected: Offset,
        offset: Offset,
        batch_id: &str,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let (expected, offset, next) = rows::batch_claim_to_row(expected, offset)?;
        let client = self.pool.get().await?;
        let stmt = if expected == 0 {
            client.prepare_cached(CLAIM_FIRST_BATCH).await?
        } else {
            client.prepare_cached(CLAIM_NEXT_BATCH).await?
        };
        let leased = client
            .execute(
                &stmt,
                &[
                    &dataset.as_str(),
                    &i64::from(partition),
                    &expected,
                    &offset,
                    &next,
                    &batch_id,
                    &expires_at_ms,
                ],
            )
            .await?;
        Ok(leased > 0)
    }

    async fn retake_expired_batch(
        &self,
        dataset: &DatasetName,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Option<BatchLease>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RETAKE_BATCH).await?;
        client
            .query_opt(&stmt, &[&dataset.as_str(), &now_ms, &expires_at_ms])
            .await?
            .as_ref()
            .map(batch_lease_row)
            .transpose()
    }

    async fn ack_batch(&self, dataset: &DatasetName, batch_id: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(ACK_BATCH).await?;
        Ok(client
            .execute(&stmt, &[&dataset.as_str(), &batch_id])
            .await?
            > 0)
    }

    async fn batch_lease(
        &self,
        dataset: &DatasetName,
        batch_id: &str,
    ) -> Result<Option<BatchLease>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_BATCH_LEASE).await?;
        client
            .query_opt(&stmt, &[&dataset.as_str(), &batch_id])
            .await?
            .as_ref()
            .map(batch_lease_row)
            .transpose()
    }

    async fn check(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_error_messages() {
        assert_eq!(
            redact("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
        assert!(!redact("postgres://db/x?password=secret").contains("secret"));
    }
}
