//! Topic creation and partition-count lookups.
//!
//! `ensure` creates a topic through the admin API with its partition count, cleanup policy,
//! replication factor and `min.insync.replicas`, then trusts only the cluster's metadata:
//! "already exists", a refused or unsupported admin request (the librdkafka mock cluster has no
//! CreateTopics; an account may lack the ACL) are fine when the metadata then shows the topic
//! with the right partition count. An existing topic's `cleanup.policy` is checked with
//! DescribeConfigs: a state log that is not compacted, or a changes log that is, is an error
//! that names the topic and the fix. Every client runs with `allow.auto.create.topics=false`,
//! so a metadata lookup never creates a topic with the broker's default partition count.
//! Partition counts are cached: they are looked up before every append and read to turn a bad
//! topic or partition into a clear error. This module never changes an existing topic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use tenantsync_log::{Cleanup, LogError, Partition, TopicSpec};
use tracing::{debug, info, warn};

use crate::context::LogContext;
use crate::error::backend;
use crate::run_blocking;

/// How long one metadata lookup may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an admin request may take, and how long a topic the cluster reported created may
/// take to show up in metadata.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long DescribeConfigs may take before the check is skipped with a warning.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between metadata lookups while waiting for a created topic to appear.
const VISIBLE_POLL: Duration = Duration::from_millis(100);

pub(crate) struct Topics {
    /// The shared producer; its client answers metadata requests.
    producer: FutureProducer<LogContext>,
    admin: AdminClient<LogContext>,
    /// Replication factor of created topics; `None`: the broker's default.
    replication_factor: Option<u16>,
    /// Set once DescribeConfigs failed or went unanswered (the mock cluster never answers; an
    /// account may lack the ACL): later checks are skipped rather than waited on.
    describe_unanswered: AtomicBool,
    partitions: Mutex<HashMap<String, u32>>,
}

/// What the admin request said.
enum Creation {
    Created,
    AlreadyExists,
    Failed(String),
}

impl Topics {
    pub(crate) fn new(
        producer: FutureProducer<LogContext>,
        admin: AdminClient<LogContext>,
        replication_factor: Option<u16>,
    ) -> Self {
        Topics {
            producer,
            admin,
            replication_factor,
            describe_unanswered: AtomicBool::new(false),
            partitions: Mutex::new(HashMap::new()),
        }
    }

    /// Fails when the cluster has fewer brokers than the replication factor asks for: topics
    /// could not be created, and the operator should hear it at start-up.
    pub(crate) async fn check_brokers(&self) -> Result<(), LogError> {
        let Some(wanted) = self.replication_factor else {
            return Ok(());
        };
        let producer = self.producer.clone();
        let brokers = run_blocking("counting the kafka cluster's brokers", move || {
            use rdkafka::producer::Producer;
            producer
                .client()
                .fetch_metadata(None, METADATA_TIMEOUT)
                .map(|metadata| metadata.brokers().len())
                .map_err(|error| backend("fetching kafka cluster metadata", error))
        })
        .await?;
        if brokers < usize::from(wanted) {
            return Err(LogError::Config(format!(
                "topics are created with replication factor {wanted}, but the kafka cluster has \
                 {brokers} broker(s): lower the replication factor to at most {brokers}, or add \
                 brokers"
            )));
        }
        Ok(())
    }

    /// Creates the topic or checks the existing one's partition count.
    pub(crate) async fn ensure(&self, spec: &TopicSpec) -> Result<(), LogError> {
        if spec.partitions == 0 || spec.partitions > i32::MAX as u32 {
            return Err(LogError::Config(format!(
                "topic {} must have between 1 and {} partitions, not {}",
                spec.name,
                i32::MAX,
                spec.partitions
            )));
        }
        // The metadata first: an existing topic needs no admin request (which may be refused,
        // unsupported, or slow to fail, as on the mock cluster where it times out).
        let (actual, creation) = match self.lookup(&spec.name, true).await? {
            Some(actual) => (Some(actual), None),
            None => {
                let creation = self.create(spec).await;
                let actual = match &creation {
                    // Created here, or meanwhile by another instance or an operator: usable once
                    // every partition has a leader.
                    Creation::Created | Creation::AlreadyExists => {
                        self.wait_visible(&spec.name).await?
                    }
                    Creation::Failed(_) => self.lookup(&spec.name, false).await?,
                };
                (actual, Some(creation))
            }
        };
        let Some(actual) = actual else {
            let reason = match creation {
                Some(Creation::Failed(reason)) => reason,
                Some(Creation::Created) => format!(
                    "the cluster reported it created but it is not in the metadata after {ADMIN_TIMEOUT:?}"
                ),
                Some(Creation::AlreadyExists) | None => {
                    "the cluster reported it exists but it is not in the metadata".to_string()
                }
            };
            return Err(LogError::backend(
                format!("creating topic {}", spec.name),
                false,
                format!(
                    "the topic does not exist and could not be created ({reason}); create it with \
                     {} partitions and cleanup.policy={}",
                    spec.partitions,
                    match spec.cleanup {
                        Cleanup::Delete => "delete",
                        Cleanup::Compact { .. } => "compact",
                    }
                ),
            ));
        };
        if actual != spec.partitions {
            return Err(LogError::TopicMismatch {
                topic: spec.name.clone(),
                expected: spec.partitions,
                actual,
            });
        }
        if !matches!(creation, Some(Creation::Created)) {
            self.check_cleanup(spec).await?;
        }
        Ok(())
    }

