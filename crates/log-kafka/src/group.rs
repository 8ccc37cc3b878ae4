//! A member of a Kafka consumer group, for [`Log::consume`](tenantsync_log::Log::consume).
//!
//! librdkafka runs rebalance callbacks only inside a consumer poll, and a rebalance waits for
//! every member to take part. So that a member whose caller is between two polls (applying a
//! batch) does not hold up the group, each member has a thread of its own that polls the
//! consumer and moves entries into a buffer that [`GroupConsumer::poll`] drains: rebalances are
//! served as they come. When the buffer is full the thread stops polling until the caller has
//! taken three quarters of it (librdkafka's own prefetch limits then stop fetching). So a caller
//! that stops taking entries while more keep coming holds up rebalances, and is removed from
//! the group after `max.poll.interval.ms`, as with a plain Kafka consumer. Pausing partitions
//! instead would keep rebalances flowing but costs a refetch and about a second of librdkafka's
//! fetch scheduling per pause (measured on the mock cluster).
//!
//! Ownership is tracked from the rebalance callbacks (model: quickwit's Kafka source). A
//! revoked partition's buffered entries are dropped at once, and entries are tagged with the
//! assignment they were fetched under, so nothing fetched before a revocation is returned after
//! it: the new owner re-reads from the committed offset. Offsets are committed only by
//! [`GroupConsumer::commit`], synchronously; this module never commits on its own.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use tenantsync_log::{Entry, GroupConsumer, LogError, Offset, Partition, Publisher};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use crate::context::{client_error, log_line};
use crate::error::{backend, lost_ownership, not_owner};
use crate::publish::{Binding, KafkaPublisher, Transactions};
use crate::{run_blocking, to_entry};

/// Entries a member buffers ahead of its caller by default. Above this it stops fetching until
/// the caller has brought the buffer down to a quarter of it.
pub(crate) const DEFAULT_BUFFER: usize = 16_384;
/// How long one poll of the consumer blocks; bounds how late the thread sees a stop request.
const THREAD_POLL: Duration = Duration::from_millis(100);

/// State shared between the member's handle, its thread and its rebalance callbacks.
struct Shared {
    state: Mutex<State>,
    /// Signalled when entries arrive or the thread stops.
    arrived: Notify,
    /// Signalled when the caller has drained the buffer to the low-water mark.
    drained: Condvar,
    /// Set by the handle when it is dropped.
    stop: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Owned partitions, each with the number of the assignment that gave it.
    owned: BTreeMap<Partition, u64>,
    assignments: u64,
    /// Fetched entries with the assignment number of their partition at fetch time.
    buffer: VecDeque<(u64, Entry)>,
    /// The group metadata (generation) of the latest assignment, for transactional publishing.
    metadata: Option<Arc<ConsumerGroupMetadata>>,
    /// A non-transient error from the consumer, reported by the next poll.
    failure: Option<LogError>,
    /// The polling thread has ended.
    stopped: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn assign(&self, partitions: &[Partition], metadata: Option<ConsumerGroupMetadata>) {
        let mut state = self.lock();
        state.metadata = metadata.map(Arc::new);
        state.assignments += 1;
        let number = state.assignments;
        for &partition in partitions {
            state.owned.insert(partition, number);
        }
    }

    fn revoke(&self, partitions: &[Partition]) {
        let mut state = self.lock();
        for partition in partitions {
            state.owned.remove(partition);
        }
        state
            .buffer
            .retain(|(_, entry)| !partitions.contains(&entry.partition));
    }

    fn push(&self, entry: Entry) {
        let mut state = self.lock();
        if let Some(&number) = state.owned.get(&entry.partition) {
            state.buffer.push_back((number, entry));
            drop(state);
            self.arrived.notify_one();
        }
    }
}

/// Tracks the member's assignment from librdkafka's rebalance callbacks.
struct GroupContext {
    topic: String,
    group: String,
    shared: Arc<Shared>,
}

