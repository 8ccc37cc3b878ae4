//! The Kafka [`Log`] backend: any Kafka-protocol cluster, through librdkafka (`rdkafka`).
//!
//! - **Topics** are created through the admin API with the spec's partition count and
//!   `cleanup.policy` (`compact` with `delete.retention.ms` = tombstone retention, or
//!   `delete`), the configured replication factor and `min.insync.replicas`; an existing topic
//!   must have the spec's partition count and cleanup policy (see `topics`).
//! - **Appends** go through one shared idempotent producer (`enable.idempotence=true`,
//!   `acks=all`, up to 5 requests in flight per broker, 2 ms linger). Every message of a call
//!   is queued before any is awaited; the idempotent producer keeps them in order per
//!   partition and never duplicates them on its own retries.
//! - **Reads** use a pool of group-less consumers assigned to one partition each (`reader`).
//! - **Consumer groups** are librdkafka consumer groups with manual, synchronous commits
//!   (`group`). A committed offset is the next offset to read, as in the [`Log`] contract. With
//!   an instance name, members are static (`group.instance.id`), so a restarted instance gets
//!   its partitions back without a rebalance.
//! - **Publishing** from a group member is transactional (`publish`): its messages, to one
//!   topic or several, and its offsets commit together, fenced by the group generation
//!   (KIP-447). Every client reads with `isolation.level=read_committed`, and `read` steps over
//!   the offsets that transaction markers and aborted entries take.
//! - **Compaction** is the broker's job: [`Log::compact`] does nothing.
//!
//! Configuration is [`KafkaConfig`]: typed settings plus pass-through librdkafka properties,
//! some of which are reserved ([`RESERVED_KEYS`]). librdkafka's own logs go to `tracing`
//! under the `librdkafka` target. This crate must never block an async worker on librdkafka:
//! blocking calls (metadata, watermarks, commits, closing clients) run on the blocking pool.

mod config;
mod context;
mod error;
mod group;
mod publish;
mod reader;
mod topics;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::admin::AdminClient;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use tenantsync_log::{
    CompactionStats, Entry, GroupConsumer, Log, LogError, Message, Offset, Partition, TopicSpec,
};

pub use config::{DEFAULT_CLIENT_ID, KafkaConfig, RESERVED_KEYS};

use crate::config::ClientRole;
use crate::context::LogContext;
use crate::error::backend;
use crate::group::KafkaGroupConsumer;
use crate::publish::Transactions;
use crate::reader::ReaderPool;
use crate::topics::Topics;

/// How long [`KafkaLog::connect`] and [`Log::check`] wait for the cluster to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a blocking lookup (watermarks, committed offsets) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts of a lookup that failed transiently.
const LOOKUP_RETRY: Duration = Duration::from_millis(200);
/// How long entries known to exist (below the end offset) may take to reach a reader.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each fetch waits while a reader below the end offset looks for its next entry.
const GAP_PROBE: Duration = Duration::from_millis(100);
/// Pause before retrying to queue a message when librdkafka's producer queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// A [`Log`] on a Kafka cluster.
pub struct KafkaLog {
    config: KafkaConfig,
    producer: FutureProducer<LogContext>,
    topics: Topics,
    readers: ReaderPool,
    group_buffer: usize,
    /// One long-lived offset-lookup client per group: creating and closing a client with a
    /// group's id for every lookup churns the group's coordinator (the mock cluster rebalances
    /// the live members on each close), so lookups reuse one.
    offset_lookups: std::sync::Mutex<HashMap<String, Arc<BaseConsumer<LogContext>>>>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Validates the configuration, creates the shared clients and checks that the cluster
    /// answers (a transient error when it does not, so a caller may retry).
    pub async fn connect(config: KafkaConfig) -> Result<KafkaLog, LogError> {
        config.validate()?;
        let producer: FutureProducer<LogContext> = config
            .client_config(ClientRole::Producer)
            .create_with_context(LogContext)
            .map_err(|error| backend("creating the kafka producer", error))?;
        let admin: AdminClient<LogContext> = config
            .client_config(ClientRole::Admin)
            .create_with_context(LogContext)
            .map_err(|error| backend("creating the kafka admin client", error))?;
        let log = KafkaLog {
            topics: Topics::new(producer.clone(), admin, config.replication_factor),
            readers: ReaderPool::new(config.client_config(ClientRole::Reader)),
            producer,
            config,
            group_buffer: group::DEFAULT_BUFFER,
            offset_lookups: std::sync::Mutex::new(HashMap::new()),
        };
        log.topics.check(CHECK_TIMEOUT).await?;
        log.topics.check_brokers().await?;
        Ok(log)
    }

    /// How many entries a consumer group member fetches ahead of its caller (default 16,384):
    /// more smooths throughput, less bounds memory. When its buffer is full a member stops
    /// fetching until the caller has consumed three quarters of it.
    pub fn with_group_buffer(mut self, entries: usize) -> Self {
        self.group_buffer = entries.max(1);
        self
    }

