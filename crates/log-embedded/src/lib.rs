//! The embedded [`Log`] backend: a durable, single-node log stored in SQLite under the data dir.
//!
//! Layout of `DIR`:
//! - `LOCK`: an exclusive file lock held while the log is open, so that one process at a time
//!   owns the data dir (consumer groups and the writer's offset counters live in memory).
//! - `log.sqlite3` (+ `-wal`, `-shm`): topics, the next offset of every partition, entries and
//!   committed group offsets; see `schema.sql`. WAL mode with `synchronous=FULL`, so a committed
//!   transaction survives SIGKILL and power loss.
//!
//! Writes go through one writer thread (`writer.rs`) that group-commits everything queued into
//! one transaction and acknowledges each caller after the commit; reads use a small pool of
//! read-only connections (`read.rs`) and never block the writer. Readers waiting at the end of a
//! partition are woken by a `watch` of its end offset, sent after the commit. Consumer groups
//! (`group.rs`) are in-memory memberships over durable committed offsets. Compaction
//! (`compaction.rs`) scans on read connections and deletes through the writer in small chunks.
//!
//! This crate must never acknowledge an append before its transaction committed, and never
//! reuse an offset.

mod codec;
mod compaction;
mod group;
mod read;
mod writer;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use tenantsync_log::{
    Cleanup, CompactionStats, Entry, GroupConsumer, Log, LogError, Message, Offset, Partition,
    TopicSpec,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::group::Groups;
use crate::read::ReadPool;
use crate::writer::Command;

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "log.sqlite3";
/// File name of the lock file inside the data dir.
pub const LOCK_FILE: &str = "LOCK";
/// How often a background pass compacts every compacted topic, unless configured otherwise.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(60);
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 4096;

/// Version of `schema.sql`, stored in SQLite's `user_version`.
const SCHEMA_VERSION: i64 = 1;
/// Commands that may queue for the writer before `append` waits (back-pressure).
const WRITER_QUEUE: usize = 4096;
/// How long a connection waits on SQLite's own locks (a checkpoint) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of the embedded log.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// How often every compacted topic is compacted in the background; `None` disables it
    /// ([`Log::compact`] still works).
    pub compaction_interval: Option<Duration>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            compaction_interval: Some(DEFAULT_COMPACTION_INTERVAL),
        }
    }
}

/// Counters of committed writes (see [`EmbeddedLog::write_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions committed (one fsync each).
    pub transactions: u64,
    /// `append` calls acknowledged.
    pub appends: u64,
    /// Entries appended.
    pub entries: u64,
}

/// The embedded log. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
}

/// A topic as the running log knows it. Created by the writer after the topic's row committed.
pub(crate) struct TopicHandle {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) partitions: u32,
    /// Changes only through `ensure_topic` with a new tombstone retention.
    pub(crate) cleanup: RwLock<Cleanup>,
    /// Per partition: one past the last committed entry. Sent by the writer after each commit.
    pub(crate) ends: Vec<watch::Sender<Offset>>,
    /// Bumped after every commit that appended to any partition (wakes group members).
    pub(crate) appended: watch::Sender<u64>,
}

impl TopicHandle {
    fn new(id: i64, name: String, partitions: u32, cleanup: Cleanup, ends: Vec<Offset>) -> Self {
        TopicHandle {
            id,
            name,
            partitions,
            cleanup: RwLock::new(cleanup),
            ends: ends.into_iter().map(watch::Sender::new).collect(),
            appended: watch::Sender::new(0),
        }
    }

    pub(crate) fn cleanup(&self) -> Cleanup {
        *self.cleanup.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn end(&self, partition: Partition) -> Offset {
        *self.ends[partition as usize].borrow()
    }

    pub(crate) fn check_partition(&self, partition: Partition) -> Result<(), LogError> {
        if partition < self.partitions {
            Ok(())
        } else {
            Err(LogError::UnknownPartition {
                topic: self.name.clone(),
                partition,
                partitions: self.partitions,
            })
        }
    }
}

/// Topics by name, shared by the writer (the only one to insert) and everyone else.
pub(crate) type Topics = Arc<RwLock<HashMap<String, Arc<TopicHandle>>>>;

/// State shared by the log, its group members and its background task.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) topics: Topics,
    pub(crate) writer: mpsc::Sender<Command>,
    pub(crate) writer_stopped: watch::Receiver<bool>,
    pub(crate) readers: Arc<ReadPool>,
    pub(crate) groups: Groups,
    pub(crate) compaction: compaction::Compactor,
    pub(crate) counters: Arc<writer::WriteCounters>,
}

