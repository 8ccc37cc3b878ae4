//! The `debezium` kind: Debezium change-event topics on a Kafka cluster (the JSON converter,
//! `schemas.enable` true or false), mapped table by table to datasets (`event.rs`).
//!
//! The shard is one member of the consumer group `tenantsync-source-{name}`. It reads a batch,
//! appends what it maps to through the ingest path, and only then commits the batch's offsets:
//! a kill anywhere re-reads from the last commit, and the events read again carry the change
//! ids they had (derived from their position in the source database), so the processor skips
//! them. Kafka Connect re-sending events after its own restart is the same case.

mod event;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tenantsync_core::ErrorClass;
use tracing::{debug, info};

use event::{Mapped, map};

use crate::definition::Topics;
use crate::ingest::{Candidate, Read};
use crate::runner::ShardContext;
use crate::{CheckError, Debezium, SourceError};

/// Most events appended at once.
const MAX_BATCH: usize = 5_000;
/// How long a batch waits for more events once it has one.
const LINGER: Duration = Duration::from_millis(20);
/// How often a topic pattern is matched against the cluster's topics again, and lag measured.
const REFRESH: Duration = Duration::from_secs(5);

fn kafka_error(context: &str, e: KafkaError) -> SourceError {
    // Whatever Kafka says here (a broker down, a rebalance, a timeout) can heal; a wrong
    // setting shows as the same error again, in the source's status.
    SourceError::kafka(ErrorClass::Transient, format!("{context}: {e}"))
}

/// A subscribed topic that does not exist (yet): Debezium creates a table's topic with its first
/// event, so a listed topic may be missing for as long as its table does not change. librdkafka
/// says so as a consumption error, and goes on reading the topics that do exist.
fn missing_topic(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
        )
    )
}

fn consumer(debezium: &Debezium, group: &str) -> Result<StreamConsumer, KafkaError> {
    let mut config = ClientConfig::new();
    // A Debezium event with its schema is a few KiB, and a table's topic is often one
    // partition: librdkafka's default of 1 MiB per partition and fetch holds a backlog to a
    // few hundred events per round trip (5,200 events/s against 13,600 with 16 MiB, measured
    // with `tenantsync-bench debezium`). `kafka_options` may set it otherwise.
    config
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.max.bytes", "67108864");
    for (k, v) in &debezium.kafka_options {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", &debezium.kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set_log_level(RDKafkaLogLevel::Warning);
    config.create()
}

/// The cluster answers and the named topics can be listed. Topics need not exist yet: Debezium
/// creates them when it first writes a table's events.
pub async fn check(debezium: &Debezium) -> Result<(), CheckError> {
    let debezium = debezium.clone();
    tokio::task::spawn_blocking(move || {
        let consumer = consumer(&debezium, "tenantsync-source-check")
            .map_err(|e| CheckError(format!("the Kafka settings are not usable: {e}")))?;
        consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map(drop)
            .map_err(|e| {
                CheckError(format!(
                    "Kafka at {} does not answer within 10 s: {e}",
                    debezium.kafka
                ))
            })
    })
    .await
    .map_err(|e| CheckError(format!("the check failed: {e}")))?
}

/// The topics to read now.
fn topics(consumer: &StreamConsumer, debezium: &Debezium) -> Result<Vec<String>, SourceError> {
    match &debezium.topics {
        Topics::List(list) => Ok(list.clone()),
        Topics::Pattern(pattern) => {
            let metadata = consumer
                .fetch_metadata(None, Duration::from_secs(10))
                .map_err(|e| kafka_error("listing topics", e))?;
            let mut names: Vec<String> = metadata
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|name| pattern.is_match(name))
                .collect();
            names.sort();
            Ok(names)
        }
    }
}

