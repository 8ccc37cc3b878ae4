use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use tenantsync_core::Record;
use tenantsync_dataset::{AppliedHub, CommitObserver, Datasets, PerDataset, changes, state};
use tenantsync_log::{Log, LogError, Message, Offset, Output, Partition, Publisher};
use tenantsync_schema::{Contract, Schemas};
use tenantsync_store::{Dataset, LoggedChange, MasterStore, RejectedEntry};
use tenantsync_supervisor::{MetricsSource, ServiceError, Supervisor};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{ProcessorError, check};

/// Rejected changes-log entries kept per dataset for `GET /v1/datasets/{dataset}/rejected`; the
/// oldest beyond it are dropped and counted.
const REJECTED_KEPT: usize = 10_000;

/// Tuning of the processor. The defaults suit both backends.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Most changes consumed and applied in one batch (one store transaction).
    pub max_batch: usize,
    /// How long one poll of the changes log waits for new entries.
    pub poll_wait: Duration,
}

impl ProcessorConfig {
    pub const DEFAULT_MAX_BATCH: usize = 8_000;
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            max_batch: Self::DEFAULT_MAX_BATCH,
            poll_wait: Duration::from_millis(500),
        }
    }
}

/// Counters of the processor's work since start.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    /// Changes applied to the master store (duplicates and re-reads after a restart included).
    pub changes: AtomicU64,
    /// Store transactions, one per partition of each polled batch.
    pub batches: AtomicU64,
    /// States handed to the state log (counted when sent, before the log acknowledges them).
    pub states_published: AtomicU64,
    /// Changes-log entries skipped because they do not decode as a change.
    pub undecodable: AtomicU64,
    /// Changes-log entries deleted by the log before they were applied.
    pub lost: AtomicU64,
    /// States handed to the Avro state log (tombstones included), counted when sent.
    pub avro_published: AtomicU64,
    /// States of datasets that ask for Avro that fit none of the dataset's Avro versions (or
    /// that have none): published as JSON only.
    pub avro_unencodable: AtomicU64,
}

/// Starts the service `processor/{dataset}`: one member of the processors' consumer group on
/// the dataset's changes log. A failed run starts over from the last committed position; every
/// step is idempotent, so starting over is always safe.
impl PerDataset for Processor {
    fn start(self: Arc<Self>, supervisor: &Supervisor, dataset: &Dataset) {
        let dataset = dataset.clone();
        supervisor.spawn(format!("processor/{}", dataset.name), move |stop| {
            let (processor, dataset) = (self.clone(), dataset.clone());
            async move {
                info!(dataset = %dataset.name, partitions = dataset.partitions, "processing dataset");
                processor
                    .consume(&dataset, &stop)
                    .await
                    .map_err(ServiceError::from_error)
            }
        });
    }
}

impl MetricsSource for Processor {
    fn register_metrics(&self, registry: &mut Registry) {
        let stats = &self.stats;
        for (name, help, value) in [
            (
                "processor_changes",
                "Changes applied to the master store",
                &stats.changes,
            ),
            (
                "processor_batches",
                "Store transactions of the processor",
                &stats.batches,
            ),
            (
                "processor_states_published",
                "States handed to the state log",
                &stats.states_published,
            ),
            (
                "processor_undecodable",
                "Changes-log entries skipped as undecodable",
                &stats.undecodable,
            ),
            (
                "processor_lost",
                "Changes-log entries deleted by retention before they were applied",
                &stats.lost,
            ),
            (
                "processor_avro_published",
                "States handed to the Avro state log",
                &stats.avro_published,
            ),
            (
                "processor_avro_unencodable",
                "States that fit no Avro version of their dataset, published as JSON only",
                &stats.avro_unencodable,
            ),
        ] {
            registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
        }
    }
}

/// Applies every dataset's changes to the master store and publishes the results.
pub struct Processor {
    log: Arc<dyn Log>,
    store: Arc<dyn MasterStore>,
    datasets: Arc<Datasets>,
    /// Data contracts: patches are checked against them when applied, and datasets that ask
    /// for Avro get their states published as Avro too.
    schemas: Arc<Schemas>,
    config: ProcessorConfig,
    stats: ProcessorStats,
    applied: Arc<AppliedHub>,
    observer: Option<Arc<dyn CommitObserver>>,
}

