//! The dataset registry: declares datasets (their log topics first, then their row in the
//! master store) and answers "does this dataset exist, with how many partitions" from a cache.
//!
//! The master store is the source of truth, so every instance sharing a store sees datasets
//! declared by any of them; the cache only avoids a store round trip per request.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tenantsync_core::{DatasetName, Topics};
use tenantsync_log::{Cleanup, Log, TopicSpec};
use tenantsync_store::{Dataset, RecordStore};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::DatasetError;

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
        for spec in self.topic_specs(dataset) {
            self.log.ensure_topic(&spec).await?;
        }
        self.store.declare_dataset(dataset).await?;
        self.remember(dataset);
        Ok(if existing.is_some() {
            Declared::Existing
        } else {
            Declared::Created
        })
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

    /// Runs `task` for every declared dataset until `shutdown`, starting it as soon as the
    /// dataset becomes known (declared here, or found in the store, which is listed again
    /// every 5 s for datasets declared by other instances); then waits for every task to end.
    pub async fn run_per_dataset<F, Fut>(&self, shutdown: &CancellationToken, mut task: F)
    where
        F: FnMut(Dataset) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut running = HashMap::new();
        let mut declared = self.subscribe();
        loop {
            match self.all().await {
                Ok(all) => {
                    for dataset in all {
                        if let Entry::Vacant(slot) = running.entry(dataset.name.clone()) {
                            slot.insert(tokio::spawn(task(dataset)));
                        }
                    }
                }
                Err(error) => warn!(%error, "cannot list datasets"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = declared.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        for (_, task) in running {
            let _ = task.await;
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