impl Shared {
    pub(crate) fn topic(&self, name: &str) -> Result<Arc<TopicHandle>, LogError> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic {
                topic: name.to_string(),
            })
    }

    /// Sends a command to the writer and waits for its reply.
    pub(crate) async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Command,
    ) -> Result<T, LogError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(make(tx))
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log stored in `dir`, taking the data dir's lock.
    pub async fn open(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedLog, LogError> {
        let dir = dir.to_path_buf();
        let opened = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || open_blocking(&dir))
                .await
                .map_err(|e| LogError::backend("opening the embedded log", false, e))??
        };
        let Opened {
            lock,
            conn,
            topics,
            next,
        } = opened;
        let topics: Topics = Arc::new(RwLock::new(topics));
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let counters = Arc::new(writer::WriteCounters::default());
        writer::spawn(
            conn,
            lock,
            rx,
            topics.clone(),
            next,
            stopped_tx,
            counters.clone(),
        )
        .map_err(|e| {
            LogError::backend(
                format!("starting the writer thread of {}", dir.display()),
                false,
                e,
            )
        })?;
        let shared = Arc::new(Shared {
            readers: Arc::new(ReadPool::new(dir.join(DB_FILE))),
            dir: dir.clone(),
            topics,
            writer: tx,
            writer_stopped: stopped_rx,
            groups: Groups::default(),
            compaction: compaction::Compactor::default(),
            counters,
        });
        if let Some(interval) = options.compaction_interval {
            compaction::spawn_background(Arc::downgrade(&shared), interval);
        }
        info!(dir = %dir.display(), "embedded log opened");
        Ok(EmbeddedLog { shared })
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// What the writer committed since the log was opened. `appends / transactions` is how well
    /// group commit coalesces concurrent appends.
    pub fn write_stats(&self) -> WriteStats {
        let c = &self.shared.counters;
        WriteStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            appends: c.appends.load(Ordering::Relaxed),
            entries: c.entries.load(Ordering::Relaxed),
        }
    }

    /// Stops the writer after what is queued, closes the database and releases the data dir's
    /// lock. Later calls on this log (or its group members) fail with [`LogError::Closed`].
    pub async fn close(&self) -> Result<(), LogError> {
        // A closed channel means the writer is already gone.
        let _ = self.shared.writer.send(Command::Shutdown).await;
        self.shared.readers.close();
        let mut stopped = self.shared.writer_stopped.clone();
        // An error means the writer thread is gone, which is what we wait for.
        let _ = stopped.wait_for(|s| *s).await;
        Ok(())
    }
}

struct Opened {
    lock: File,
    conn: Connection,
    topics: HashMap<String, Arc<TopicHandle>>,
    next: HashMap<i64, Vec<Offset>>,
}

fn open_blocking(dir: &Path) -> Result<Opened, LogError> {
    let io = |what: &str, e: std::io::Error| {
        LogError::backend(format!("{what} {}", dir.display()), false, e)
    };
    std::fs::create_dir_all(dir).map_err(|e| io("creating data dir", e))?;
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| io("opening the lock file in", e))?;
    match fs4::FileExt::try_lock(&lock) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            return Err(LogError::Config(format!(
                "data dir {} is in use by another tenantsync process",
                dir.display()
            )));
        }
        Err(fs4::TryLockError::Error(e)) => return Err(io("locking data dir", e)),
    }
    let path = dir.join(DB_FILE);
    let sql = |what: &str| {
        let what = format!("{what} ({})", path.display());
        move |e: rusqlite::Error| writer::sql_error(&what, e)
    };
    let conn = Connection::open(&path).map_err(sql("opening the database"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql("setting busy timeout"))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sql("enabling WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LogError::Config(format!(
            "the database {} cannot use WAL mode (got {mode})",
            path.display()
        )));
    }
    // FULL: the WAL is fsynced at every commit, so an acknowledged append survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql("setting synchronous=FULL"))?;
    conn.set_prepared_statement_cache_capacity(64);
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql("reading the schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(LogError::Config(format!(
            "the database {} has schema version {version}, newer than this tenantsync \
             understands ({SCHEMA_VERSION})",
            path.display()
        )));
    }
    conn.execute_batch(include_str!("schema.sql"))
        .map_err(sql("creating the schema"))?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql("writing the schema version"))?;

    let (topics, next) = load_topics(&conn).map_err(sql("loading topics"))?;
    Ok(Opened {
        lock,
        conn,
        topics,
        next,
    })
}