    /// The partition's (low, high) watermarks: first offset still stored, one past the last.
    async fn watermarks(&self, topic: &str, partition: Partition) -> Result<(i64, i64), LogError> {
        let producer = self.producer.clone();
        let topic = topic.to_string();
        let context = format!("reading the end offset of topic {topic} partition {partition}");
        run_blocking(context.clone(), move || {
            retry_lookup(|| {
                producer
                    .client()
                    .fetch_watermarks(&topic, partition as i32, LOOKUP_TIMEOUT)
                    .map_err(|error| {
                        // A broker that has not learnt of a new topic or leader yet.
                        let settling = matches!(
                            error.rdkafka_error_code(),
                            Some(
                                RDKafkaErrorCode::UnknownPartition
                                    | RDKafkaErrorCode::UnknownTopicOrPartition
                                    | RDKafkaErrorCode::NotLeaderForPartition
                                    | RDKafkaErrorCode::LeaderNotAvailable
                            )
                        );
                        let error = backend(context.clone(), error);
                        (settling || error.is_transient(), error)
                    })
            })
        })
        .await
    }

    /// The offset-lookup client of `group`, created on first use. It never subscribes, so it
    /// never joins the group or disturbs its members.
    fn offset_lookup(&self, group: &str) -> Result<Arc<BaseConsumer<LogContext>>, LogError> {
        let mut lookups = self
            .offset_lookups
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(consumer) = lookups.get(group) {
            return Ok(consumer.clone());
        }
        let consumer: BaseConsumer<LogContext> = self
            .config
            .client_config(ClientRole::OffsetLookup {
                group: group.to_string(),
            })
            .create_with_context(LogContext)
            .map_err(|error| {
                backend(
                    format!("creating the offset lookup client of group {group}"),
                    error,
                )
            })?;
        let consumer = Arc::new(consumer);
        lookups.insert(group.to_string(), consumer.clone());
        Ok(consumer)
    }
}