impl Processor {
    pub fn new(
        log: Arc<dyn Log>,
        store: Arc<dyn MasterStore>,
        datasets: Arc<Datasets>,
        schemas: Arc<Schemas>,
        config: ProcessorConfig,
    ) -> Self {
        Self {
            log,
            store,
            datasets,
            schemas,
            config,
            stats: ProcessorStats::default(),
            applied: Arc::new(AppliedHub::default()),
            observer: None,
        }
    }

    /// Tells `observer` of every committed batch.
    pub fn with_observer(mut self, observer: Arc<dyn CommitObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn stats(&self) -> &ProcessorStats {
        &self.stats
    }

    /// Where writers wait for the outcome of changes this instance applies.
    pub fn applied(&self) -> Arc<AppliedHub> {
        self.applied.clone()
    }

    async fn consume(
        &self,
        dataset: &Dataset,
        shutdown: &CancellationToken,
    ) -> Result<(), ProcessorError> {
        let topics = self.datasets.topics();
        let mut consumer = self
            .log
            .consume(&topics.processor_group(), &topics.changes(&dataset.name))
            .await?;
        let state_topic = topics.state(&dataset.name);
        let avro_topic = topics.state_avro(&dataset.name);
        let mut avro_topic_ready = false;
        // Applying batch N+1 overlaps publishing batch N. Publishes stay in order (N+1's starts
        // after N's finished), and each publishes its states and commits its offsets as one
        // step, bound to the assignment its entries were polled under: a processor that lost
        // the partitions meanwhile publishes nothing.
        let mut publishing: Option<Publish> = None;
        loop {
            let entries = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    if let Some(publish) = publishing.take() {
                        publish.finish().await?;
                    }
                    return Ok(());
                }
                entries = consumer.poll(self.config.max_batch, self.config.poll_wait) => entries?,
            };
            if entries.is_empty() {
                if let Some(publish) = publishing.take() {
                    publish.finish().await?;
                }
                continue;
            }
            let publisher = consumer.publisher();
            let (count, started) = (entries.len(), Instant::now());
            let contract = self.schemas.contract(&dataset.name).await?;
            if contract.avro && !avro_topic_ready {
                self.datasets.ensure_avro_topic(dataset).await?;
                avro_topic_ready = true;
            }
            let (states, offsets) = self.apply(dataset, &contract, entries).await?;
            let applied = started.elapsed();
            if let Some(publish) = publishing.take() {
                publish.finish().await?;
            }
            debug!(dataset = %dataset.name, count, ?applied, waited_for_publish = ?(started.elapsed() - applied), "batch applied");
            let mut outputs = vec![Output::new(&state_topic, states.json)];
            if contract.avro {
                outputs.push(Output::new(&avro_topic, states.avro));
            }
            publishing = Some(Publish::start(publisher, outputs, offsets));
        }
    }

    /// Applies a polled batch, partition by partition, to the master store. Returns the state
    /// messages to publish (Avro ones too when the contract asks for Avro) and, per partition,
    /// the offset to commit once they are published.
    async fn apply(
        &self,
        dataset: &Dataset,
        contract: &Arc<Contract>,
        entries: Vec<tenantsync_log::Entry>,
    ) -> Result<(States, Vec<(Partition, Offset)>), ProcessorError> {
        let mut by_partition: BTreeMap<Partition, Vec<tenantsync_log::Entry>> = BTreeMap::new();
        for entry in entries {
            by_partition.entry(entry.partition).or_default().push(entry);
        }
        // Patches are held to the batch's contract as they are applied.
        let check = check::of(contract);
        let mut states = States::default();
        let mut offsets = Vec::with_capacity(by_partition.len());
        for (partition, entries) in by_partition {
            let next = entries.last().map_or(0, |e| e.offset + 1);
            let mut batch = Vec::with_capacity(entries.len());
            let mut rejected = Vec::new();
            for entry in &entries {
                match changes::decode(entry) {
                    Ok(change) => batch.push(LoggedChange {
                        offset: entry.offset,
                        change,
                    }),
                    Err(reason) => {
                        // Not ours to fix and never going to decode: keep it for an admin to
                        // see, and go on with the partition.
                        warn!(dataset = %dataset.name, partition, offset = entry.offset, %reason, "skipping undecodable change");
                        rejected.push(RejectedEntry {
                            partition,
                            offset: entry.offset,
                            reason: reason.to_string(),
                            at: Utc::now(),
                        });
                    }
                }
            }
            if !rejected.is_empty() {
                // Before the position moves past them: recorded at least once, and recording
                // again after a crash changes nothing.
                self.store
                    .record_rejected(&dataset.name, &rejected, REJECTED_KEPT)
                    .await?;
                self.stats
                    .undecodable
                    .fetch_add(rejected.len() as u64, Ordering::Relaxed);
            }
            let applied = self
                .store
                .apply_checked(&dataset.name, partition, &batch, next, check.clone())
                .await?;
            let first = entries.first().map_or(next, |e| e.offset);
            if first > applied.previous_position {
                // Nothing can bring these back; say so loudly rather than carry on silently.
                self.stats
                    .lost
                    .fetch_add(first - applied.previous_position, Ordering::Relaxed);
                error!(
                    dataset = %dataset.name, partition, from = applied.previous_position, to = first,
                    "changes-log entries were deleted (retention?) before the processor applied them; \
                     they are lost: keep the changes log's retention longer than any processor outage"
                );
            }
            for record in &applied.states {
                let message = state::encode(record, dataset.partitions);
                if contract.avro {
                    states.add_avro(dataset, contract, record, &message);
                }
                states.json.push(message);
            }
            if let Some(observer) = &self.observer {
                observer.committed(&dataset.name, &applied.states);
            }
            self.applied.notify(&dataset.name, &batch, &applied);
            offsets.push((partition, next));
            self.stats
                .changes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        if contract.avro && contract.avro_versions.is_empty() && states.unencodable > 0 {
            error!(
                dataset = %dataset.name, states = states.unencodable,
                "the dataset asks for Avro but has no Avro schema version; its states are published as JSON only"
            );
        }
        self.stats
            .states_published
            .fetch_add(states.json.len() as u64, Ordering::Relaxed);
        self.stats
            .avro_published
            .fetch_add(states.avro.len() as u64, Ordering::Relaxed);
        self.stats
            .avro_unencodable
            .fetch_add(states.unencodable, Ordering::Relaxed);
        Ok((states, offsets))
    }
}