    /// The topic's partition count; `UnknownTopic` when it does not exist.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        if let Some(count) = self.cached(topic) {
            return Ok(count);
        }
        self.lookup(topic, false)
            .await?
            .ok_or_else(|| LogError::UnknownTopic {
                topic: topic.to_string(),
            })
    }

    /// Checks that the partition exists, looking the topic up again before saying no (an
    /// operator may have added partitions).
    pub(crate) async fn check_partition(
        &self,
        topic: &str,
        partition: Partition,
    ) -> Result<(), LogError> {
        let mut count = self.partition_count(topic).await?;
        if partition >= count {
            count = self
                .lookup(topic, false)
                .await?
                .ok_or_else(|| LogError::UnknownTopic {
                    topic: topic.to_string(),
                })?;
        }
        if partition >= count {
            return Err(LogError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: count,
            });
        }
        Ok(())
    }

    /// A cheap round trip to the cluster: metadata of one known topic, or of all when none is
    /// known yet.
    pub(crate) async fn check(&self, timeout: Duration) -> Result<(), LogError> {
        let known = self.partitions_lock().keys().next().cloned();
        let producer = self.producer.clone();
        run_blocking("checking the kafka cluster", move || {
            use rdkafka::producer::Producer;
            producer
                .client()
                .fetch_metadata(known.as_deref(), timeout)
                .map(|_| ())
                .map_err(|error| backend("fetching kafka cluster metadata", error))
        })
        .await
    }

    fn cached(&self, topic: &str) -> Option<u32> {
        self.partitions_lock().get(topic).copied()
    }

    fn partitions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // The map holds plain counts: a panic elsewhere cannot leave it half-updated.
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn create(&self, spec: &TopicSpec) -> Creation {
        let retention_ms;
        let min_insync;
        let mut new_topic = NewTopic::new(
            &spec.name,
            spec.partitions as i32,
            // -1: the broker's default.replication.factor.
            TopicReplication::Fixed(self.replication_factor.map_or(-1, i32::from)),
        );
        if let Some(factor) = self.replication_factor {
            // With acks=all, an append is acknowledged once this many replicas have it: two of
            // three, so that one broker may be down and none acknowledged is lost with another.
            min_insync = factor.saturating_sub(1).clamp(1, 2).to_string();
            new_topic = new_topic.set("min.insync.replicas", &min_insync);
        }
        match spec.cleanup {
            Cleanup::Delete => new_topic = new_topic.set("cleanup.policy", "delete"),
            Cleanup::Compact {
                tombstone_retention,
            } => {
                retention_ms = tombstone_retention.as_millis().to_string();
                new_topic = new_topic
                    .set("cleanup.policy", "compact")
                    .set("delete.retention.ms", &retention_ms);
            }
        }
        let options = AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT));
        let outcome = match self.admin.create_topics([&new_topic], &options).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => Creation::Created,
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Creation::AlreadyExists,
                Some(Err((_, code))) => Creation::Failed(code.to_string()),
                None => Creation::Failed("the cluster returned no result".to_string()),
            },
            Err(error) => Creation::Failed(error.to_string()),
        };
        match &outcome {
            Creation::Created => info!(
                topic = %spec.name,
                partitions = spec.partitions,
                cleanup = ?spec.cleanup,
                "created topic"
            ),
            Creation::AlreadyExists => debug!(topic = %spec.name, "topic exists"),
            // Fine if the topic exists (checked next); said again in the error if it does not.
            Creation::Failed(reason) => {
                debug!(topic = %spec.name, reason, "could not create topic through the admin api")
            }
        }
        outcome
    }

    /// Looks a freshly created topic up until it shows with a leader for every partition (a
    /// read or an append right after creation would otherwise meet brokers that do not know it
    /// yet), up to [`ADMIN_TIMEOUT`].
    async fn wait_visible(&self, topic: &str) -> Result<Option<u32>, LogError> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            match self.lookup(topic, true).await {
                Ok(Some(count)) => return Ok(Some(count)),
                Ok(None) if Instant::now() >= deadline => return Ok(None),
                Err(error) if !error.is_transient() || Instant::now() >= deadline => {
                    return Err(error);
                }
                _ => tokio::time::sleep(VISIBLE_POLL).await,
            }
        }
    }

    /// Asks the cluster for the topic's partition count (`None`: no such topic, or, with
    /// `led`, some partition without a leader yet) and caches it.
    async fn lookup(&self, topic: &str, led: bool) -> Result<Option<u32>, LogError> {
        let producer = self.producer.clone();
        let name = topic.to_string();
        let count = run_blocking(format!("looking up topic {topic}"), move || {
            use rdkafka::producer::Producer;
            let metadata = producer
                .client()
                .fetch_metadata(Some(&name), METADATA_TIMEOUT)
                .map_err(|error| backend(format!("fetching metadata of topic {name}"), error))?;
            let Some(found) = metadata.topics().iter().find(|t| t.name() == name) else {
                return Ok(None);
            };
            let leaderless = found.partitions().iter().any(|p| p.leader() < 0);
            if led && (found.partitions().is_empty() || leaderless) {
                return Ok(None);
            }
            match found.error().map(RDKafkaErrorCode::from) {
                None => Ok(Some(found.partitions().len() as u32)),
                // Absent, or just created and not yet led: not usable yet.
                Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                | Some(RDKafkaErrorCode::LeaderNotAvailable)
                    if found.partitions().is_empty() =>
                {
                    Ok(None)
                }
                Some(RDKafkaErrorCode::LeaderNotAvailable) => {
                    Ok(Some(found.partitions().len() as u32))
                }
                Some(code) => Err(backend(
                    format!("fetching metadata of topic {name}"),
                    KafkaError::MetadataFetch(code),
                )),
            }
        })
        .await?;
        let mut cache = self.partitions_lock();
        match count {
            Some(count) => {
                cache.insert(topic.to_string(), count);
            }
            None => {
                cache.remove(topic);
            }
        }
        Ok(count)
    }

    /// An existing topic's cleanup policy must be what the spec asks for: a state log that is
    /// not compacted loses old records to retention, and a compacted changes log loses changes.
    /// A cluster that cannot describe configurations (the mock cluster never answers) gets a
    /// warning, not an error.
    async fn check_cleanup(&self, spec: &TopicSpec) -> Result<(), LogError> {
        let wanted = match spec.cleanup {
            Cleanup::Delete => "delete",
            Cleanup::Compact { .. } => "compact",
        };
        if self.describe_unanswered.load(Ordering::Relaxed) {
            debug!(topic = %spec.name, "cleanup.policy not checked: the cluster does not describe configurations");
            return Ok(());
        }
        let options = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
        let resource = ResourceSpecifier::Topic(&spec.name);
        let described = match tokio::time::timeout(
            DESCRIBE_TIMEOUT,
            self.admin.describe_configs([&resource], &options),
        )
        .await
        {
            Ok(Ok(results)) => results.into_iter().next(),
            Ok(Err(error)) => {
                self.describe_unanswered.store(true, Ordering::Relaxed);
                warn!(%error, topic = %spec.name, "could not describe the topic's configuration; cleanup policies are not checked");
                return Ok(());
            }
            Err(_) => {
                self.describe_unanswered.store(true, Ordering::Relaxed);
                warn!(topic = %spec.name, "the cluster did not describe the topic's configuration; cleanup policies are not checked");
                return Ok(());
            }
        };
        let Some(Ok(resource)) = described else {
            warn!(topic = %spec.name, "no configuration described; the topic's cleanup.policy is not checked");
            return Ok(());
        };
        let actual = resource
            .get("cleanup.policy")
            .and_then(|entry| entry.value.clone())
            .unwrap_or_default();
        let policies: Vec<&str> = actual.split(',').map(str::trim).collect();
        let fits = match spec.cleanup {
            Cleanup::Compact { .. } => policies.contains(&"compact"),
            // Compaction would drop changes; `delete` alone (or retention) is the operator's.
            Cleanup::Delete => !policies.contains(&"compact"),
        };
        if fits {
            return Ok(());
        }
        Err(LogError::Config(format!(
            "existing topic {} has cleanup.policy={actual} but tenantsync needs {wanted}: change it \
             (kafka-configs.sh --alter --entity-type topics --entity-name {} --add-config \
             cleanup.policy={wanted}), or use another topic prefix",
            spec.name, spec.name
        )))
    }
}
