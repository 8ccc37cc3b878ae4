//! The partitioned, ordered, durable log that carries every dataset's changes and state.
//!
//! This crate holds the trait, [`Log`], and its conformance suite ([`conformance`], behind the
//! `conformance` feature). The backends live in their own crates and the binary picks one by
//! URL scheme:
//! - `tenantsync-log-embedded` (`embedded://DIR`): a single-node log stored in SQLite under the
//!   data dir; no broker.
//! - `tenantsync-log-kafka` (`kafka://HOST:PORT,...`): any Kafka-protocol cluster through
//!   librdkafka.
//!
//! A backend is done when the conformance suite passes on it. This crate knows nothing of
//! tenants or records: keys and values are bytes.

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;

use std::time::Duration;

use async_trait::async_trait;

pub use error::LogError;

/// Position of an entry within one partition. The first entry of a partition has offset 0;
/// offsets grow by one per appended entry. Compaction removes entries but never reuses or
/// renumbers offsets, so a reader may see gaps; on Kafka, a transaction's commit or abort marker
/// and an aborted transaction's entries take offsets that no reader sees, which are gaps too.
pub type Offset = u64;

/// A partition number, `0..partitions`.
pub type Partition = u32;

/// How a topic is cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Entries are kept (a changes log). Retention, if any, is the operator's business.
    Delete,
    /// Only the last entry per key must be kept; a tombstone (an entry with no value) may be
    /// dropped once it is older than `tombstone_retention` (a state log).
    Compact { tombstone_retention: Duration },
}

/// What a topic must look like. [`Log::ensure_topic`] creates it or checks that it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    pub cleanup: Cleanup,
}

/// An entry to append. The caller chooses the partition (tenantsync partitions by tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: Partition,
    pub key: Vec<u8>,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// An entry read back from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub partition: Partition,
    pub offset: Offset,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Append time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Entry {
    /// The value of the first header named `name`, if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// What a call to [`Log::compact`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionStats {
    pub superseded_removed: u64,
    pub tombstones_removed: u64,
}

/// A partitioned, append-only, durable log.
///
/// # Contract
///
/// - **Durability.** [`append`](Log::append) returns `Ok` only once every message is durable
///   (fsynced by the embedded backend; acknowledged by all in-sync replicas on Kafka). An entry
///   whose append returned `Ok` survives any crash of any process.
/// - **Order.** Within a partition, entries are read in offset order, and messages of one
///   `append` call land in the order given. Across partitions there is no order.
/// - **At-least-once, never torn.** If `append` fails or the caller crashes before it returns,
///   any subset of that call's messages may have been written, each whole; a retry may then
///   write some twice. Readers must tolerate duplicates. Nothing else is ever duplicated.
/// - **Offsets.** See [`Offset`]. [`end_offset`](Log::end_offset) is one past the last durable
///   entry; an entry below it is readable unless compaction removed it or it is not a readable
///   entry at all (Kafka: the markers of a transaction and the entries of an aborted one).
/// - **Consumer positions.** A group's committed offset for a partition is the offset of the
///   next entry it wants: everything below it is done. Commits are durable once
///   [`GroupConsumer::commit`] returns; a crash before that leaves the previous commit, so the
///   group re-reads (at-least-once). Positions of different groups are independent.
/// - **Compaction.** On a [`Cleanup::Compact`] topic the log may remove any entry that has a
///   later entry with the same key in the same partition, and a tombstone older than the
///   topic's retention that is the last entry for its key. It never removes the last non-
///   tombstone entry of a key, never reorders, never renumbers.
/// - **Concurrency.** All methods may be called concurrently from many tasks.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Creates the topic if it does not exist; if it exists, checks its partition count and
    /// fails with [`LogError::TopicMismatch`] when it differs. Idempotent.
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError>;

    /// Appends messages; returns their offsets, in input order, once all are durable.
    async fn append(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Offset>, LogError>;

    /// Reads up to `max` entries of one partition with offsets `>= from`, in offset order.
    /// When none is available yet, waits up to `wait` for one to be appended and returns as soon
    /// as one is (an empty result means the wait ran out).
    async fn read(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Entry>, LogError>;

    /// One past the offset of the last durable entry of a partition (0 if it never had one).
    async fn end_offset(&self, topic: &str, partition: Partition) -> Result<Offset, LogError>;

    /// Joins consumer group `group` on `topic`. The group's members share the topic's
    /// partitions; each partition has at most one member at a time; reading starts at the
    /// group's committed offset, or at the start of the partition if there is none.
    async fn consume(&self, group: &str, topic: &str) -> Result<Box<dyn GroupConsumer>, LogError>;

    /// The group's committed offset for a partition, if it ever committed one.
    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
    ) -> Result<Option<Offset>, LogError>;

    /// Runs one compaction pass over a [`Cleanup::Compact`] topic. Backends whose broker
    /// compacts on its own (Kafka) do nothing and return zero counts.
    async fn compact(&self, topic: &str) -> Result<CompactionStats, LogError>;

    /// Succeeds when the log is reachable and usable (for readiness checks).
    async fn check(&self) -> Result<(), LogError>;
}

