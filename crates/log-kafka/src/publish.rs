//! Transactional publishing for a consumer group member ([`GroupConsumer::publisher`]).
//!
//! Each member has one transactional producer, created on its first publish (its
//! `transactional.id` is stable for a named instance, so a restarted instance aborts what its
//! previous run left open). A publish is one Kafka transaction: the messages of every topic,
//! then the member's offsets through `send_offsets_to_transaction` with the group metadata of the
//! assignment the publisher is bound to (KIP-447), then the commit. The group coordinator
//! refuses offsets of a stale generation, so a member that lost its partitions (cut off,
//! frozen past its session timeout, or simply rebalanced) cannot commit, and its transaction
//! is aborted: readers reading committed entries never see its messages.
//!
//! This module must never publish outside a transaction or with metadata other than the bound
//! one.
//!
//! [`GroupConsumer::publisher`]: tenantsync_log::GroupConsumer::publisher

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use tenantsync_log::{LogError, Offset, Output, Partition, Publisher};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::context::LogContext;
use crate::error::{backend, lost_ownership, not_owner};
use crate::{queue_messages, run_blocking};

/// How long a transactional call (init, offsets, commit, abort) may block.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The member's transactional producer, shared by its publishers; one transaction at a time.
pub(crate) struct Transactions {
    config: ClientConfig,
    transactional_id: String,
    /// `None` until the first publish, and again after a fatal error (the next publish creates
    /// a new producer, which fences the old one).
    producer: Mutex<Option<FutureProducer<LogContext>>>,
}

impl Transactions {
    pub(crate) fn new(config: ClientConfig, transactional_id: String) -> Self {
        Transactions {
            config,
            transactional_id,
            producer: Mutex::new(None),
        }
    }
}

/// What a publisher is bound to: the assignment of the poll it was made after.
pub(crate) struct Binding {
    /// Input topic of the member.
    pub(crate) topic: String,
    /// Assignment number of every partition the member owned at that poll.
    pub(crate) owned: BTreeMap<Partition, u64>,
    /// The group metadata of that assignment (`None` before the member joined).
    pub(crate) metadata: Option<Arc<ConsumerGroupMetadata>>,
}

pub(crate) struct KafkaPublisher {
    pub(crate) transactions: Arc<Transactions>,
    pub(crate) binding: Binding,
    /// The member's current assignment, to refuse at once what a rebalance already took.
    pub(crate) current: Box<dyn Fn() -> BTreeMap<Partition, u64> + Send + Sync>,
    /// Commits offsets through the member's consumer, without waiting.
    pub(crate) plain_commit: Box<dyn Fn(&TopicPartitionList) + Send + Sync>,
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(
        &self,
        outputs: Vec<Output>,
        offsets: Vec<(Partition, Offset)>,
    ) -> Result<(), LogError> {
        let binding = &self.binding;
        let current = (self.current)();
        for (partition, _) in &offsets {
            let bound = binding.owned.get(partition);
            if bound.is_none() || bound != current.get(partition) {
                return Err(not_owner(&binding.topic, *partition));
            }
        }
        let metadata = match (&binding.metadata, offsets.is_empty()) {
            (Some(metadata), _) => Some(metadata.clone()),
            (None, true) => None,
            (None, false) => return Err(not_owner(&binding.topic, offsets[0].0)),
        };
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for (partition, next) in &offsets {
            let next = i64::try_from(*next).map_err(|_| {
                LogError::Config(format!(
                    "offset {next} of topic {} is out of range",
                    binding.topic
                ))
            })?;
            list.add_partition_offset(&binding.topic, *partition as i32, KafkaOffset::Offset(next))
                .map_err(|error| backend("committing offsets in a transaction", error))?;
        }

        let mut slot = self.transactions.producer.lock().await;
        let producer = match slot.as_ref() {
            Some(producer) => producer.clone(),
            None => {
                let producer = self.transactions.init().await?;
                *slot = Some(producer.clone());
                producer
            }
        };
        let topics: Vec<&str> = outputs.iter().map(|o| o.topic.as_str()).collect();
        let context = format!("publishing to topics {topics:?} in a transaction");
        let outcome = transaction(&producer, &outputs, list.clone(), metadata, &context).await;
        match outcome {
            Ok(()) => {
                // The same offsets once more, outside the transaction and without waiting, for
                // clusters that accept transactional offset commits without storing them
                // (librdkafka's mock cluster). On Kafka it changes nothing: the offsets are
                // already committed, and a member whose generation moved on is refused.
                if list.count() > 0 {
                    (self.plain_commit)(&list);
                }
                Ok(())
            }
            Err(Failure::Fenced(error)) => {
                debug!(%error, topic = %binding.topic, "transaction refused: the member lost its partitions");
                abort(&producer, &mut slot).await;
                Err(not_owner(
                    &binding.topic,
                    offsets.first().map_or(0, |o| o.0),
                ))
            }
            Err(Failure::Other(error)) => {
                abort(&producer, &mut slot).await;
                Err(error)
            }
        }
    }
}