impl GroupContext {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<Partition> {
        list.elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .filter_map(|element| Partition::try_from(element.partition()).ok())
            .collect()
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_line(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let partitions = self.partitions(list);
                info!(topic = %self.topic, group = %self.group, ?partitions, "partitions revoked");
                self.shared.revoke(&partitions);
            }
            Rebalance::Assign(list) => {
                let partitions = self.partitions(list);
                info!(topic = %self.topic, group = %self.group, ?partitions, "partitions assigned");
                // The generation is already the new one when the assignment is handed out.
                self.shared.assign(&partitions, consumer.group_metadata());
            }
            Rebalance::Error(error) => {
                warn!(%error, topic = %self.topic, group = %self.group, "rebalance failed");
            }
        }
    }
}

/// The handle returned by [`KafkaLog::consume`](crate::KafkaLog).
pub(crate) struct KafkaGroupConsumer {
    topic: String,
    low_water: usize,
    group: String,
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<GroupContext>>,
    transactions: Arc<Transactions>,
    /// The assignment the last poll's entries were fetched under, and its group metadata.
    polled_under: (BTreeMap<Partition, u64>, Option<Arc<ConsumerGroupMetadata>>),
}

impl KafkaGroupConsumer {
    /// Subscribes a new member and starts its polling thread.
    pub(crate) fn start(
        config: &ClientConfig,
        transactions: Transactions,
        group: &str,
        topic: &str,
        buffer: usize,
    ) -> Result<Self, LogError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            drained: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let context = GroupContext {
            topic: topic.to_string(),
            group: group.to_string(),
            shared: shared.clone(),
        };
        let joining = || format!("joining group {group} on topic {topic}");
        let consumer: BaseConsumer<GroupContext> = config
            .create_with_context(context)
            .map_err(|error| backend(joining(), error))?;
        consumer
            .subscribe(&[topic])
            .map_err(|error| backend(joining(), error))?;
        let consumer = Arc::new(consumer);
        let thread = {
            let consumer = consumer.clone();
            let shared = shared.clone();
            let topic = topic.to_string();
            let group = group.to_string();
            move || run(&consumer, &shared, &topic, &group, buffer.max(1))
        };
        std::thread::Builder::new()
            .name("kafka-group".to_string())
            .spawn(thread)
            .map_err(|error| LogError::backend(joining(), false, error))?;
        Ok(KafkaGroupConsumer {
            topic: topic.to_string(),
            low_water: buffer.max(1) / 4,
            group: group.to_string(),
            shared,
            consumer,
            transactions: Arc::new(transactions),
            polled_under: (BTreeMap::new(), None),
        })
    }
}

/// The member's thread: polls until the handle is dropped, then closes the consumer (which
/// leaves the group, so the others take over its partitions without waiting for a timeout).
fn run(
    consumer: &BaseConsumer<GroupContext>,
    shared: &Shared,
    topic: &str,
    group: &str,
    high_water: usize,
) {
    let low_water = high_water / 4;
    while !shared.stop.load(Ordering::Acquire) {
        {
            let mut state = shared.lock();
            if state.buffer.len() >= high_water {
                trace!(
                    topic,
                    group,
                    buffered = state.buffer.len(),
                    "buffer full: waiting"
                );
                while state.buffer.len() > low_water && !shared.stop.load(Ordering::Acquire) {
                    // Wakes up now and then to see a stop request.
                    state = shared
                        .drained
                        .wait_timeout(state, THREAD_POLL)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                continue;
            }
        }
        match consumer.poll(THREAD_POLL) {
            None => {}
            Some(Ok(message)) => {
                let (Ok(partition), Ok(offset)) = (
                    Partition::try_from(message.partition()),
                    Offset::try_from(message.offset()),
                ) else {
                    continue;
                };
                if message.topic() == topic {
                    shared.push(to_entry(&message, partition, offset));
                }
            }
            Some(Err(error)) => {
                let error = backend(format!("consuming topic {topic} in group {group}"), error);
                if error.is_transient() {
                    // librdkafka retries these itself.
                    debug!(%error, topic, group, "transient consumer error");
                } else {
                    warn!(%error, topic, group, "consumer error");
                    shared.lock().failure = Some(error);
                    shared.arrived.notify_one();
                }
            }
        }
    }
    shared.lock().stopped = true;
    shared.arrived.notify_one();
    debug!(topic, group, "group member stopped polling");
}

impl Drop for KafkaGroupConsumer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.drained.notify_all();
    }
}

