//! The SQLite backend: the default master store, one file under the data dir.
//!
//! One writer connection lives on a dedicated thread and runs every write (`apply`,
//! `declare_dataset`) in order, each in one `BEGIN IMMEDIATE` transaction; SQLite allows one
//! writer at a time anyway, and one thread keeps its statement cache warm. Reads run on a few
//! reader connections in `spawn_blocking`; in WAL mode they read the last committed state and
//! never wait for the writer. The journal is WAL with `synchronous=FULL`, so a commit that
//! returned survives a power loss.
//!
//! This module must never block an async worker thread on SQLite, and never decide what a
//! change does itself: that is [`crate::apply`].

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use tenantsync_core::{
    ChangeId, DatasetName, EntityId, Record, SubscriptionName, TenantId, TokenName,
};
use tokio::sync::{Semaphore, oneshot};
use tracing::{error, info};

use crate::apply;
use crate::migrations::{self, Migration};
use crate::rows::{self, RecordRow};
use crate::{
    Applied, AuditEntry, BatchLease, BatcherClaim, Dataset, Erasure, FeedRecord, LoggedChange,
    MasterStore, Offset, Progress, StoreError, StoredOutcome, StoredToken, Subscription,
    TenantFeed,
};

/// Reader connections: enough for the API's concurrent reads on 2 cores, few enough that a
/// burst of reads does not starve the writer of CPU.
const READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Page cache of the writer, in KiB (SQLite's negative `cache_size`): the working set of a busy
/// partition's keys should stay in memory.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
const STATEMENT_CACHE: usize = 32;
/// The writer copies the WAL back into the database (a checkpoint) once it holds this many
/// pages. Checkpoints run on the writer, between two transactions, because only there are they
/// sure to complete: a background checkpointer racing a busy writer never catches up, and the
/// WAL grows without bound.
const CHECKPOINT_PAGES: i64 = 1_000;
/// Bytes of WAL file kept after a checkpoint reset it.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

const SELECT_POSITION: &str =
    "SELECT next_offset FROM positions WHERE dataset = ?1 AND partition = ?2";
const UPSERT_POSITION: &str = "INSERT INTO positions (dataset, partition, next_offset) \
     VALUES (?1, ?2, ?3) \
     ON CONFLICT (dataset, partition) DO UPDATE \
     SET next_offset = max(next_offset, excluded.next_offset)";
const SELECT_RECORD: &str = "SELECT tenant, id, version, data, updated_at, change_id \
     FROM records WHERE dataset = ?1 AND tenant = ?2 AND id = ?3";
const UPSERT_RECORD: &str = "INSERT INTO records \
     (dataset, tenant, id, version, data, updated_at, change_id, seq) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (dataset, tenant, id) DO UPDATE SET version = excluded.version, \
     data = excluded.data, updated_at = excluded.updated_at, change_id = excluded.change_id, \
     seq = excluded.seq";
const SELECT_FLOOR: &str =
    "SELECT version_floor FROM tenant_horizons WHERE dataset = ?1 AND tenant = ?2";
/// The tenant's end, as `TenantFeed::end` defines it.
const SELECT_END: &str = "SELECT max(\
     coalesce((SELECT max(seq) + 1 FROM records WHERE dataset = ?1 AND tenant = ?2), 0), \
     coalesce((SELECT purged_below FROM tenant_horizons WHERE dataset = ?1 AND tenant = ?2), 0))";
const SELECT_HORIZON: &str =
    "SELECT purged_below FROM tenant_horizons WHERE dataset = ?1 AND tenant = ?2";
const SELECT_FEED: &str = "SELECT tenant, id, version, data, updated_at, change_id, seq \
     FROM records WHERE dataset = ?1 AND tenant = ?2 AND seq >= ?3 \
     AND (data IS NOT NULL OR seq >= ?4) ORDER BY seq LIMIT ?5";
const SELECT_ENDS: &str = "SELECT tenant, max(e) FROM (\
     SELECT tenant, max(seq) + 1 AS e FROM records WHERE dataset = ?1 GROUP BY tenant \
     UNION ALL SELECT tenant, purged_below FROM tenant_horizons WHERE dataset = ?1) \
     GROUP BY tenant ORDER BY tenant";
const PURGE: &str = "DELETE FROM records WHERE dataset = ?1 AND (tenant, id) IN (\
     SELECT tenant, id FROM records \
     WHERE dataset = ?1 AND data IS NULL AND updated_at < ?2 ORDER BY updated_at LIMIT ?3) \
     RETURNING tenant, seq, version";
const RAISE_HORIZON: &str = "INSERT INTO tenant_horizons \
     (dataset, tenant, purged_below, version_floor) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (dataset, tenant) DO UPDATE \
     SET purged_below = max(purged_below, excluded.purged_below), \
     version_floor = max(version_floor, excluded.version_floor)";
const SELECT_SUBSCRIPTION: &str =
    "SELECT name, datasets, tenants, created_at FROM subscriptions WHERE name = ?1";
const SELECT_PROGRESS: &str = "SELECT dataset, tenant, next_seq, live_from, acked_at \
     FROM subscription_progress WHERE name = ?1 ORDER BY dataset, tenant";
const ACK: &str = "INSERT INTO subscription_progress \
     (name, dataset, tenant, next_seq, live_from, acked_at) \
     SELECT ?1, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS \
     (SELECT 1 FROM subscriptions WHERE name = ?1 AND created_at = ?2) \
     ON CONFLICT (name, dataset, tenant) DO UPDATE SET next_seq = excluded.next_seq, \
     live_from = excluded.live_from, acked_at = excluded.acked_at";
const SELECT_OUTCOME: &str = "SELECT id, status, version FROM applied_changes \
     WHERE dataset = ?1 AND tenant = ?2 AND change_id = ?3";
const INSERT_OUTCOME: &str = "INSERT INTO applied_changes \
     (dataset, tenant, change_id, id, status, version) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SCAN_FIRST: &str = "SELECT tenant, id, version, data, updated_at, change_id \
     FROM records WHERE dataset = ?1 AND tenant = ?2 ORDER BY id LIMIT ?3";
const SCAN_AFTER: &str = "SELECT tenant, id, version, data, updated_at, change_id \
     FROM records WHERE dataset = ?1 AND tenant = ?2 AND id > ?3 ORDER BY id LIMIT ?4";

/// Served by a partial index holding only running erasures: for almost every batch, a probe
/// that finds nothing.
const SELECT_ERASING: &str = "SELECT tenant FROM tenant_erasures WHERE finished_at IS NULL";
const SELECT_ERASURE: &str =
    "SELECT tenant, started_at, finished_at, erased FROM tenant_erasures WHERE tenant = ?1";
/// Every dataset that can hold records or outcomes: `apply` writes a dataset's position row in
/// the transaction of its first batch, so this covers datasets never declared too.
const DATASETS_WRITTEN: &str = "SELECT dataset FROM positions UNION SELECT name FROM datasets";
const COUNT_LIVE: &str =
    "SELECT count(*) FROM records WHERE dataset = ?1 AND tenant = ?2 AND data IS NOT NULL";
const ERASE_RECORDS: &str = "DELETE FROM records WHERE dataset = ?1 AND tenant = ?2 \
     RETURNING seq, version";
const ERASE_OUTCOMES: &str = "DELETE FROM applied_changes WHERE dataset = ?1 AND tenant = ?2";

/// Takes the claim when there is none, when its lease expired (`?4` is now) or when it is the
/// same owner's; otherwise the upsert's WHERE leaves the row alone and RETURNING yields nothing.
const CLAIM_BATCHER: &str = "INSERT INTO batchers \
     (dataset, owner, epoch, lease_until_ms, checkpoint) VALUES (?1, ?2, 1, ?3, NULL) \
     ON CONFLICT (dataset) DO UPDATE SET owner = excluded.owner, epoch = batchers.epoch + 1, \
     lease_until_ms = excluded.lease_until_ms \
     WHERE batchers.lease_until_ms <= ?4 OR batchers.owner = excluded.owner \
     RETURNING epoch, checkpoint";
const RENEW_BATCHER: &str = "UPDATE batchers \
     SET lease_until_ms = ?3, checkpoint = coalesce(?4, checkpoint) \
     WHERE dataset = ?1 AND epoch = ?2";
const SELECT_DISPATCH: &str = "SELECT partition, next_offset FROM batch_dispatch \
     WHERE dataset = ?1 ORDER BY partition";
const SELECT_DISPATCH_ONE: &str =
    "SELECT next_offset FROM batch_dispatch WHERE dataset = ?1 AND partition = ?2";
const UPSERT_DISPATCH: &str = "INSERT INTO batch_dispatch (dataset, partition, next_offset) \
     VALUES (?1, ?2, ?3) \
     ON CONFLICT (dataset, partition) DO UPDATE SET next_offset = excluded.next_offset";
const INSERT_BATCH_LEASE: &str = "INSERT INTO batch_leases \
     (dataset, batch_id, partition, \"offset\", expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)";
const RETAKE_BATCH: &str = "UPDATE batch_leases SET expires_at_ms = ?3 \
     WHERE dataset = ?1 AND batch_id = (SELECT batch_id FROM batch_leases \
       WHERE dataset = ?1 AND expires_at_ms <= ?2 ORDER BY expires_at_ms, batch_id LIMIT 1) \
     RETURNING batch_id, partition, \"offset\", expires_at_ms";
const ACK_BATCH: &str = "DELETE FROM batch_leases WHERE dataset = ?1 AND batch_id = ?2";
const SELECT_BATCH_LEASE: &str = "SELECT batch_id, partition, \"offset\", expires_at_ms \
     FROM batch_leases WHERE dataset = ?1 AND batch_id = ?2";

type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// The SQLite master store. Cheap to share behind an `Arc`; dropping it stops the writer thread
/// once queued writes are done.
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<WriteJob>,
    readers: Arc<Readers>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, creating its parent directory and
    /// migrating its schema.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let owned = path.to_owned();
        let conn = blocking(move || open_writer(&owned)).await?;
        let (writer, jobs) = mpsc::channel::<WriteJob>();
        let thread_path = path.display().to_string();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run_writer(conn, jobs, &thread_path))?;
        Ok(Self {
            path: path.to_owned(),
            writer,
            readers: Arc::new(Readers {
                path: path.to_owned(),
                idle: Mutex::new(Vec::with_capacity(READERS)),
                permits: Semaphore::new(READERS),
            }),
        })
    }

    /// Runs `job` on the writer thread and waits for its result.
    async fn write<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        self.writer
            .send(Box::new(move |conn| {
                // The caller may have gone away (a cancelled request); the write still happened
                // or not as a whole, so there is nothing to do about a closed channel.
                let _ = reply.send(job(conn));
            }))
            .map_err(|_| writer_stopped(&self.path))?;
        result.await.map_err(|_| writer_stopped(&self.path))?
    }

    /// Runs `job` on a reader connection in the blocking pool.
    async fn read<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // The semaphore is never closed, so acquire only fails if it were.
        let _permit = self
            .readers
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Io(std::io::Error::other("sqlite reader pool closed")))?;
        let readers = Arc::clone(&self.readers);
        blocking(move || {
            let idle = readers.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match idle {
                Some(conn) => conn,
                None => open_reader(&readers.path)?,
            };
            let result = job(&conn);
            readers
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
            result
        })
        .await
    }
}

