//! The dataset registry: declares datasets (their log topics first, then their row in the
//! master store) and answers "does this dataset exist, with how many partitions" from a cache.
//!
//! The master store is the source of truth, so every instance sharing a store sees datasets
//! declared by any of them; the cache only avoids a store round trip per request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tenantsync_core::{Change, DatasetName, Topics};
use tenantsync_log::{Cleanup, Log, LogError, TopicSpec};
use tenantsync_store::{Dataset, RecordStore};
use tenantsync_supervisor::{ServiceError, Supervisor};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::DatasetError;

/// A component that runs services of its own for each dataset (the processor, the batcher, the
/// hub's tails).
pub trait PerDataset: Send + Sync + 'static {
    /// Starts this component's services for `dataset` under `supervisor`; does nothing for
    /// those running already.
    fn start(self: Arc<Self>, supervisor: &Supervisor, dataset: &Dataset);
}

/// Starts the `datasets` service, which starts every component for every dataset.
pub fn supervise(
    supervisor: &Supervisor,
    datasets: Arc<Datasets>,
    components: Vec<Arc<dyn PerDataset>>,
) {
    let watcher = supervisor.clone();
    supervisor.spawn("datasets", move |stop| {
        let (datasets, components, supervisor) =
            (datasets.clone(), components.clone(), watcher.clone());
        async move {
            datasets
                .watch(&supervisor, &components, stop)
                .await
                .map_err(ServiceError::from_error)
        }
    });
}

/// The most partitions a dataset may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// Whether [`Datasets::declare`] created the dataset or found it declared already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    Created,
    Existing,
}

pub struct Datasets {
    log: Arc<dyn Log>,
    store: Arc<dyn RecordStore>,
    topics: Topics,
    tombstone_retention: Duration,
    cache: RwLock<HashMap<DatasetName, u32>>,
    /// Bumped whenever this instance learns of a new dataset, so the processor starts on it.
    changed: watch::Sender<u64>,
}