#[async_trait]
impl Log for KafkaLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        self.topics.ensure(spec).await
    }

    async fn append(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Offset>, LogError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // Every partition is checked before anything is sent: a bad message fails the call
        // without writing the others.
        let mut checked: Vec<Partition> = Vec::new();
        for message in &messages {
            if !checked.contains(&message.partition) {
                self.topics
                    .check_partition(topic, message.partition)
                    .await?;
                checked.push(message.partition);
            }
        }
        // Queue every message first (in input order, which the idempotent producer keeps per
        // partition), then await all deliveries together. Even when queuing failed, what was
        // queued is awaited: when this returns, nothing of the call is still in flight, so a
        // retry cannot race with it.
        let (deliveries, queue_error) = queue_messages(&self.producer, topic, &messages).await;
        let results = futures::future::join_all(deliveries).await;
        if let Some(error) = queue_error {
            return Err(error);
        }
        let mut offsets = Vec::with_capacity(results.len());
        for (message, result) in messages.iter().zip(results) {
            let context = || format!("appending to topic {topic} partition {}", message.partition);
            let delivery = match result {
                Ok(Ok(delivery)) => delivery,
                Ok(Err((error, _))) => return Err(backend(context(), error)),
                // The producer went away with the message in flight.
                Err(_canceled) => return Err(LogError::Closed),
            };
            let offset = Offset::try_from(delivery.offset).map_err(|_| {
                LogError::backend(
                    context(),
                    false,
                    format!(
                        "the cluster acknowledged invalid offset {}",
                        delivery.offset
                    ),
                )
            })?;
            offsets.push(offset);
        }
        Ok(offsets)
    }

    async fn read(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Entry>, LogError> {
        self.topics.check_partition(topic, partition).await?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut lease = self.readers.lease(topic, partition, from)?;
        let entries = lease
            .reader()
            .fetch(from, max, Instant::now() + wait)
            .await?;
        if !entries.is_empty() {
            return Ok(entries);
        }
        // Nothing within the wait. If entries exist at or after `from` (a fresh reader has not
        // fetched yet, or the fetch is slow), they are due now whatever the wait was: a reader
        // must not mistake "not fetched yet" for "the end". Offsets that hold no readable entry
        // (transaction markers, aborted entries) move the reader on without delivering anything,
        // so the reader's own position, not `from`, says whether it reached the end.
        let (low, high) = self.watermarks(topic, partition).await?;
        let deadline = Instant::now() + FETCH_TIMEOUT;
        loop {
            let at = lease.reader().next().map_or(from, |next| next.max(from));
            let at_i64 = i64::try_from(at).unwrap_or(i64::MAX);
            if at_i64 >= high || low >= high {
                return Ok(Vec::new());
            }
            if Instant::now() >= deadline {
                return Err(LogError::backend(
                    format!("reading topic {topic} partition {partition} from offset {from}"),
                    true,
                    format!(
                        "entries below end offset {high} did not arrive within {FETCH_TIMEOUT:?}"
                    ),
                ));
            }
            let entries = lease
                .reader()
                .fetch(at, max, (Instant::now() + GAP_PROBE).min(deadline))
                .await?;
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
    }

    async fn end_offset(&self, topic: &str, partition: Partition) -> Result<Offset, LogError> {
        self.topics.check_partition(topic, partition).await?;
        let (_, high) = self.watermarks(topic, partition).await?;
        Ok(Offset::try_from(high).unwrap_or(0))
    }

    async fn consume(&self, group: &str, topic: &str) -> Result<Box<dyn GroupConsumer>, LogError> {
        if group.is_empty() {
            return Err(LogError::Config(format!(
                "consumer group name for topic {topic} must not be empty"
            )));
        }
        self.topics.partition_count(topic).await?;
        let instance = self.config.member_instance_id(topic);
        let transactional_id = format!(
            "{group}.{}",
            instance.clone().unwrap_or_else(|| unique_suffix(topic))
        );
        let config = self.config.client_config(ClientRole::Group {
            group: group.to_string(),
            instance,
        });
        let transactions = Transactions::new(
            self.config.client_config(ClientRole::Transactional {
                id: transactional_id.clone(),
            }),
            transactional_id,
        );
        let member =
            KafkaGroupConsumer::start(&config, transactions, group, topic, self.group_buffer)?;
        Ok(Box::new(member))
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
    ) -> Result<Option<Offset>, LogError> {
        self.topics.check_partition(topic, partition).await?;
        let consumer = self.offset_lookup(group)?;
        let topic = topic.to_string();
        let context = format!(
            "reading the committed offset of group {group} on topic {topic} partition {partition}"
        );
        run_blocking(context.clone(), move || {
            // The group's coordinator may be moving or loading (a broker restarted, the cluster
            // just started): transient errors are retried.
            retry_lookup(|| {
                let transient = |error| {
                    let error = backend(context.clone(), error);
                    (error.is_transient(), error)
                };
                let mut wanted = TopicPartitionList::new();
                wanted.add_partition(&topic, partition as i32);
                let found = consumer
                    .committed_offsets(wanted, LOOKUP_TIMEOUT)
                    .map_err(transient)?;
                let element = found.find_partition(&topic, partition as i32);
                if let Some(Err(error)) = element.as_ref().map(|e| e.error()) {
                    return Err(transient(error));
                }
                Ok(match element.map(|e| e.offset()) {
                    Some(KafkaOffset::Offset(offset)) => Offset::try_from(offset).ok(),
                    _ => None,
                })
            })
        })
        .await
    }

    async fn compact(&self, topic: &str) -> Result<CompactionStats, LogError> {
        // The broker compacts `cleanup.policy=compact` topics on its own schedule.
        self.topics.partition_count(topic).await?;
        Ok(CompactionStats::default())
    }

    async fn check(&self) -> Result<(), LogError> {
        self.topics.check(CHECK_TIMEOUT).await
    }
}

/// `{topic}.{pid}.{time}.{n}`: a transactional id no other live producer has, for members of
/// an unnamed instance.
fn unique_suffix(topic: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{topic}.{}.{nanos:x}.{n}", std::process::id())
}

/// Queues `messages` on `producer` in order, waiting while its queue is full. Returns the
/// deliveries of what was queued and, if queuing stopped early, why.
pub(crate) async fn queue_messages(
    producer: &FutureProducer<LogContext>,
    topic: &str,
    messages: &[Message],
) -> (Vec<DeliveryFuture>, Option<LogError>) {
    let mut deliveries = Vec::with_capacity(messages.len());
    for message in messages {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(message.partition as i32)
            .key(&message.key[..]);
        if let Some(value) = &message.value {
            record = record.payload(&value[..]);
        }
        if !message.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
            for (key, value) in &message.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            record = record.headers(headers);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((error, _)) => {
                    let context =
                        format!("appending to topic {topic} partition {}", message.partition);
                    return (deliveries, Some(backend(context, error)));
                }
            }
        }
    }
    (deliveries, None)
}

/// Runs a blocking lookup again while it fails with an error it marks retryable, for up to
/// [`LOOKUP_TIMEOUT`]; then returns its last outcome.
fn retry_lookup<T>(mut lookup: impl FnMut() -> Result<T, (bool, LogError)>) -> Result<T, LogError> {
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    loop {
        match lookup() {
            Ok(value) => return Ok(value),
            Err((true, _)) if Instant::now() < deadline => std::thread::sleep(LOOKUP_RETRY),
            Err((_, error)) => return Err(error),
        }
    }
}

/// Runs a blocking librdkafka call on the blocking pool.
pub(crate) async fn run_blocking<T, F>(context: impl Into<String>, f: F) -> Result<T, LogError>
where
    F: FnOnce() -> Result<T, LogError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join_error) => Err(LogError::backend(context, false, join_error)),
    }
}

/// An [`Entry`] from a consumed message. A null key (written by some other producer) reads as
/// empty; a header with a null value reads as an empty value.
pub(crate) fn to_entry(
    message: &impl rdkafka::message::Message,
    partition: Partition,
    offset: Offset,
) -> Entry {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_string(),
                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Entry {
        partition,
        offset,
        key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
    }
}