fn writer_stopped(path: &Path) -> StoreError {
    StoreError::Io(std::io::Error::other(format!(
        "sqlite writer thread for {} stopped",
        path.display()
    )))
}

async fn blocking<T, F>(job: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(format!("sqlite task failed: {e}"))))?
}

fn run_writer(mut conn: Connection, jobs: mpsc::Receiver<WriteJob>, path: &str) {
    for job in jobs {
        // A panicking job drops its reply (the caller gets an error) and rolls its transaction
        // back as it unwinds; the writer carries on with the next one.
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
            error!(
                path,
                "sqlite write panicked; its transaction was rolled back"
            );
        }
    }
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Io(std::io::Error::other(format!(
            "sqlite store {}: cannot enable WAL journal (got {mode})",
            path.display()
        ))));
    }
    // FULL: a returned commit survives a power loss, which is what lets the processor commit
    // its changes-log offset after apply returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    // After a checkpoint resets the WAL, truncate the file back to this size rather than keep
    // the high-water mark of a burst forever.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    migrate(&mut conn, path)?;
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    // IMMEDIATE takes the write lock first, so two processes opening one file migrate in turn.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS tenantsync_migrations (
             version    INTEGER NOT NULL PRIMARY KEY,
             name       TEXT    NOT NULL,
             applied_at TEXT    NOT NULL
         )",
    )?;
    let current: i64 = tx.query_row(
        "SELECT coalesce(max(version), 0) FROM tenantsync_migrations",
        [],
        |row| row.get(0),
    )?;
    let known = migrations::latest(migrations::SQLITE);
    if current > known {
        return Err(StoreError::Corrupt {
            what: "schema version",
            detail: format!(
                "{} is at schema version {current}, newer than this build's {known}",
                path.display()
            ),
        });
    }
    for Migration { version, name, sql } in migrations::SQLITE {
        if *version <= current {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO tenantsync_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![version, name, Utc::now().to_rfc3339()],
        )?;
        info!(path = %path.display(), migration = name, "applied sqlite migration");
    }
    tx.commit()?;
    Ok(())
}