impl Datasets {
    pub fn new(
        log: Arc<dyn Log>,
        store: Arc<dyn RecordStore>,
        topics: Topics,
        tombstone_retention: Duration,
    ) -> Self {
        Self {
            log,
            store,
            topics,
            tombstone_retention,
            cache: RwLock::new(HashMap::new()),
            changed: watch::Sender::new(0),
        }
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Declares a dataset: creates (or checks) its changes, state and batches topics, then
    /// records it in the master store. Declaring it again with the same partition count is
    /// harmless.
    pub async fn declare(&self, dataset: &Dataset) -> Result<Declared, DatasetError> {
        if dataset.partitions == 0 || dataset.partitions > MAX_PARTITIONS {
            return Err(DatasetError::InvalidPartitions {
                dataset: dataset.name.to_string(),
                partitions: dataset.partitions,
                max: MAX_PARTITIONS,
            });
        }
        let existing = self.get(&dataset.name).await?;
        if let Some(existing) = &existing
            && existing.partitions != dataset.partitions
        {
            return Err(tenantsync_store::StoreError::DatasetMismatch {
                dataset: dataset.name.to_string(),
                existing: existing.partitions,
                requested: dataset.partitions,
            }
            .into());
        }
        // Topics first: a dataset visible in the store always has its topics.
        self.ensure_topics(dataset).await?;
        self.store.declare_dataset(dataset).await?;
        self.remember(dataset);
        Ok(if existing.is_some() {
            Declared::Existing
        } else {
            Declared::Created
        })
    }

    /// Creates the dataset's topics, or checks that the existing ones fit (partition count,
    /// cleanup policy).
    pub async fn ensure_topics(&self, dataset: &Dataset) -> Result<(), LogError> {
        for spec in self.topic_specs(dataset) {
            self.log.ensure_topic(&spec).await?;
        }
        Ok(())
    }

    /// Creates (or checks) the dataset's Avro state topic, `{prefix}.{dataset}.state.avro`:
    /// compacted like the state topic, with as many partitions.
    pub async fn ensure_avro_topic(&self, dataset: &Dataset) -> Result<(), LogError> {
        self.log
            .ensure_topic(&TopicSpec {
                name: self.topics.state_avro(&dataset.name),
                partitions: dataset.partitions,
                cleanup: Cleanup::Compact {
                    tombstone_retention: self.tombstone_retention,
                },
            })
            .await
    }

    fn topic_specs(&self, dataset: &Dataset) -> [TopicSpec; 3] {
        [
            TopicSpec {
                name: self.topics.changes(&dataset.name),
                partitions: dataset.partitions,
                cleanup: Cleanup::Delete,
            },
            TopicSpec {
                name: self.topics.state(&dataset.name),
                partitions: dataset.partitions,
                cleanup: Cleanup::Compact {
                    tombstone_retention: self.tombstone_retention,
                },
            },
            self.batches_topic(dataset),
        ]
    }

    /// The batches log of a dataset: as many partitions as the dataset, never compacted (each
    /// entry is one batch).
    pub fn batches_topic(&self, dataset: &Dataset) -> TopicSpec {
        TopicSpec {
            name: self.topics.batches(&dataset.name),
            partitions: dataset.partitions,
            cleanup: Cleanup::Delete,
        }
    }

    /// Appends changes to the dataset's changes log, each to its tenant's partition; returns once
    /// the log holds them durably. Every change enters tenantsync this way, whoever made it.
    pub async fn append_changes(
        &self,
        dataset: &Dataset,
        changes: &[Change],
    ) -> Result<(), LogError> {
        if changes.is_empty() {
            return Ok(());
        }
        let messages = changes
            .iter()
            .map(|c| crate::changes::encode(c, dataset.partitions))
            .collect();
        self.log
            .append(&self.topics.changes(&dataset.name), messages)
            .await?;
        Ok(())
    }

    /// Whether the processor has applied every change appended so far to the tenant's partition
    /// of the dataset's changes log.
    pub async fn applied_all(
        &self,
        dataset: &Dataset,
        tenant: &tenantsync_core::TenantId,
    ) -> Result<bool, DatasetError> {
        let partition = tenantsync_core::partition_for_tenant(tenant, dataset.partitions);
        let end = self
            .log
            .end_offset(&self.topics.changes(&dataset.name), partition)
            .await?;
        Ok(self.store.position(&dataset.name, partition).await? >= end)
    }

    /// The dataset, if declared (by this instance or any other sharing the store).
    pub async fn get(&self, name: &DatasetName) -> Result<Option<Dataset>, DatasetError> {
        if let Some(&partitions) = self.cache.read().expect("cache lock").get(name) {
            return Ok(Some(Dataset {
                name: name.clone(),
                partitions,
            }));
        }
        let found = self
            .store
            .datasets()
            .await?
            .into_iter()
            .find(|d| &d.name == name);
        if let Some(d) = &found {
            self.remember(d);
        }
        Ok(found)
    }

    /// Every declared dataset, refreshed from the store.
    pub async fn all(&self) -> Result<Vec<Dataset>, DatasetError> {
        let all = self.store.datasets().await?;
        for d in &all {
            self.remember(d);
        }
        Ok(all)
    }

    /// The `datasets` service: starts every component's services for every declared dataset
    /// as soon as the dataset becomes known (declared here, or found in the store, which is
    /// listed again every 5 s for datasets declared by other instances), until `stop`.
    /// Starting is idempotent, so a run that starts over starts only what is not running.
    pub async fn watch(
        &self,
        supervisor: &Supervisor,
        components: &[Arc<dyn PerDataset>],
        stop: CancellationToken,
    ) -> Result<(), DatasetError> {
        let mut declared = self.subscribe();
        loop {
            for dataset in self.all().await? {
                for component in components {
                    component.clone().start(supervisor, &dataset);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = declared.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    /// A receiver that changes whenever a dataset becomes known to this instance.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn remember(&self, dataset: &Dataset) {
        let new = self
            .cache
            .write()
            .expect("cache lock")
            .insert(dataset.name.clone(), dataset.partitions)
            .is_none();
        if new {
            self.changed.send_modify(|n| *n += 1);
        }
    }
}