pub async fn run(debezium: &Debezium, ctx: &ShardContext) -> Result<(), SourceError> {
    let group = format!("tenantsync-source-{}", ctx.source);
    let consumer = Arc::new(consumer(debezium, &group).map_err(|e| {
        SourceError::kafka(
            ErrorClass::Permanent,
            format!("the Kafka settings are not usable: {e}"),
        )
    })?);
    let mut subscribed: Vec<String> = Vec::new();
    let mut refreshed = Instant::now() - REFRESH;
    // The next offset of every partition read so far (the position shown), and the source
    // time of the newest event read (for lag in seconds).
    let mut read_up_to: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut newest_ms: i64 = 0;
    loop {
        if refreshed.elapsed() >= REFRESH {
            refreshed = Instant::now();
            let wanted = blocking(&consumer, {
                let debezium = debezium.clone();
                move |c| topics(c, &debezium)
            })
            .await??;
            if wanted != subscribed && !wanted.is_empty() {
                let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
                consumer
                    .subscribe(&names)
                    .map_err(|e| kafka_error("subscribing", e))?;
                info!(source = %ctx.source, topics = ?wanted, "reading Debezium topics");
                subscribed = wanted;
            }
            if let Ok(Some(behind)) = blocking(&consumer, lag).await {
                let seconds = if behind == 0 || newest_ms == 0 {
                    0.0
                } else {
                    ((chrono::Utc::now().timestamp_millis() - newest_ms).max(0) as f64) / 1000.0
                };
                ctx.figures.set_lag(Some(behind), "events", Some(seconds));
            }
        }
        if subscribed.is_empty() {
            tokio::select! {
                _ = ctx.stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(REFRESH) => continue,
            }
        }
        let first = tokio::select! {
            _ = ctx.stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(REFRESH) => continue,
            message = consumer.recv() => match message {
                Err(e) if missing_topic(&e) => {
                    debug!(source = %ctx.source, error = %e, "a listed topic does not exist yet");
                    continue;
                }
                message => message.map_err(|e| kafka_error("reading", e))?,
            },
        };
        let mut batch = vec![first.detach()];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                _ = &mut linger => break,
                message = consumer.recv() => match message {
                    Err(e) if missing_topic(&e) => {}
                    message => batch.push(message.map_err(|e| kafka_error("reading", e))?.detach()),
                },
            }
        }
        let mut reads = Vec::with_capacity(batch.len());
        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for message in &batch {
            let position = format!(
                "{}/{}@{}",
                message.topic(),
                message.partition(),
                message.offset()
            );
            offsets.insert(
                (message.topic().to_owned(), message.partition()),
                message.offset() + 1,
            );
            let event = map(debezium, position, message.key(), message.payload());
            if let Some(ms) = event.committed_ms {
                newest_ms = newest_ms.max(ms);
            }
            match event.mapped {
                Mapped::Read(read) => reads.push(read),
                Mapped::Skip => {}
                Mapped::Truncate {
                    position,
                    dataset,
                    tenant,
                    change_id,
                } => {
                    // Everything before the truncate first, so that its deletes see it.
                    ctx.submit(std::mem::take(&mut reads)).await?;
                    let deletes = truncate(ctx, &position, &dataset, &tenant, &change_id).await?;
                    reads.extend(deletes);
                }
            }
        }
        ctx.submit(reads).await?;
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|e| kafka_error("committing", e))?;
        }
        consumer
            .commit(&list, CommitMode::Async)
            .map_err(|e| kafka_error("committing", e))?;
        read_up_to.extend(offsets);
        ctx.figures.set_position(
            read_up_to
                .iter()
                .map(|((t, p), o)| format!("{t}/{p}@{o}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
}

/// The deletes of a truncate mapped with `delete_tenant_records`: one per record the tenant has
/// in the dataset now, each with an id derived from the truncate's.
async fn truncate(
    ctx: &ShardContext,
    position: &str,
    dataset: &str,
    tenant: &str,
    change_id: &str,
) -> Result<Vec<Read>, SourceError> {
    let ids = ctx
        .ingest
        .settled_records(dataset, tenant, &ctx.stop)
        .await?;
    let mut seen = HashSet::new();
    Ok(ids
        .into_iter()
        .filter(|id| seen.insert(id.clone()))
        .map(|id| {
            Read::Change(Candidate {
                position: position.to_owned(),
                change_id: format!("{change_id}-{id}"),
                dataset: dataset.to_owned(),
                tenant: Some(tenant.to_owned()),
                id: Some(id),
                op: "delete".into(),
                data: None,
                expected_version: None,
            })
        })
        .collect())
}

/// Runs a blocking call of librdkafka's (metadata, watermarks) off the async threads.
async fn blocking<T: Send + 'static>(
    consumer: &Arc<StreamConsumer>,
    call: impl FnOnce(&StreamConsumer) -> T + Send + 'static,
) -> Result<T, SourceError> {
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || call(&consumer))
        .await
        .map_err(|e| SourceError::kafka(ErrorClass::Transient, format!("a Kafka call failed: {e}")))
}

/// Events not yet read, summed over the assigned partitions; `None` when Kafka does not say.
fn lag(consumer: &StreamConsumer) -> Option<u64> {
    let assignment = consumer.assignment().ok()?;
    let positions = consumer.position().ok()?;
    let mut behind = 0u64;
    for element in assignment.elements() {
        let (_, high) = consumer
            .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(5))
            .ok()?;
        let at = positions
            .find_partition(element.topic(), element.partition())
            .and_then(|p| match p.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        behind += (high - at.unwrap_or(0)).max(0) as u64;
    }
    Some(behind)
}
