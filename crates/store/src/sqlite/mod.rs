//! The SQLite backend: the default master store, one file under the data dir.
//!
//! One writer connection lives on a dedicated thread and runs every write (`apply`,
//! `declare_dataset`) in order, each in one `BEGIN IMMEDIATE` transaction; SQLite allows one
//! writer at a time anyway, and one thread keeps its statement cache warm. Reads run on a few
//! reader connections in `spawn_blocking`; in WAL mode they read the last committed state and
//! never wait for the writer. The journal is WAL with `synchronous=FULL`, so a commit that
//! returned survives a power loss.
//!
//! This module holds the connections, the writer thread and migrations; each concern's trait is
//! implemented in a module of its own, with its statements. None of them may block an async
//! worker thread on SQLite, or decide what a change does itself: that is [`crate::apply`].

mod access;
mod coordination;
mod erasure;
mod feed;
mod push;
mod records;
mod rejected;
mod schemas;
mod sources;
mod subscriptions;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior, params};
use tokio::sync::{Semaphore, oneshot};
use tracing::{error, info};

use crate::StoreError;
use crate::migrations::{self, Migration};
use crate::rows::RecordRow;

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

/// Raises a tenant's horizon and version floor, never lowering either: what purging tombstones
/// and finishing an erasure both do.
const RAISE_HORIZON: &str = "INSERT INTO tenant_horizons \
     (dataset, tenant, purged_below, version_floor) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (dataset, tenant) DO UPDATE \
     SET purged_below = max(purged_below, excluded.purged_below), \
     version_floor = max(version_floor, excluded.version_floor)";

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

fn partition_param(partition: u32) -> i64 {
    i64::from(partition)
}