#[async_trait]
impl GroupConsumer for KafkaGroupConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Entry>, LogError> {
        let deadline = Instant::now() + wait;
        loop {
            let arrived = self.shared.arrived.notified();
            {
                let mut state = self.shared.lock();
                if let Some(error) = state.failure.take() {
                    return Err(error);
                }
                let mut entries = Vec::new();
                while entries.len() < max {
                    let Some((number, entry)) = state.buffer.pop_front() else {
                        break;
                    };
                    // Fetched under an assignment that has since been revoked: the partition's
                    // current owner (maybe this member again) re-reads it from the commit.
                    if state.owned.get(&entry.partition) == Some(&number) {
                        entries.push(entry);
                    }
                }
                if state.buffer.len() <= self.low_water {
                    self.shared.drained.notify_one();
                }
                // Every entry returned was fetched under the current assignment.
                self.polled_under = (state.owned.clone(), state.metadata.clone());
                if !entries.is_empty() || max == 0 {
                    return Ok(entries);
                }
                if state.stopped {
                    return Err(LogError::Closed);
                }
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            // Woken by an arrival, or the wait runs out; either way look again.
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
    }

    async fn commit(&mut self, offsets: &[(Partition, Offset)]) -> Result<(), LogError> {
        let owned: Vec<Partition> = self.shared.lock().owned.keys().copied().collect();
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        let mut first_owned = None;
        let mut not_owned = None;
        for &(partition, next) in offsets {
            if !owned.contains(&partition) {
                not_owned.get_or_insert(partition);
                continue;
            }
            let next = i64::try_from(next).map_err(|_| {
                LogError::Config(format!(
                    "offset {next} of topic {} partition {partition} is out of range",
                    self.topic
                ))
            })?;
            first_owned.get_or_insert(partition);
            list.add_partition_offset(&self.topic, partition as i32, KafkaOffset::Offset(next))
                .map_err(|error| backend(self.committing(), error))?;
        }
        // Owned partitions are committed even when others are not owned any more: their work
        // is done and the caller treats `NotOwner` as harmless.
        if let Some(partition) = first_owned {
            let consumer = self.consumer.clone();
            let context = self.committing();
            let topic = self.topic.clone();
            run_blocking(context.clone(), move || {
                consumer.commit(&list, CommitMode::Sync).map_err(|error| {
                    if lost_ownership(&error) {
                        debug!(%error, topic, partition, "commit refused: ownership moved");
                        not_owner(&topic, partition)
                    } else {
                        backend(context, error)
                    }
                })
            })
            .await?;
        }
        match not_owned {
            Some(partition) => Err(not_owner(&self.topic, partition)),
            None => Ok(()),
        }
    }

    fn assignment(&self) -> Vec<Partition> {
        self.shared.lock().owned.keys().copied().collect()
    }

    fn publisher(&self) -> Box<dyn Publisher> {
        let shared = self.shared.clone();
        let consumer = self.consumer.clone();
        Box::new(KafkaPublisher {
            transactions: self.transactions.clone(),
            binding: Binding {
                topic: self.topic.clone(),
                owned: self.polled_under.0.clone(),
                metadata: self.polled_under.1.clone(),
            },
            current: Box::new(move || shared.lock().owned.clone()),
            plain_commit: Box::new(move |offsets| {
                if let Err(error) = consumer.commit(offsets, CommitMode::Async) {
                    debug!(%error, "queueing a commit after a transaction failed");
                }
            }),
        })
    }
}

impl KafkaGroupConsumer {
    fn committing(&self) -> String {
        format!(
            "committing offsets of topic {} in group {}",
            self.topic, self.group
        )
    }
}