/// The state messages of one batch: JSON for the state log, Avro for the Avro state log.
#[derive(Default)]
struct States {
    json: Vec<Message>,
    avro: Vec<Message>,
    /// States that fit no Avro version (or there is none).
    unencodable: u64,
}

impl States {
    /// Adds the Avro copy of a state whose JSON message is `json`: same partition, key and
    /// headers; the value encoded with the newest Avro version the data fits, or none for a
    /// tombstone. A state that fits no version gets no Avro message: it is counted and logged
    /// (by tenant and id: the data itself never goes to the logs).
    fn add_avro(
        &mut self,
        dataset: &Dataset,
        contract: &Contract,
        record: &Record,
        json: &Message,
    ) {
        let value = match &record.data {
            None => None,
            Some(data) => {
                let encoded = contract
                    .avro_versions
                    .iter()
                    .find_map(|v| v.schema.encode(v.id, data).ok());
                match encoded {
                    Some(bytes) => Some(bytes),
                    None => {
                        self.unencodable += 1;
                        // No version at all is reported once per batch by the caller.
                        if !contract.avro_versions.is_empty() {
                            error!(
                                dataset = %dataset.name, tenant = %record.tenant, id = %record.id,
                                version = record.version,
                                avro_versions = contract.avro_versions.len(),
                                "state fits none of the dataset's Avro schema versions; published as JSON only"
                            );
                        }
                        return;
                    }
                }
            }
        };
        self.avro.push(Message {
            partition: json.partition,
            key: json.key.clone(),
            value,
            headers: json.headers.clone(),
        });
    }
}

/// A batch's states on their way to the state log, with the offsets they cover.
struct Publish {
    task: JoinHandle<Result<(), LogError>>,
}

impl Publish {
    fn start(
        publisher: Box<dyn Publisher>,
        outputs: Vec<Output>,
        offsets: Vec<(Partition, Offset)>,
    ) -> Self {
        let task = tokio::spawn(async move { publisher.publish(outputs, offsets).await });
        Self { task }
    }