/// One member of a consumer group, obtained from [`Log::consume`].
///
/// The member owns a (possibly changing) set of partitions. [`poll`](GroupConsumer::poll)
/// returns entries only of partitions it owns, each partition's in offset order and without
/// gaps other than those compaction made. After a partition moves to another member, the new
/// owner starts at the committed offset, so the work of an uncommitted batch may be done twice
/// by two members: the work must be idempotent.
#[async_trait]
pub trait GroupConsumer: Send {
    /// The next entries, up to `max`, waiting up to `wait` when there are none.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Entry>, LogError>;

    /// Records that, for each `(partition, next)`, every entry below `next` is done. A commit for
    /// a partition this member no longer owns may fail with [`LogError::NotOwner`]; callers treat
    /// that as harmless, since the new owner re-reads from the last successful commit.
    async fn commit(&mut self, offsets: &[(Partition, Offset)]) -> Result<(), LogError>;

    /// The partitions this member owns right now.
    fn assignment(&self) -> Vec<Partition>;

    /// A [`Publisher`] for the work done on the entries the last [`poll`](Self::poll) returned,
    /// bound to the ownership under which they were read. Call it after the poll whose work it
    /// will publish and before the next one.
    fn publisher(&self) -> Box<dyn Publisher>;
}

/// Messages for one topic, part of a [`Publisher::publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub topic: String,
    pub messages: Vec<Message>,
}

impl Output {
    pub fn new(topic: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            topic: topic.into(),
            messages,
        }
    }
}

/// Publishes the output of one polled batch, to one topic or several, and commits the positions
/// the batch covers, as one step, so that a member that lost its partitions cannot publish
/// stale output. Obtained from [`GroupConsumer::publisher`].
///
/// # Contract
///
/// - **Atomic.** When [`publish`](Publisher::publish) returns `Ok`, every message of every
///   output is durable and every `(partition, next)` is the group's committed offset; readers
///   see the messages at once, or on Kafka a moment later (once the cluster has written the
///   transaction's commit markers, which it does after answering the commit). When it fails, no
///   reader ever reads any of the messages, of any of the topics, and the committed offsets are
///   unchanged. (Kafka: one transaction producing to every topic, and readers read committed
///   entries only, so an aborted transaction leaves a gap of offsets nobody reads.)
/// - **Fenced.** If a partition in `offsets` was taken from the member since the poll the
///   publisher is bound to (even if it came back since), the call fails with
///   [`LogError::NotOwner`] and publishes nothing, to any topic. On Kafka this holds across
///   processes: a member frozen past its session timeout, whose partitions the group gave to
///   another process, is refused by the group coordinator when it resumes.
/// - **Ordered.** Publishes of one member take effect in the order they are called; a call
///   waits for the member's previous one to finish. Within a call, messages of one topic and
///   partition land in the order given (outputs in order, then messages in order).
/// - `outputs`, any output's `messages`, or `offsets` may be empty.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Appends every output's messages to its topic and commits `offsets` for the member's
    /// group, atomically.
    async fn publish(
        &self,
        outputs: Vec<Output>,
        offsets: Vec<(Partition, Offset)>,
    ) -> Result<(), LogError>;
}
