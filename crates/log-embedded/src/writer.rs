//! The writer thread: the only code that writes to the database.
//!
//! Callers send [`Command`]s over a bounded channel. The thread takes one, drains whatever else
//! is queued (up to [`MAX_BATCH_ENTRIES`]), applies all of it in one `IMMEDIATE` transaction,
//! commits (one fsync for every caller: group commit), then publishes the new end offsets and
//! acknowledges each caller. It must never acknowledge before the commit returned, and after a
//! failed transaction it reloads its offset counters from the database so no offset is skipped
//! or reused.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior, params};
use tenantsync_log::{Cleanup, LogError, Message, Offset, Partition, TopicSpec};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::{TopicHandle, Topics, codec};

/// Most entries one transaction takes from the queue (a bigger single append goes alone).
const MAX_BATCH_ENTRIES: usize = 50_000;

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// A request to the writer.
pub(crate) enum Command {
    EnsureTopic {
        spec: TopicSpec,
        reply: Reply<()>,
    },
    /// Appends to one topic or several (a member's publish), in one transaction. Partitions
    /// were checked by the caller. With `commit`, the group's offsets are written in the same
    /// transaction as the entries. Replies the offsets of every topic's messages, in order.
    Append {
        outputs: Vec<(Arc<TopicHandle>, Vec<Message>)>,
        commit: Option<GroupCommit>,
        reply: Reply<Vec<Offset>>,
    },
    Commit {
        group: String,
        topic_id: i64,
        offsets: Vec<(Partition, Offset)>,
        reply: Reply<()>,
    },
    /// Deletes entries of one partition for compaction; replies (superseded, tombstones)
    /// actually removed. Each offset says whether it is removed as an expired tombstone.
    Delete {
        topic_id: i64,
        partition: Partition,
        offsets: Vec<(Offset, bool)>,
        reply: Reply<(u64, u64)>,
    },
    /// Stop after what was queued before it.
    Shutdown,
}

/// A group's committed offsets for one topic.
pub(crate) struct GroupCommit {
    pub(crate) group: String,
    pub(crate) topic_id: i64,
    pub(crate) offsets: Vec<(Partition, Offset)>,
}

impl Command {
    fn weight(&self) -> usize {
        match self {
            Command::Append { outputs, .. } => outputs.iter().map(|(_, m)| m.len()).sum(),
            Command::Delete { offsets, .. } => offsets.len(),
            _ => 1,
        }
    }
}

/// Maps a SQLite error to a log error, deciding here (and only here) whether it is transient.
pub(crate) fn sql_error(context: &str, error: rusqlite::Error) -> LogError {
    let transient = matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull)
    );
    LogError::backend(context.to_string(), transient, error)
}

/// Starts the writer thread. It owns the connection and the data dir's lock, and releases the
/// lock only after the connection is closed.
pub(crate) fn spawn(
    conn: Connection,
    lock: File,
    rx: mpsc::Receiver<Command>,
    topics: Topics,
    next: HashMap<i64, Vec<Offset>>,
    stopped: watch::Sender<bool>,
    stats: Arc<WriteCounters>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tenantsync-log-writer".to_string())
        .spawn(move || {
            let mut writer = Writer {
                conn,
                topics,
                next,
                stats,
            };
            writer.run(rx);
            drop(writer);
            drop(lock);
            stopped.send_replace(true);
        })
        .map(|_| ())
}

/// Counters of committed work, for [`crate::EmbeddedLog::write_stats`].
#[derive(Default)]
pub(crate) struct WriteCounters {
    pub(crate) transactions: AtomicU64,
    pub(crate) appends: AtomicU64,
    pub(crate) entries: AtomicU64,
}

struct Writer {
    stats: Arc<WriteCounters>,
    conn: Connection,
    topics: Topics,
    /// Next offset per partition, by topic id. Ahead of the published ends only inside a batch.
    next: HashMap<i64, Vec<Offset>>,
}

/// What a command will get once the batch committed.
enum Pending {
    Offsets(Reply<Vec<Offset>>, Vec<Offset>),
    Unit(Reply<()>),
    Removed(Reply<(u64, u64)>, (u64, u64)),
    /// Rejected before writing anything; does not depend on the commit.
    Rejected(Reply<()>, LogError),
}