    /// Waits until the states are durable and the offsets committed. A batch of partitions that
    /// moved to another processor is not an error: its new owner re-reads it from the last
    /// commit and publishes it (the store's applies are idempotent).
    async fn finish(self) -> Result<(), ProcessorError> {
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(LogError::NotOwner { topic, partition })) => {
                debug!(%topic, partition, "partition moved to another processor; its batch was not published");
                Ok(())
            }
            Ok(Err(error)) => Err(error.into()),
            Err(join) => Err(LogError::backend("publishing states", true, join).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use tenantsync_core::{ChangeId, DatasetName, EntityId, Object, TenantId};
    use tenantsync_schema::AvroVersion;
    use tenantsync_schema::avro::AvroSchema;

    use super::*;

    fn dataset() -> Dataset {
        Dataset {
            name: DatasetName::new("orders").unwrap(),
            partitions: 4,
        }
    }

    fn record(id: &str, data: Option<serde_json::Value>) -> Record {
        Record {
            tenant: TenantId::new("acme").unwrap(),
            id: EntityId::new(id).unwrap(),
            version: 3,
            data: data.map(|d| serde_json::from_value::<Object>(d).unwrap()),
            updated_at: Utc::now(),
            change_id: ChangeId::new("c-1").unwrap(),
        }
    }

    fn version(version: u32, id: u32, fields: serde_json::Value) -> AvroVersion {
        let text = json!({"type": "record", "name": "Order", "fields": fields}).to_string();
        AvroVersion {
            version,
            id,
            schema: Arc::new(AvroSchema::parse(&text).unwrap()),
        }
    }

    /// Version 3 (id 13) requires `b`; version 2 (id 12) has an optional `c`; version 1 (id 11)
    /// has only `a`.
    fn contract() -> Contract {
        Contract {
            json: None,
            avro: true,
            avro_versions: vec![
                version(
                    3,
                    13,
                    json!([{"name": "a", "type": "long"}, {"name": "b", "type": "string"}]),
                ),
                version(
                    2,
                    12,
                    json!([
                        {"name": "a", "type": "long"},
                        {"name": "c", "type": ["null", "string"], "default": null}
                    ]),
                ),
                version(1, 11, json!([{"name": "a", "type": "long"}])),
            ],
        }
    }

    fn add(states: &mut States, contract: &Contract, record: &Record) -> Message {
        let json = state::encode(record, dataset().partitions);
        states.add_avro(&dataset(), contract, record, &json);
        json
    }

    fn schema_id(value: &[u8]) -> u32 {
        assert_eq!(value[0], 0, "magic byte");
        u32::from_be_bytes(value[1..5].try_into().unwrap())
    }

    #[test]
    fn a_state_is_encoded_with_the_newest_version_it_fits_keyed_like_the_json_state() {
        let (contract, mut states) = (contract(), States::default());
        let newest = add(
            &mut states,
            &contract,
            &record("x", Some(json!({"a": 1, "b": "y"}))),
        );
        // Fits versions 2 and 1.
        let older = add(&mut states, &contract, &record("z", Some(json!({"a": 2}))));
        assert_eq!(states.unencodable, 0);
        let ids: Vec<u32> = states
            .avro
            .iter()
            .map(|m| schema_id(m.value.as_deref().unwrap()))
            .collect();
        assert_eq!(ids, vec![13, 12]);
        for (avro, json) in states.avro.iter().zip([newest, older]) {
            assert_eq!(
                (avro.partition, &avro.key, &avro.headers),
                (json.partition, &json.key, &json.headers)
            );
        }
    }

    #[test]
    fn a_tombstone_is_a_null_value_even_without_versions() {
        let mut contract = contract();
        contract.avro_versions.clear();
        let mut states = States::default();
        let json = add(&mut states, &contract, &record("x", None));
        assert_eq!(states.avro.len(), 1);
        assert_eq!(states.avro[0].value, None);
        assert_eq!(states.avro[0].key, json.key);
        assert_eq!(states.unencodable, 0);
    }

    #[test]
    fn a_state_that_fits_no_version_is_counted_and_not_published() {
        let mut states = States::default();
        add(
            &mut states,
            &contract(),
            &record("x", Some(json!({"a": "no"}))),
        );
        let mut none = contract();
        none.avro_versions.clear();
        add(&mut states, &none, &record("y", Some(json!({"a": 1}))));
        assert!(states.avro.is_empty());
        assert_eq!(states.unencodable, 2);
    }
}
