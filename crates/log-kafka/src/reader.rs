//! Random access to one partition for [`Log::read`](tenantsync_log::Log::read), through a pool
//! of group-less consumers.
//!
//! A reader is a librdkafka consumer assigned by hand to one partition; it remembers where its
//! next entry is, so a caller reading a partition sequentially keeps the same reader and the
//! entries it prefetched. A reader is leased exclusively for one read and returned to the pool
//! afterwards; a read that was cancelled or failed returns it with an unknown position, so the
//! next read repositions it. The pool never joins a consumer group and never commits.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use tenantsync_log::{Entry, LogError, Offset, Partition};

use crate::context::LogContext;
use crate::error::backend;
use crate::to_entry;

/// Idle readers kept at most; more are closed when returned.
const MAX_IDLE: usize = 32;
/// An idle reader unused for this long is closed (it holds a connection and prefetches).
const IDLE_TTL: Duration = Duration::from_secs(60);

pub(crate) struct ReaderPool {
    config: ClientConfig,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    reader: Reader,
    since: Instant,
}

pub(crate) struct Reader {
    consumer: StreamConsumer<LogContext>,
    topic: String,
    partition: Partition,
    /// The reader delivers no entry at or above this offset that a read from here would skip:
    /// a read from exactly this offset can go on without repositioning. `None`: unknown.
    next: Option<Offset>,
}

/// A reader taken from the pool; goes back to it when dropped.
pub(crate) struct Lease<'a> {
    pool: &'a ReaderPool,
    reader: Option<Reader>,
}

impl ReaderPool {
    pub(crate) fn new(config: ClientConfig) -> Self {
        ReaderPool {
            config,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A reader of the partition, preferably one already positioned at `from`.
    pub(crate) fn lease(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
    ) -> Result<Lease<'_>, LogError> {
        let (found, expired) = {
            let mut idle = self.idle_lock();
            let now = Instant::now();
            let (expired, kept): (Vec<Idle>, Vec<Idle>) = idle
                .drain(..)
                .partition(|i| now.duration_since(i.since) >= IDLE_TTL);
            *idle = kept;
            let same = |i: &Idle| i.reader.topic == topic && i.reader.partition == partition;
            let position = idle
                .iter()
                .position(|i| same(i) && i.reader.next == Some(from))
                .or_else(|| idle.iter().position(same));
            (position.map(|p| idle.swap_remove(p).reader), expired)
        };
        close(expired.into_iter().map(|i| i.reader));
        let reader = match found {
            Some(reader) => reader,
            None => Reader {
                consumer: self
                    .config
                    .create_with_context(LogContext)
                    .map_err(|error| {
                        backend(
                            format!("creating a reader of topic {topic} partition {partition}"),
                            error,
                        )
                    })?,
                topic: topic.to_string(),
                partition,
                next: None,
            },
        };
        Ok(Lease {
            pool: self,
            reader: Some(reader),
        })
    }

    fn give_back(&self, reader: Reader) {
        let surplus = {
            let mut idle = self.idle_lock();
            idle.push(Idle {
                reader,
                since: Instant::now(),
            });
            if idle.len() > MAX_IDLE {
                // The oldest idle reader goes.
                let oldest = idle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, i)| i.since)
                    .map(|(n, _)| n)
                    .unwrap_or(0);
                Some(idle.swap_remove(oldest).reader)
            } else {
                None
            }
        };
        close(surplus);
    }

    fn idle_lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // Idle readers are whole values: a panic elsewhere cannot leave one half-made.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Closing a consumer waits for librdkafka's threads, so it is done off the async workers.
fn close(readers: impl IntoIterator<Item = Reader>) {
    let readers: Vec<Reader> = readers.into_iter().collect();
    if readers.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(move || drop(readers));
        }
        Err(_) => drop(readers),
    }
}

impl Lease<'_> {
    pub(crate) fn reader(&mut self) -> &mut Reader {
        self.reader
            .as_mut()
            .expect("a lease holds its reader until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            self.pool.give_back(reader);
        }
    }
}

impl Reader {
    /// Entries of the partition with offsets `>= from`, up to `max`: whatever is available
    /// right away, else the first to arrive before `deadline`, with those ready behind it.
    pub(crate) async fn fetch(
        &mut self,
        from: Offset,
        max: usize,
        deadline: Instant,
    ) -> Result<Vec<Entry>, LogError> {
        let Ok(start) = i64::try_from(from) else {
            // No entry can be there.
            return Ok(Vec::new());
        };
        if self.next != Some(from) {
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(
                    &self.topic,
                    self.partition as i32,
                    KafkaOffset::Offset(start),
                )
                .and_then(|()| self.consumer.assign(&assignment))
                .map_err(|error| backend(self.context(), error))?;
        }
        // Until this read completes, a cancellation or an error leaves the position unknown.
        self.next = None;
        let mut entries = Vec::new();
        let mut next = from;
        while entries.len() < max {
            let received = if entries.is_empty() {
                match tokio::time::timeout_at(deadline.into(), self.consumer.recv()).await {
                    Ok(received) => received,
                    Err(_) => break,
                }
            } else {
                match self.consumer.recv().now_or_never() {
                    Some(received) => received,
                    None => break,
                }
            };
            let message = received.map_err(|error| backend(self.context(), error))?;
            if message.topic() != self.topic || message.partition() != self.partition as i32 {
                continue;
            }
            let Ok(offset) = Offset::try_from(message.offset()) else {
                continue;
            };
            next = next.max(offset + 1);
            // Below `from` only after the broker said `from` was out of range and the reader
            // restarted at the start of the partition (`auto.offset.reset=earliest`).
            if offset >= from {
                entries.push(to_entry(&message, self.partition, offset));
            }
        }
        // The consumer's position also moves past what it reads but never delivers: the markers
        // of transactions and the entries of aborted ones.
        if let Ok(positions) = self.consumer.position()
            && let Some(element) = positions.find_partition(&self.topic, self.partition as i32)
            && let KafkaOffset::Offset(position) = element.offset()
            && let Ok(position) = Offset::try_from(position)
        {
            next = next.max(position);
        }
        self.next = Some(next);
        Ok(entries)
    }

    /// Where the next read of this reader goes on without repositioning, if known.
    pub(crate) fn next(&self) -> Option<Offset> {
        self.next
    }

    fn context(&self) -> String {
        format!("reading topic {} partition {}", self.topic, self.partition)
    }
}