/// Effects of a batch to publish after its commit.
#[derive(Default)]
struct Effects {
    created: Vec<Arc<TopicHandle>>,
    retention: Vec<(Arc<TopicHandle>, Cleanup)>,
    /// Partitions appended to: topic id -> (handle, partitions touched).
    appended: HashMap<i64, (Arc<TopicHandle>, BTreeSet<Partition>)>,
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut weight = first.weight();
            let mut batch = vec![first];
            while weight < MAX_BATCH_ENTRIES {
                match rx.try_recv() {
                    Ok(command) => {
                        weight += command.weight();
                        batch.push(command);
                    }
                    Err(_) => break,
                }
            }
            let shutdown = batch.iter().any(|c| matches!(c, Command::Shutdown));
            self.process(batch);
            if shutdown {
                break;
            }
        }
        // Commands still queued are dropped: their callers see `Closed`.
        rx.close();
        debug!("embedded log writer stopped");
    }

    fn process(&mut self, batch: Vec<Command>) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut pending = Vec::with_capacity(batch.len());
        let mut effects = Effects::default();
        let result = self.apply_all(batch, now_ms, &mut pending, &mut effects);
        match result {
            Ok(()) => {
                self.count(&pending);
                self.publish(effects);
                for p in pending {
                    match p {
                        Pending::Offsets(reply, offsets) => {
                            let _ = reply.send(Ok(offsets));
                        }
                        Pending::Unit(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                        Pending::Removed(reply, counts) => {
                            let _ = reply.send(Ok(counts));
                        }
                        Pending::Rejected(reply, error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
            }
            Err(error) => {
                warn!(%error, commands = pending.len(), "embedded log write failed; rolled back");
                self.reload_offsets();
                let fail = || sql_error("writing to the embedded log", clone_sql_error(&error));
                for p in pending {
                    match p {
                        Pending::Offsets(reply, _) => {
                            let _ = reply.send(Err(fail()));
                        }
                        Pending::Unit(reply) => {
                            let _ = reply.send(Err(fail()));
                        }
                        Pending::Removed(reply, _) => {
                            let _ = reply.send(Err(fail()));
                        }
                        Pending::Rejected(reply, error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
            }
        }
    }

    /// Applies every command in one transaction. On error, `pending` still holds every
    /// command's reply (the caller fails them).
    fn apply_all(
        &mut self,
        batch: Vec<Command>,
        now_ms: i64,
        pending: &mut Vec<Pending>,
        effects: &mut Effects,
    ) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate);
        let tx = match tx {
            Ok(tx) => tx,
            Err(e) => {
                for command in batch {
                    pending.extend(unapplied(command));
                }
                return Err(e);
            }
        };
        let mut failure = None;
        for command in batch {
            if failure.is_some() {
                pending.extend(unapplied(command));
                continue;
            }
            match command {
                Command::Append {
                    outputs,
                    commit: group_commit,
                    reply,
                } => match append_all(&tx, &mut self.next, &outputs, now_ms).and_then(|offsets| {
                    if let Some(c) = &group_commit {
                        commit(&tx, &c.group, c.topic_id, &c.offsets)?;
                    }
                    Ok(offsets)
                }) {
                    Ok(offsets) => {
                        for (topic, messages) in &outputs {
                            let touched = &mut effects
                                .appended
                                .entry(topic.id)
                                .or_insert_with(|| (topic.clone(), BTreeSet::new()))
                                .1;
                            touched.extend(messages.iter().map(|m| m.partition));
                        }
                        pending.push(Pending::Offsets(reply, offsets));
                    }
                    Err(e) => {
                        failure = Some(e);
                        pending.push(Pending::Offsets(reply, Vec::new()));
                    }
                },
                Command::EnsureTopic { spec, reply } => {
                    match ensure_topic(&tx, &self.topics, &mut self.next, effects, &spec) {
                        Ok(Ok(())) => pending.push(Pending::Unit(reply)),
                        Ok(Err(rejected)) => pending.push(Pending::Rejected(reply, rejected)),
                        Err(e) => {
                            failure = Some(e);
                            pending.push(Pending::Unit(reply));
                        }
                    }
                }
                Command::Commit {
                    group,
                    topic_id,
                    offsets,
                    reply,
                } => {
                    if let Err(e) = commit(&tx, &group, topic_id, &offsets) {
                        failure = Some(e);
                    }
                    pending.push(Pending::Unit(reply));
                }
                Command::Delete {
                    topic_id,
                    partition,
                    offsets,
                    reply,
                } => match delete(&tx, topic_id, partition, &offsets) {
                    Ok(counts) => pending.push(Pending::Removed(reply, counts)),
                    Err(e) => {
                        failure = Some(e);
                        pending.push(Pending::Removed(reply, (0, 0)));
                    }
                },
                Command::Shutdown => {}
            }
        }
        if let Some(e) = failure {
            // Dropping the transaction rolls it back.
            drop(tx);
            return Err(e);
        }
        // The durable next offsets go in the same transaction as the entries.
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE partitions SET next_offset = ?3 WHERE topic_id = ?1 AND partition = ?2",
            )?;
            for (id, (_, touched)) in &effects.appended {
                let next = &self.next[id];
                for p in touched {
                    stmt.execute(params![id, p, next[*p as usize] as i64])?;
                }
            }
        }
        tx.commit()
    }

    fn count(&self, pending: &[Pending]) {
        let (mut appends, mut entries) = (0, 0);
        for p in pending {
            if let Pending::Offsets(_, offsets) = p {
                appends += 1;
                entries += offsets.len() as u64;
            }
        }
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        self.stats.appends.fetch_add(appends, Ordering::Relaxed);
        self.stats.entries.fetch_add(entries, Ordering::Relaxed);
    }

    /// After a commit: new topics become visible, then readers learn the new ends.
    fn publish(&mut self, effects: Effects) {
        if !effects.created.is_empty() {
            let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
            for handle in effects.created {
                topics.insert(handle.name.clone(), handle);
            }
        }
        for (handle, cleanup) in effects.retention {
            *handle.cleanup.write().unwrap_or_else(|e| e.into_inner()) = cleanup;
        }
        for (id, (handle, touched)) in effects.appended {
            let next = &self.next[&id];
            for p in touched {
                handle.ends[p as usize].send_replace(next[p as usize]);
            }
            handle.appended.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// After a rollback the in-memory counters may be ahead: take them from the database, or,
    /// if that fails too, from the published ends (which only ever follow commits).
    fn reload_offsets(&mut self) {
        match crate::load_next_offsets(&self.conn) {
            Ok(next) => self.next = next,
            Err(error) => {
                warn!(%error, "reloading offsets after a failed write; using the published ends");
                let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
                self.next = topics
                    .values()
                    .map(|t| (t.id, (0..t.partitions).map(|p| t.end(p)).collect()))
                    .collect();
            }
        }
    }
}

/// The reply of a command that was not applied because an earlier one failed the batch.
fn unapplied(command: Command) -> Option<Pending> {
    match command {
        Command::Append { reply, .. } => Some(Pending::Offsets(reply, Vec::new())),
        Command::EnsureTopic { reply, .. } | Command::Commit { reply, .. } => {
            Some(Pending::Unit(reply))
        }
        Command::Delete { reply, .. } => Some(Pending::Removed(reply, (0, 0))),
        Command::Shutdown => None,
    }
}

/// `rusqlite::Error` is not `Clone`; every caller of a failed batch gets the same description.
fn clone_sql_error(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(e, msg) => rusqlite::Error::SqliteFailure(*e, msg.clone()),
        other => rusqlite::Error::ToSqlConversionFailure(other.to_string().into()),
    }
}

fn append_all(
    tx: &Transaction<'_>,
    next: &mut HashMap<i64, Vec<Offset>>,
    outputs: &[(Arc<TopicHandle>, Vec<Message>)],
    now_ms: i64,
) -> rusqlite::Result<Vec<Offset>> {
    let mut offsets = Vec::with_capacity(outputs.iter().map(|(_, m)| m.len()).sum());
    for (topic, messages) in outputs {
        offsets.extend(append(tx, next, topic, messages, now_ms)?);
    }
    Ok(offsets)
}

fn append(
    tx: &Transaction<'_>,
    next: &mut HashMap<i64, Vec<Offset>>,
    topic: &TopicHandle,
    messages: &[Message],
    now_ms: i64,
) -> rusqlite::Result<Vec<Offset>> {
    let counters = next
        .entry(topic.id)
        .or_insert_with(|| vec![0; topic.partitions as usize]);
    let mut stmt = tx.prepare_cached(
        "INSERT INTO entries (topic_id, partition, offset, timestamp_ms, key, value, headers) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut offsets = Vec::with_capacity(messages.len());
    for m in messages {
        let counter = &mut counters[m.partition as usize];
        let offset = *counter;
        stmt.execute(params![
            topic.id,
            m.partition,
            offset as i64,
            now_ms,
            m.key,
            m.value,
            codec::encode_headers(&m.headers),
        ])?;
        *counter += 1;
        offsets.push(offset);
    }
    Ok(offsets)
}

fn cleanup_columns(cleanup: Cleanup) -> (&'static str, Option<i64>) {
    match cleanup {
        Cleanup::Delete => ("delete", None),
        Cleanup::Compact {
            tombstone_retention,
        } => (
            "compact",
            Some(tombstone_retention.as_millis().min(i64::MAX as u128) as i64),
        ),
    }
}

/// Creates a topic, or checks it against the spec. The outer error fails the batch; the inner
/// one rejects only this command.
fn ensure_topic(
    tx: &Transaction<'_>,
    topics: &Topics,
    next: &mut HashMap<i64, Vec<Offset>>,
    effects: &mut Effects,
    spec: &TopicSpec,
) -> rusqlite::Result<Result<(), LogError>> {
    let existing = topics
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&spec.name)
        .cloned()
        .or_else(|| {
            effects
                .created
                .iter()
                .find(|h| h.name == spec.name)
                .cloned()
        });
    if let Some(topic) = existing {
        if topic.partitions != spec.partitions {
            return Ok(Err(LogError::TopicMismatch {
                topic: spec.name.clone(),
                expected: spec.partitions,
                actual: topic.partitions,
            }));
        }
        let current = effects
            .retention
            .iter()
            .rev()
            .find(|(h, _)| h.id == topic.id)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| topic.cleanup());
        return match (current, spec.cleanup) {
            (a, b) if a == b => Ok(Ok(())),
            (Cleanup::Compact { .. }, Cleanup::Compact { .. }) => {
                // A new tombstone retention is configuration, not a different topic.
                let (_, retention) = cleanup_columns(spec.cleanup);
                tx.prepare_cached("UPDATE topics SET tombstone_retention_ms = ?2 WHERE id = ?1")?
                    .execute(params![topic.id, retention])?;
                effects.retention.push((topic, spec.cleanup));
                Ok(Ok(()))
            }
            (current, wanted) => Ok(Err(LogError::Config(format!(
                "topic {} exists with cleanup {current:?} but {wanted:?} is configured",
                spec.name
            )))),
        };
    }
    let (cleanup, retention) = cleanup_columns(spec.cleanup);
    tx.prepare_cached(
        "INSERT INTO topics (name, partitions, cleanup, tombstone_retention_ms) \
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![spec.name, spec.partitions, cleanup, retention])?;
    let id = tx.last_insert_rowid();
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO partitions (topic_id, partition, next_offset) VALUES (?1, ?2, 0)",
        )?;
        for p in 0..spec.partitions {
            stmt.execute(params![id, p])?;
        }
    }
    next.insert(id, vec![0; spec.partitions as usize]);
    effects.created.push(Arc::new(TopicHandle::new(
        id,
        spec.name.clone(),
        spec.partitions,
        spec.cleanup,
        vec![0; spec.partitions as usize],
    )));
    Ok(Ok(()))
}

fn commit(
    tx: &Transaction<'_>,
    group: &str,
    topic_id: i64,
    offsets: &[(Partition, Offset)],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO group_offsets (group_name, topic_id, partition, next_offset) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (group_name, topic_id, partition) DO UPDATE SET next_offset = excluded.next_offset",
    )?;
    for (p, o) in offsets {
        stmt.execute(params![
            group,
            topic_id,
            p,
            (*o).min(i64::MAX as u64) as i64
        ])?;
    }
    Ok(())
}

fn delete(
    tx: &Transaction<'_>,
    topic_id: i64,
    partition: Partition,
    offsets: &[(Offset, bool)],
) -> rusqlite::Result<(u64, u64)> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM entries WHERE topic_id = ?1 AND partition = ?2 AND offset = ?3",
    )?;
    let (mut superseded, mut tombstones) = (0, 0);
    for (offset, tombstone) in offsets {
        let n = stmt.execute(params![topic_id, partition, *offset as i64])? as u64;
        if *tombstone {
            tombstones += n;
        } else {
            superseded += n;
        }
    }
    Ok((superseded, tombstones))
}