/// Loads every topic and the next offset of each of its partitions.
#[allow(clippy::type_complexity)]
pub(crate) fn load_topics(
    conn: &Connection,
) -> rusqlite::Result<(HashMap<String, Arc<TopicHandle>>, HashMap<i64, Vec<Offset>>)> {
    let next = load_next_offsets(conn)?;
    let mut stmt =
        conn.prepare("SELECT id, name, partitions, cleanup, tombstone_retention_ms FROM topics")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, Option<i64>>(4)?,
        ))
    })?;
    let mut topics = HashMap::new();
    for row in rows {
        let (id, name, partitions, cleanup, retention_ms) = row?;
        let cleanup = if cleanup == "compact" {
            Cleanup::Compact {
                tombstone_retention: Duration::from_millis(retention_ms.unwrap_or(0).max(0) as u64),
            }
        } else {
            Cleanup::Delete
        };
        let partitions = partitions as u32;
        let mut ends = next.get(&id).cloned().unwrap_or_default();
        if ends.len() != partitions as usize {
            warn!(
                topic = %name,
                partitions,
                rows = ends.len(),
                "partition rows do not match the topic's partition count; missing ones start at 0"
            );
            ends.resize(partitions as usize, 0);
        }
        topics.insert(
            name.clone(),
            Arc::new(TopicHandle::new(id, name, partitions, cleanup, ends)),
        );
    }
    Ok((topics, next))
}

/// The durable next offset of every partition, by topic id.
pub(crate) fn load_next_offsets(conn: &Connection) -> rusqlite::Result<HashMap<i64, Vec<Offset>>> {
    let mut stmt =
        conn.prepare("SELECT topic_id, partition, next_offset FROM partitions ORDER BY 1, 2")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    let mut next: HashMap<i64, Vec<Offset>> = HashMap::new();
    for row in rows {
        let (topic, partition, offset) = row?;
        let v = next.entry(topic).or_default();
        let partition = partition as usize;
        if v.len() <= partition {
            v.resize(partition + 1, 0);
        }
        v[partition] = offset as Offset;
    }
    Ok(next)
}

/// `now + wait`, saturating instead of overflowing on absurd waits.
pub(crate) fn deadline_after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

fn validate_spec(spec: &TopicSpec) -> Result<(), LogError> {
    if spec.name.is_empty() {
        return Err(LogError::Config("topic name must not be empty".to_string()));
    }
    if spec.partitions == 0 || spec.partitions > MAX_PARTITIONS {
        return Err(LogError::Config(format!(
            "topic {} must have 1 to {MAX_PARTITIONS} partitions, not {}",
            spec.name, spec.partitions
        )));
    }
    Ok(())
}

#[async_trait]
impl Log for EmbeddedLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        validate_spec(spec)?;
        if let Ok(topic) = self.shared.topic(&spec.name) {
            if topic.partitions != spec.partitions {
                return Err(LogError::TopicMismatch {
                    topic: spec.name.clone(),
                    expected: spec.partitions,
                    actual: topic.partitions,
                });
            }
            if topic.cleanup() == spec.cleanup {
                return Ok(());
            }
        }
        // Creating, or changing the cleanup: the writer decides, against the database.
        let spec = spec.clone();
        self.shared
            .call(|reply| Command::EnsureTopic { spec, reply })
            .await
    }

    async fn append(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Offset>, LogError> {
        let handle = self.shared.topic(topic)?;
        for m in &messages {
            handle.check_partition(m.partition)?;
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.shared
            .call(|reply| Command::Append {
                outputs: vec![(handle, messages)],
                commit: None,
                reply,
            })
            .await
    }

    async fn read(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Entry>, LogError> {
        let handle = self.shared.topic(topic)?;
        handle.check_partition(partition)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = deadline_after(wait);
        let mut end_rx = handle.ends[partition as usize].subscribe();
        loop {
            // Marked seen before reading, so an append committed during the read wakes us.
            let end = *end_rx.borrow_and_update();
            if from < end {
                let entries = self
                    .shared
                    .readers
                    .read_entries(handle.clone(), partition, from, max)
                    .await?;
                if !entries.is_empty() {
                    return Ok(entries);
                }
                // Everything from `from` to the end was compacted away: wait for more.
            }
            match tokio::time::timeout_at(deadline, end_rx.changed()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(Err(_)) => return Err(LogError::Closed),
                Ok(Ok(())) => {}
            }
        }
    }

    async fn end_offset(&self, topic: &str, partition: Partition) -> Result<Offset, LogError> {
        let handle = self.shared.topic(topic)?;
        handle.check_partition(partition)?;
        Ok(handle.end(partition))
    }

    async fn consume(&self, group: &str, topic: &str) -> Result<Box<dyn GroupConsumer>, LogError> {
        let handle = self.shared.topic(topic)?;
        let member = group::join(self.shared.clone(), group, handle).await?;
        Ok(Box::new(member))
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
    ) -> Result<Option<Offset>, LogError> {
        let handle = self.shared.topic(topic)?;
        handle.check_partition(partition)?;
        self.shared
            .readers
            .committed(group.to_string(), handle, partition)
            .await
    }

    async fn compact(&self, topic: &str) -> Result<CompactionStats, LogError> {
        let handle = self.shared.topic(topic)?;
        compaction::compact_topic(&self.shared, &handle).await
    }

    async fn check(&self) -> Result<(), LogError> {
        if self.shared.writer.is_closed() {
            return Err(LogError::Closed);
        }
        self.shared.readers.check().await
    }
}