enum Failure {
    /// The group refused the offsets: the member's generation is stale.
    Fenced(KafkaError),
    Other(LogError),
}

impl Transactions {
    /// A new transactional producer, registered with the cluster (which aborts whatever an
    /// earlier producer with the same id left open and fences it).
    async fn init(&self) -> Result<FutureProducer<LogContext>, LogError> {
        let context = format!("starting transactional producer {}", self.transactional_id);
        let producer: FutureProducer<LogContext> = self
            .config
            .create_with_context(LogContext)
            .map_err(|error| backend(context.clone(), error))?;
        let ready = producer.clone();
        run_blocking(context.clone(), move || {
            ready
                .init_transactions(TXN_CALL_TIMEOUT)
                .map_err(|error| backend(context, error))
        })
        .await?;
        info!(transactional_id = %self.transactional_id, "transactional producer ready");
        Ok(producer)
    }
}

async fn transaction(
    producer: &FutureProducer<LogContext>,
    outputs: &[Output],
    offsets: TopicPartitionList,
    metadata: Option<Arc<ConsumerGroupMetadata>>,
    context: &str,
) -> Result<(), Failure> {
    let other = |error: KafkaError| Failure::Other(backend(context.to_string(), error));
    producer.begin_transaction().map_err(other)?;
    // Deliveries are not awaited one by one: the commit flushes them and fails if any failed.
    for output in outputs {
        let (deliveries, queue_error) =
            queue_messages(producer, &output.topic, &output.messages).await;
        drop(deliveries);
        if let Some(error) = queue_error {
            return Err(Failure::Other(error));
        }
    }
    if let Some(metadata) = metadata.filter(|_| offsets.count() > 0) {
        let sending = producer.clone();
        let sent = run_blocking(context.to_string(), move || {
            Ok(sending.send_offsets_to_transaction(&offsets, &metadata, TXN_CALL_TIMEOUT))
        })
        .await
        .map_err(Failure::Other)?;
        if let Err(error) = sent {
            return Err(if lost_ownership(&error) || fenced(&error) {
                Failure::Fenced(error)
            } else {
                other(error)
            });
        }
    }
    let committing = producer.clone();
    let committed = run_blocking(context.to_string(), move || {
        Ok(committing.commit_transaction(TXN_CALL_TIMEOUT))
    })
    .await
    .map_err(Failure::Other)?;
    committed.map_err(|error| {
        if lost_ownership(&error) || fenced(&error) {
            Failure::Fenced(error)
        } else {
            other(error)
        }
    })
}

/// Whether the producer itself was fenced (another producer with its id, or the coordinator
/// aborted its transaction on timeout): it can never commit again.
fn fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::Fenced
        )
    )
}

/// Aborts the open transaction; when that fails (a fatal producer state), drops the producer so
/// the next publish starts a new one.
async fn abort(
    producer: &FutureProducer<LogContext>,
    slot: &mut Option<FutureProducer<LogContext>>,
) {
    let aborting = producer.clone();
    let aborted = run_blocking("aborting a transaction", move || {
        aborting
            .abort_transaction(TXN_CALL_TIMEOUT)
            .map_err(|error| backend("aborting a transaction", error))
    })
    .await;
    if let Err(error) = aborted {
        warn!(%error, "could not abort the transaction; starting a new transactional producer");
        *slot = None;
    }
}
