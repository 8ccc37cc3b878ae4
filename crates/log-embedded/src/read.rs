//! Read-only connections to the log's database, pooled, used on tokio's blocking pool.
//!
//! In WAL mode readers see the last committed transaction and never block the writer, nor are
//! blocked by it. Connections are opened with `query_only`, so this module can never write.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, params};
use tenantsync_log::{Entry, LogError, Offset, Partition};

use crate::writer::sql_error;
use crate::{BUSY_TIMEOUT, TopicHandle, codec};

/// Idle connections kept open; more may be opened under load and are then closed.
const MAX_IDLE: usize = 8;

pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

/// One row of a compaction scan.
pub(crate) struct KeyRow {
    pub(crate) offset: Offset,
    pub(crate) key: Vec<u8>,
    pub(crate) tombstone: bool,
    pub(crate) timestamp_ms: i64,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Drops idle connections and fails later reads with `Closed`.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn take(&self) -> Result<Connection, LogError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        if let Some(conn) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(conn);
        }
        let context = || format!("opening a read connection to {}", self.path.display());
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_error(&context(), e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_error(&context(), e))?;
        conn.pragma_update(None, "query_only", true)
            .map_err(|e| sql_error(&context(), e))?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Runs `f` on a pooled connection on the blocking pool.
    pub(crate) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            pool.put(conn);
            result
        })
        .await
        .map_err(|e| LogError::backend("reading the embedded log", false, e))?
    }

    /// Up to `max` entries of a partition with offsets `>= from`, in order.
    pub(crate) async fn read_entries(
        self: &Arc<Self>,
        topic: Arc<TopicHandle>,
        partition: Partition,
        from: Offset,
        max: usize,
    ) -> Result<Vec<Entry>, LogError> {
        self.run(move |conn| read_entries(conn, &topic, partition, from, max))
            .await
    }

    /// Reads partitions in the order given, `(partition, from)` each, until `max` entries in
    /// all; one trip to the blocking pool. Returns `(partition, from, asked, entries)` for each
    /// partition read.
    pub(crate) async fn read_many(
        self: &Arc<Self>,
        topic: Arc<TopicHandle>,
        reads: Vec<(Partition, Offset)>,
        max: usize,
    ) -> Result<Vec<(Partition, Offset, usize, Vec<Entry>)>, LogError> {
        self.run(move |conn| {
            let mut out = Vec::new();
            let mut left = max;
            for (p, from) in reads {
                if left == 0 {
                    break;
                }
                let entries = read_entries(conn, &topic, p, from, left)?;
                left -= entries.len();
                out.push((p, from, left + entries.len(), entries));
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn committed(
        self: &Arc<Self>,
        group: String,
        topic: Arc<TopicHandle>,
        partition: Partition,
    ) -> Result<Option<Offset>, LogError> {
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT next_offset FROM group_offsets \
                     WHERE group_name = ?1 AND topic_id = ?2 AND partition = ?3",
                )
                .map_err(|e| sql_error("reading a committed offset", e))?;
            let mut rows = stmt
                .query(params![group, topic.id, partition])
                .map_err(|e| sql_error("reading a committed offset", e))?;
            match rows
                .next()
                .map_err(|e| sql_error("reading a committed offset", e))?
            {
                Some(row) => {
                    let o: i64 = row
                        .get(0)
                        .map_err(|e| sql_error("reading a committed offset", e))?;
                    Ok(Some(o.max(0) as Offset))
                }
                None => Ok(None),
            }
        })
        .await
    }

    /// Every committed offset of a group on a topic, by partition.
    pub(crate) async fn committed_all(
        self: &Arc<Self>,
        group: String,
        topic: Arc<TopicHandle>,
    ) -> Result<Vec<Option<Offset>>, LogError> {
        self.run(move |conn| {
            let context = |e| {
                sql_error(
                    &format!(
                        "reading committed offsets of group {group} on topic {}",
                        topic.name
                    ),
                    e,
                )
            };
            let mut out = vec![None; topic.partitions as usize];
            let mut stmt = conn
                .prepare_cached(
                    "SELECT partition, next_offset FROM group_offsets \
                     WHERE group_name = ?1 AND topic_id = ?2",
                )
                .map_err(context)?;
            let mut rows = stmt.query(params![group, topic.id]).map_err(context)?;
            while let Some(row) = rows.next().map_err(context)? {
                let p: i64 = row.get(0).map_err(context)?;
                let o: i64 = row.get(1).map_err(context)?;
                if let Some(slot) = out.get_mut(p as usize) {
                    *slot = Some(o.max(0) as Offset);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Keys of up to `max` entries of a partition with `from <= offset < end`, without values.
    pub(crate) async fn scan_keys(
        self: &Arc<Self>,
        topic: Arc<TopicHandle>,
        partition: Partition,
        from: Offset,
        end: Offset,
        max: usize,
    ) -> Result<Vec<KeyRow>, LogError> {
        self.run(move |conn| {
            let context = |e| {
                sql_error(
                    &format!(
                        "scanning partition {partition} of topic {} for compaction",
                        topic.name
                    ),
                    e,
                )
            };
            let mut stmt = conn
                .prepare_cached(
                    "SELECT offset, key, value IS NULL, timestamp_ms FROM entries \
                     WHERE topic_id = ?1 AND partition = ?2 AND offset >= ?3 AND offset < ?4 \
                     ORDER BY offset LIMIT ?5",
                )
                .map_err(context)?;
            let rows = stmt
                .query_map(
                    params![topic.id, partition, from as i64, end as i64, max as i64],
                    |row| {
                        Ok(KeyRow {
                            offset: row.get::<_, i64>(0)? as Offset,
                            key: row.get(1)?,
                            tombstone: row.get(2)?,
                            timestamp_ms: row.get(3)?,
                        })
                    },
                )
                .map_err(context)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(context)
        })
        .await
    }

    pub(crate) async fn check(self: &Arc<Self>) -> Result<(), LogError> {
        self.run(|conn| {
            conn.query_row("SELECT count(*) FROM topics", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|_| ())
            .map_err(|e| sql_error("checking the embedded log", e))
        })
        .await
    }
}

fn read_entries(
    conn: &Connection,
    topic: &TopicHandle,
    partition: Partition,
    from: Offset,
    max: usize,
) -> Result<Vec<Entry>, LogError> {
    let context = || format!("reading partition {partition} of topic {}", topic.name);
    let mut stmt = conn
        .prepare_cached(
            "SELECT offset, timestamp_ms, key, value, headers FROM entries \
             WHERE topic_id = ?1 AND partition = ?2 AND offset >= ?3 ORDER BY offset LIMIT ?4",
        )
        .map_err(|e| sql_error(&context(), e))?;
    let limit = max.min(i64::MAX as usize) as i64;
    let from = from.min(i64::MAX as u64) as i64;
    let mut rows = stmt
        .query(params![topic.id, partition, from, limit])
        .map_err(|e| sql_error(&context(), e))?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next().map_err(|e| sql_error(&context(), e))? {
        let offset: i64 = row.get(0).map_err(|e| sql_error(&context(), e))?;
        let headers: Option<Vec<u8>> = row.get(4).map_err(|e| sql_error(&context(), e))?;
        let headers = codec::decode_headers(headers.as_deref()).map_err(|e| {
            LogError::backend(
                format!("{} at offset {offset}", context()),
                false,
                format!("corrupt headers: {e}"),
            )
        })?;
        entries.push(Entry {
            partition,
            offset: offset as Offset,
            timestamp_ms: row.get(1).map_err(|e| sql_error(&context(), e))?,
            key: row.get(2).map_err(|e| sql_error(&context(), e))?,
            value: row.get(3).map_err(|e| sql_error(&context(), e))?,
            headers,
        });
    }
    Ok(entries)
}