fn record_row(row: &Row<'_>) -> rusqlite::Result<RecordRow> {
    let micros: i64 = row.get(4)?;
    Ok(RecordRow {
        tenant: row.get(0)?,
        id: row.get(1)?,
        version: row.get(2)?,
        data: row.get(3)?,
        updated_at: DateTime::from_timestamp_micros(micros)
            .ok_or(rusqlite::Error::IntegralValueOutOfRange(4, micros))?,
        change_id: row.get(5)?,
    })
}

type SubscriptionRow = (String, String, Option<String>, i64);

fn subscription_row(row: &Row<'_>) -> rusqlite::Result<SubscriptionRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

type TokenRow = (String, String, String, i64);

fn token_row(row: &Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

/// The indices of `keys`, in key order.
fn sorted_slots<A: Ord, B: Ord>(keys: &[(&A, &B)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by_key(|&i| keys[i]);
    order
}

fn outcome_row(row: &Row<'_>) -> rusqlite::Result<(String, String, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn partition_param(partition: u32) -> i64 {
    i64::from(partition)
}

fn apply_in_transaction(
    conn: &mut Connection,
    dataset: &DatasetName,
    partition: u32,
    changes: &[LoggedChange],
    next_offset: Offset,
) -> Result<Applied, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let ds = dataset.as_str();
    let part = partition_param(partition);
    let stored: Option<i64> = tx
        .prepare_cached(SELECT_POSITION)?
        .query_row(params![ds, part], |row| row.get(0))
        .optional()?;
    let position = rows::to_u64("position", stored.unwrap_or(0))?;

    let lookups = apply::lookups(changes);
    let mut erasing = HashSet::new();
    {
        let mut select = tx.prepare_cached(SELECT_ERASING)?;
        let mut running = select.query([])?;
        while let Some(row) = running.next()? {
            let tenant: String = row.get(0)?;
            if let Ok(i) = lookups
                .tenants
                .binary_search_by(|t| t.as_str().cmp(tenant.as_str()))
            {
                erasing.insert(lookups.tenants[i].clone());
            }
        }
    }
    // Probing in key order visits the b-tree's pages in order: fewer page cache misses once the
    // tables outgrow the cache.
    let mut records = vec![None; lookups.keys.len()];
    {
        let mut select = tx.prepare_cached(SELECT_RECORD)?;
        for slot in sorted_slots(&lookups.keys) {
            let (tenant, id) = lookups.keys[slot];
            let row = select
                .query_row(params![ds, tenant.as_str(), id.as_str()], record_row)
                .optional()?;
            records[slot] = row.map(RecordRow::into_record).transpose()?;
        }
    }
    let mut outcomes = vec![None; lookups.change_ids.len()];
    {
        let mut select = tx.prepare_cached(SELECT_OUTCOME)?;
        for slot in sorted_slots(&lookups.change_ids) {
            let (tenant, change_id) = lookups.change_ids[slot];
            let row = select
                .query_row(
                    params![ds, tenant.as_str(), change_id.as_str()],
                    outcome_row,
                )
                .optional()?;
            outcomes[slot] = row
                .map(|(id, status, version)| rows::stored_outcome_from_row(id, &status, version))
                .transpose()?;
        }
    }

    let mut floors = HashMap::new();
    {
        let mut select = tx.prepare_cached(SELECT_FLOOR)?;
        for tenant in apply::tenants_creating(&lookups, &records) {
            let floor: Option<i64> = select
                .query_row(params![ds, tenant.as_str()], |row| row.get(0))
                .optional()?;
            if let Some(floor) = floor {
                floors.insert(tenant.clone(), rows::to_u64("version floor", floor)?);
            }
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

    {
        let mut upsert = tx.prepare_cached(UPSERT_RECORD)?;
        for &(i, seq) in &plan.written {
            let r = &plan.applied.states[i];
            let data = r.data.as_ref().map(rows::encode_data).transpose()?;
            upsert.execute(params![
                ds,
                r.tenant.as_str(),
                r.id.as_str(),
                rows::to_i64("version", r.version)?,
                data,
                r.updated_at.timestamp_micros(),
                r.change_id.as_str(),
                rows::to_i64("seq", seq)?,
            ])?;
        }
    }
    {
        let mut insert = tx.prepare_cached(INSERT_OUTCOME)?;
        let mut first_applied = plan.first_applied.clone();
        first_applied
            .sort_unstable_by_key(|&i| (&changes[i].change.tenant, &changes[i].change.change_id));
        for i in first_applied {
            let change = &changes[i].change;
            let (status, version) = rows::outcome_to_row(&plan.applied.outcomes[i])?;
            insert.execute(params![
                ds,
                change.tenant.as_str(),
                change.change_id.as_str(),
                change.id.as_str(),
                status,
                version
            ])?;
        }
    }
    // A redelivered batch changes nothing; not touching the position keeps its commit free of
    // writes (and of an fsync).
    if stored.is_none() || plan.position != position {
        tx.prepare_cached(UPSERT_POSITION)?.execute(params![
            ds,
            part,
            rows::to_i64("next offset", plan.position)?
        ])?;
    }
    tx.commit()?;
    Ok(plan.applied)
}

fn batch_lease_row(row: &Row<'_>) -> rusqlite::Result<(String, i64, i64, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

/// The read-compare-write of `claim_batch`, in one writer transaction. An error (a batch id
/// still outstanding) drops the transaction, which rolls back the moved position.
fn claim_batch_in_transaction(
    conn: &mut Connection,
    dataset: &DatasetName,
    partition: u32,
    (expected, offset, next): (i64, i64, i64),
    batch_id: &str,
    expires_at_ms: i64,
) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (ds, part) = (dataset.as_str(), partition_param(partition));
    let position: Option<i64> = tx
        .prepare_cached(SELECT_DISPATCH_ONE)?
        .query_row(params![ds, part], |row| row.get(0))
        .optional()?;
    if position.unwrap_or(0) != expected {
        return Ok(false);
    }
    tx.prepare_cached(UPSERT_DISPATCH)?
        .execute(params![ds, part, next])?;
    tx.prepare_cached(INSERT_BATCH_LEASE)?.execute(params![
        ds,
        batch_id,
        part,
        offset,
        expires_at_ms
    ])?;
    tx.commit()?;
    Ok(true)
}

fn erasure_row(row: &Row<'_>) -> rusqlite::Result<(String, i64, Option<i64>, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn read_erasure(conn: &Connection, tenant: &TenantId) -> Result<Option<Erasure>, StoreError> {
    conn.prepare_cached(SELECT_ERASURE)?
        .query_row([tenant.as_str()], erasure_row)
        .optional()?
        .map(|(tenant, started_at, finished_at, erased)| {
            rows::erasure_from_row(tenant, started_at, finished_at, erased)
        })
        .transpose()
}

fn start_erasure_in_transaction(
    conn: &mut Connection,
    tenant: &TenantId,
    at: DateTime<Utc>,
) -> Result<(Erasure, bool), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(running) = read_erasure(&tx, tenant)?.filter(|e| e.finished_at.is_none()) {
        return Ok((running, false));
    }
    tx.execute(
        "INSERT INTO tenant_erasures (tenant, started_at, finished_at, erased) \
         VALUES (?1, ?2, NULL, 0) ON CONFLICT (tenant) DO UPDATE \
         SET started_at = excluded.started_at, finished_at = NULL, erased = 0",
        params![tenant.as_str(), rows::to_micros(at)],
    )?;
    let started = read_erasure(&tx, tenant)?.ok_or_else(|| StoreError::Corrupt {
        what: "erasure",
        detail: format!("tenant {tenant}: the erasure just started is not there"),
    })?;
    tx.commit()?;
    Ok((started, true))
}

fn finish_erasure_in_transaction(
    conn: &mut Connection,
    tenant: &TenantId,
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let t = tenant.as_str();
    let running = read_erasure(&tx, tenant)?.filter(|e| e.finished_at.is_none());
    if running.is_none() {
        return Ok(0);
    }
    let datasets = tx
        .prepare_cached(DATASETS_WRITTEN)?
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut live = 0;
    {
        let mut count = tx.prepare_cached(COUNT_LIVE)?;
        for ds in &datasets {
            live += count.query_row(params![ds, t], |row| row.get::<_, i64>(0))?;
        }
    }
    if live != 0 {
        return rows::to_u64("live records", live);
    }
    {
        let mut erase = tx.prepare_cached(ERASE_RECORDS)?;
        let mut raise = tx.prepare_cached(RAISE_HORIZON)?;
        let mut forget = tx.prepare_cached(ERASE_OUTCOMES)?;
        for ds in &datasets {
            // One past the highest seq deleted (the tenant's end), and the highest version.
            let mut deleted: Option<(i64, i64)> = None;
            let mut gone = erase.query(params![ds, t])?;
            while let Some(row) = gone.next()? {
                let (seq, version): (i64, i64) = (row.get(0)?, row.get(1)?);
                let (below, floor) = deleted.get_or_insert((0, 0));
                *below = (*below).max(seq + 1);
                *floor = (*floor).max(version);
            }
            drop(gone);
            if let Some((below, floor)) = deleted {
                raise.execute(params![ds, t, below, floor])?;
            }
            forget.execute(params![ds, t])?;
        }
    }
    tx.execute(
        "UPDATE tenant_erasures SET finished_at = ?2 WHERE tenant = ?1",
        params![t, rows::to_micros(at)],
    )?;
    tx.commit()?;
    Ok(0)
}

fn declare_in_transaction(conn: &mut Connection, dataset: &Dataset) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let existing: Option<i64> = tx
        .query_row(
            "SELECT partitions FROM datasets WHERE name = ?1",
            [dataset.name.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    match existing {
        Some(existing) => {
            let existing = u32::try_from(existing).map_err(|_| StoreError::Corrupt {
                what: "dataset partitions",
                detail: format!("dataset {}: {existing} partitions", dataset.name),
            })?;
            if existing != dataset.partitions {
                return Err(StoreError::DatasetMismatch {
                    dataset: dataset.name.to_string(),
                    existing,
                    requested: dataset.partitions,
                });
            }
        }
        None => {
            tx.execute(
                "INSERT INTO datasets (name, partitions) VALUES (?1, ?2)",
                params![dataset.name.as_str(), i64::from(dataset.partitions)],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[async_trait]
impl MasterStore for SqliteStore {
    async fn declare_dataset(&self, dataset: &Dataset) -> Result<(), StoreError> {
        let dataset = dataset.clone();
        self.write(move |conn| declare_in_transaction(conn, &dataset))
            .await
    }

    async fn datasets(&self) -> Result<Vec<Dataset>, StoreError> {
        self.read(|conn| {
            let mut select =
                conn.prepare_cached("SELECT name, partitions FROM datasets ORDER BY name")?;
            let rows = select.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, partitions) = row?;
                out.push(Dataset {
                    name: DatasetName::new(name).map_err(|e| StoreError::Corrupt {
                        what: "dataset name",
                        detail: e.to_string(),
                    })?,
                    partitions: u32::try_from(partitions).map_err(|_| StoreError::Corrupt {
                        what: "dataset partitions",
                        detail: format!("{partitions} partitions"),
                    })?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn apply(
        &self,
        dataset: &DatasetName,
        partition: u32,
        changes: &[LoggedChange],
        next_offset: Offset,
    ) -> Result<Applied, StoreError> {
        // The writer thread needs owned data; the copy is cheap next to the transaction.
        let dataset = dataset.clone();
        let changes = changes.to_vec();
        self.write(move |conn| {
            apply_in_transaction(conn, &dataset, partition, &changes, next_offset)
        })
        .await
    }

    async fn position(&self, dataset: &DatasetName, partition: u32) -> Result<Offset, StoreError> {
        let dataset = dataset.clone();
        self.read(move |conn| {
            let position: Option<i64> = conn
                .prepare_cached(SELECT_POSITION)?
                .query_row(
                    params![dataset.as_str(), partition_param(partition)],
                    |row| row.get(0),
                )
                .optional()?;
            rows::to_u64("position", position.unwrap_or(0))
        })
        .await
    }

    async fn get(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        id: &EntityId,
    ) -> Result<Option<Record>, StoreError> {
        let (dataset, tenant, id) = (dataset.clone(), tenant.clone(), id.clone());
        self.read(move |conn| {
            conn.prepare_cached(SELECT_RECORD)?
                .query_row(
                    params![dataset.as_str(), tenant.as_str(), id.as_str()],
                    record_row,
                )
                .optional()?
                .map(RecordRow::into_record)
                .transpose()
        })
        .await
    }

    async fn outcome(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        change_id: &ChangeId,
    ) -> Result<Option<StoredOutcome>, StoreError> {
        let (dataset, tenant, change_id) = (dataset.clone(), tenant.clone(), change_id.clone());
        self.read(move |conn| {
            conn.prepare_cached(SELECT_OUTCOME)?
                .query_row(
                    params![dataset.as_str(), tenant.as_str(), change_id.as_str()],
                    outcome_row,
                )
                .optional()?
                .map(|(id, status, version)| rows::stored_outcome_from_row(id, &status, version))
                .transpose()
        })
        .await
    }

    async fn outcomes(
        &self,
        dataset: &DatasetName,
        change_ids: &[(TenantId, ChangeId)],
    ) -> Result<Vec<Option<StoredOutcome>>, StoreError> {
        if change_ids.is_empty() {
            return Ok(Vec::new());
        }
        let (dataset, change_ids) = (dataset.clone(), change_ids.to_vec());
        // One reader job (one snapshot) for all of them, rather than a blocking task per id.
        self.read(move |conn| {
            let mut select = conn.prepare_cached(SELECT_OUTCOME)?;
            let mut out = Vec::with_capacity(change_ids.len());
            for (tenant, change_id) in &change_ids {
                let row = select
                    .query_row(
                        params![dataset.as_str(), tenant.as_str(), change_id.as_str()],
                        outcome_row,
                    )
                    .optional()?;
                out.push(
                    row.map(|(id, status, version)| {
                        rows::stored_outcome_from_row(id, &status, version)
                    })
                    .transpose()?,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn scan(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        after: Option<&EntityId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let (dataset, tenant, after) = (dataset.clone(), tenant.clone(), after.cloned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let (ds, t) = (dataset.as_str(), tenant.as_str());
            let found = match &after {
                None => conn
                    .prepare_cached(SCAN_FIRST)?
                    .query_map(params![ds, t, limit], record_row)?
                    .collect::<Result<Vec<_>, _>>()?,
                Some(after) => conn
                    .prepare_cached(SCAN_AFTER)?
                    .query_map(params![ds, t, after.as_str(), limit], record_row)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            found.into_iter().map(RecordRow::into_record).collect()
        })
        .await
    }

    async fn tenant_feed(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        from: Offset,
        live_from: Option<Offset>,
        limit: usize,
    ) -> Result<TenantFeed, StoreError> {
        let (dataset, tenant) = (dataset.clone(), tenant.clone());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let from = rows::to_i64("feed seq", from)?;
        let live_from = live_from
            .map(|l| rows::to_i64("feed live_from", l))
            .transpose()?;
        self.read(move |conn| {
            let (ds, t) = (dataset.as_str(), tenant.as_str());
            // One read transaction: end, records and horizon come from one snapshot.
            let tx = conn.unchecked_transaction()?;
            let end: i64 = tx
                .prepare_cached(SELECT_END)?
                .query_row(params![ds, t], |row| row.get(0))?;
            let records = tx
                .prepare_cached(SELECT_FEED)?
                .query_map(
                    params![ds, t, from, live_from.unwrap_or(end), limit],
                    |row| Ok((record_row(row)?, row.get::<_, i64>(6)?)),
                )?
                .map(|row| {
                    let (record, seq) = row?;
                    Ok(FeedRecord {
                        seq: rows::to_u64("record seq", seq)?,
                        record: record.into_record()?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let horizon: Option<i64> = tx
                .prepare_cached(SELECT_HORIZON)?
                .query_row(params![ds, t], |row| row.get(0))
                .optional()?;
            tx.finish()?;
            Ok(TenantFeed {
                records,
                end: rows::to_u64("tenant end", end)?,
                horizon: rows::to_u64("tenant horizon", horizon.unwrap_or(0))?,
            })
        })
        .await
    }

    async fn tenant_ends(
        &self,
        dataset: &DatasetName,
    ) -> Result<Vec<(TenantId, Offset)>, StoreError> {
        let dataset = dataset.clone();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_ENDS)?
                .query_map([dataset.as_str()], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })?
                .map(|row| {
                    let (tenant, end) = row?;
                    Ok((
                        TenantId::new(tenant).map_err(|e| StoreError::Corrupt {
                            what: "record tenant",
                            detail: e.to_string(),
                        })?,
                        rows::to_u64("tenant end", end)?,
                    ))
                })
                .collect()
        })
        .await
    }

    async fn purge_tombstones(
        &self,
        dataset: &DatasetName,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let dataset = dataset.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ds = dataset.as_str();
            // Per tenant: one past the highest purged seq, and the highest purged version.
            let mut horizons: HashMap<String, (i64, i64)> = HashMap::new();
            let mut purged = 0u64;
            {
                let mut purge = tx.prepare_cached(PURGE)?;
                let mut found = purge.query(params![ds, before.timestamp_micros(), limit])?;
                while let Some(row) = found.next()? {
                    let (tenant, seq, version): (String, i64, i64) =
                        (row.get(0)?, row.get(1)?, row.get(2)?);
                    let entry = horizons.entry(tenant).or_insert((0, 0));
                    entry.0 = entry.0.max(seq + 1);
                    entry.1 = entry.1.max(version);
                    purged += 1;
                }
            }
            {
                let mut raise = tx.prepare_cached(RAISE_HORIZON)?;
                for (tenant, (below, floor)) in &horizons {
                    raise.execute(params![ds, tenant, below, floor])?;
                }
            }
            tx.commit()?;
            Ok(purged)
        })
        .await
    }

    async fn put_subscription(
        &self,
        subscription: &Subscription,
    ) -> Result<(Subscription, bool), StoreError> {
        let subscription = subscription.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (datasets, tenants) = rows::subscription_to_row(&subscription)?;
            let name = subscription.name.as_str();
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT created_at FROM subscriptions WHERE name = ?1",
                    [name],
                    |row| row.get(0),
                )
                .optional()?;
            let created = existing.is_none();
            let created_at = existing.unwrap_or(rows::to_micros(subscription.created_at));
            tx.execute(
                "INSERT INTO subscriptions (name, datasets, tenants, created_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO UPDATE \
                 SET datasets = excluded.datasets, tenants = excluded.tenants",
                params![name, datasets, tenants, created_at],
            )?;
            tx.commit()?;
            Ok((
                Subscription {
                    created_at: rows::from_micros("subscription created_at", created_at)?,
                    ..subscription
                },
                created,
            ))
        })
        .await
    }

    async fn subscription(
        &self,
        name: &SubscriptionName,
    ) -> Result<Option<Subscription>, StoreError> {
        let name = name.clone();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_SUBSCRIPTION)?
                .query_row([name.as_str()], subscription_row)
                .optional()?
                .map(|(name, datasets, tenants, created_at)| {
                    rows::subscription_from_row(name, &datasets, tenants.as_deref(), created_at)
                })
                .transpose()
        })
        .await
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT name, datasets, tenants, created_at FROM subscriptions ORDER BY name",
            )?
            .query_map([], subscription_row)?
            .map(|row| {
                let (name, datasets, tenants, created_at) = row?;
                rows::subscription_from_row(name, &datasets, tenants.as_deref(), created_at)
            })
            .collect()
        })
        .await
    }

    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<bool, StoreError> {
        let name = name.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM subscription_progress WHERE name = ?1",
                [name.as_str()],
            )?;
            let deleted =
                tx.execute("DELETE FROM subscriptions WHERE name = ?1", [name.as_str()])?;
            tx.commit()?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn subscription_progress(
        &self,
        name: &SubscriptionName,
    ) -> Result<Vec<Progress>, StoreError> {
        let name = name.clone();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_PROGRESS)?
                .query_map([name.as_str()], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })?
                .map(|row| {
                    let (dataset, tenant, next_seq, live_from, acked_at) = row?;
                    rows::progress_from_row(dataset, tenant, next_seq, live_from, acked_at)
                })
                .collect()
        })
        .await
    }

    async fn ack(
        &self,
        name: &SubscriptionName,
        created_at: DateTime<Utc>,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let (name, progress) = (name.clone(), progress.clone());
        self.write(move |conn| {
            let written = conn.prepare_cached(ACK)?.execute(params![
                name.as_str(),
                rows::to_micros(created_at),
                progress.dataset.as_str(),
                progress.tenant.as_str(),
                rows::to_i64("progress seq", progress.position.next_seq)?,
                rows::to_i64("progress live_from", progress.position.live_from)?,
                rows::to_micros(progress.acked_at),
            ])?;
            Ok(written > 0)
        })
        .await
    }

    async fn create_token(&self, token: &StoredToken) -> Result<bool, StoreError> {
        let token = token.clone();
        self.write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO tokens (name, hash, scopes, created_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (name) DO NOTHING",
                )?
                .execute(params![
                    token.name.as_str(),
                    token.hash,
                    rows::scopes_to_row(&token)?,
                    rows::to_micros(token.created_at),
                ])?;
            Ok(inserted > 0)
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT name, hash, scopes, created_at FROM tokens ORDER BY name")?
                .query_map([], token_row)?
                .map(|row| {
                    let (name, hash, scopes, created_at) = row?;
                    rows::token_from_row(name, hash, &scopes, created_at)
                })
                .collect()
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT name, hash, scopes, created_at FROM tokens WHERE hash = ?1",
            )?
            .query_row([hash], token_row)
            .optional()?
            .map(|(name, hash, scopes, created_at)| {
                rows::token_from_row(name, hash, &scopes, created_at)
            })
            .transpose()
        })
        .await
    }

    async fn revoke_token(&self, name: &TokenName) -> Result<bool, StoreError> {
        let name = name.clone();
        self.write(move |conn| {
            Ok(conn
                .prepare_cached("DELETE FROM tokens WHERE name = ?1")?
                .execute([name.as_str()])?
                > 0)
        })
        .await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let detail = rows::audit_detail_to_row(entry)?;
        let entry = entry.clone();
        self.write(move |conn| {
            let seq: i64 = conn
                .prepare_cached(
                    "INSERT INTO audit_log (at, actor, action, target, detail) \
                     VALUES (?1, ?2, ?3, ?4, ?5) RETURNING seq",
                )?
                .query_row(
                    params![
                        rows::to_micros(entry.at),
                        entry.actor,
                        entry.action,
                        entry.target,
                        detail
                    ],
                    |row| row.get(0),
                )?;
            rows::to_u64("audit seq", seq)
        })
        .await
    }

    async fn audit_log(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        // No seq is above i64::MAX, so clamping keeps the answer (empty) right.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT seq, at, actor, action, target, detail FROM audit_log \
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![after, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })?
            .map(|row| {
                let (seq, at, actor, action, target, detail) = row?;
                rows::audit_from_row(seq, at, actor, action, target, &detail)
            })
            .collect()
        })
        .await
    }

    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (name, candidate) = (name.to_owned(), candidate.to_vec());
        // On the writer: one writer thread, so of several racers the first inserts and the
        // others read what it stored.
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, candidate],
            )?;
            let value: Vec<u8> = tx.query_row(
                "SELECT value FROM secrets WHERE name = ?1",
                [&name],
                |row| row.get(0),
            )?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    async fn start_erasure(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<(Erasure, bool), StoreError> {
        let tenant = tenant.clone();
        self.write(move |conn| start_erasure_in_transaction(conn, &tenant, at))
            .await
    }

    async fn erasure(&self, tenant: &TenantId) -> Result<Option<Erasure>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| read_erasure(conn, &tenant)).await
    }

    async fn running_erasures(&self) -> Result<Vec<Erasure>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT tenant, started_at, finished_at, erased FROM tenant_erasures \
                 WHERE finished_at IS NULL ORDER BY tenant",
            )?
            .query_map([], erasure_row)?
            .map(|row| {
                let (tenant, started_at, finished_at, erased) = row?;
                rows::erasure_from_row(tenant, started_at, finished_at, erased)
            })
            .collect()
        })
        .await
    }

    async fn erasure_progress(&self, tenant: &TenantId, erased: u64) -> Result<(), StoreError> {
        let tenant = tenant.clone();
        let erased = rows::to_i64("erasure progress", erased)?;
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE tenant_erasures SET erased = ?2 \
                 WHERE tenant = ?1 AND finished_at IS NULL",
            )?
            .execute(params![tenant.as_str(), erased])?;
            Ok(())
        })
        .await
    }

    async fn finish_erasure(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let tenant = tenant.clone();
        self.write(move |conn| finish_erasure_in_transaction(conn, &tenant, at))
            .await
    }

    async fn claim_batcher(
        &self,
        dataset: &DatasetName,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<BatcherClaim>, StoreError> {
        let (dataset, owner) = (dataset.clone(), owner.to_owned());
        let lease_until = now_ms.saturating_add(lease_ms);
        // One statement on the one writer thread, in a transaction that takes the write lock
        // before reading: another process on the same file cannot slip in between.
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let claimed: Option<(i64, Option<Vec<u8>>)> = tx
                .prepare_cached(CLAIM_BATCHER)?
                .query_row(
                    params![dataset.as_str(), owner, lease_until, now_ms],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            tx.commit()?;
            claimed
                .map(|(epoch, checkpoint)| rows::batcher_claim_from_row(epoch, checkpoint))
                .transpose()
        })
        .await
    }

    async fn renew_batcher(
        &self,
        dataset: &DatasetName,
        epoch: u64,
        now_ms: i64,
        lease_ms: i64,
        checkpoint: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let (dataset, checkpoint) = (dataset.clone(), checkpoint.map(<[u8]>::to_vec));
        let epoch = rows::to_i64("batcher epoch", epoch)?;
        let lease_until = now_ms.saturating_add(lease_ms);
        self.write(move |conn| {
            let renewed = conn.prepare_cached(RENEW_BATCHER)?.execute(params![
                dataset.as_str(),
                epoch,
                lease_until,
                checkpoint
            ])?;
            Ok(renewed > 0)
        })
        .await
    }

    async fn batch_dispatch(
        &self,
        dataset: &DatasetName,
    ) -> Result<Vec<(u32, Offset)>, StoreError> {
        let dataset = dataset.clone();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_DISPATCH)?
                .query_map([dataset.as_str()], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })?
                .map(|row| {
                    let (partition, next) = row?;
                    Ok((
                        rows::batch_partition_from_row(partition)?,
                        rows::to_u64("batch queue position", next)?,
                    ))
                })
                .collect()
        })
        .await
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
        let columns = rows::batch_claim_to_row(expected, offset)?;
        let (dataset, batch_id) = (dataset.clone(), batch_id.to_owned());
        self.write(move |conn| {
            claim_batch_in_transaction(conn, &dataset, partition, columns, &batch_id, expires_at_ms)
        })
        .await
    }

    async fn retake_expired_batch(
        &self,
        dataset: &DatasetName,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Option<BatchLease>, StoreError> {
        let dataset = dataset.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let retaken = tx
                .prepare_cached(RETAKE_BATCH)?
                .query_row(
                    params![dataset.as_str(), now_ms, expires_at_ms],
                    batch_lease_row,
                )
                .optional()?;
            tx.commit()?;
            retaken
                .map(|(batch_id, partition, offset, expires_at_ms)| {
                    rows::batch_lease_from_row(batch_id, partition, offset, expires_at_ms)
                })
                .transpose()
        })
        .await
    }

    async fn ack_batch(&self, dataset: &DatasetName, batch_id: &str) -> Result<bool, StoreError> {
        let (dataset, batch_id) = (dataset.clone(), batch_id.to_owned());
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(ACK_BATCH)?
                .execute(params![dataset.as_str(), batch_id])?
                > 0)
        })
        .await
    }

    async fn batch_lease(
        &self,
        dataset: &DatasetName,
        batch_id: &str,
    ) -> Result<Option<BatchLease>, StoreError> {
        let (dataset, batch_id) = (dataset.clone(), batch_id.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(SELECT_BATCH_LEASE)?
                .query_row(params![dataset.as_str(), batch_id], batch_lease_row)
                .optional()?
                .map(|(batch_id, partition, offset, expires_at_ms)| {
                    rows::batch_lease_from_row(batch_id, partition, offset, expires_at_ms)
                })
                .transpose()
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await?;
        // A dead writer thread makes the store useless even if reads work.
        self.write(|_| Ok(())).await
    }
}
