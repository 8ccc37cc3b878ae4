//! The HTTP workers' shared queue over a dataset's batches log: leases with a visibility
//! timeout, acknowledgements, redelivery after expiry.
//!
//! Its state is in the master store (per batches-log partition the next offset not yet handed
//! out, and the outstanding leases), so every instance sharing the store serves one queue per
//! dataset.
//!
//! # Contract
//!
//! - **One live lease.** A batch is leased to one worker at a time: a new lease is granted by a
//!   compare-and-set of the partition's position, and an expired lease is retaken by exactly
//!   one caller ([`CoordinationStore::claim_batch`], [`CoordinationStore::retake_expired_batch`]).
//! - **At least once.** A batch is handed out until it is acknowledged: an expired,
//!   unacknowledged lease makes it available again (before any new batch), with the same id and
//!   contents.
//! - **Acknowledged is done.** An acknowledged batch is never handed out again. Any caller
//!   may acknowledge an outstanding batch, its lease live or expired.
//! - **Balanced.** New batches are taken from the batches log's partitions in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tenantsync_core::Topics;
use tenantsync_log::{Log, Partition};
use tenantsync_store::{CoordinationStore, Dataset};
use tokio::sync::watch;
use tracing::warn;

use crate::message::{self, BatchMessage};
use crate::{BatchId, BatchesError, millis, now_ms};

/// How often a worker waiting for a batch looks again, for batches appended by another
/// instance and leases expiring (batches appended here wake it at once).
const WAIT_POLL: Duration = Duration::from_millis(100);

/// A batch handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    pub batch: BatchMessage,
    pub expires_at: DateTime<Utc>,
}

/// The queue of every dataset's batches; see the module docs.
pub struct BatchQueue {
    log: Arc<dyn Log>,
    store: Arc<dyn CoordinationStore>,
    topics: Topics,
    /// The batches-log partition to look at first for the next new batch.
    turn: AtomicUsize,
    emitted: watch::Receiver<u64>,
}

impl BatchQueue {
    /// `emitted` changes whenever this instance appends batches (see
    /// [`BatcherStage::emitted`](crate::stage::BatcherStage::emitted)).
    pub fn new(
        log: Arc<dyn Log>,
        store: Arc<dyn CoordinationStore>,
        topics: Topics,
        emitted: watch::Receiver<u64>,
    ) -> Self {
        Self {
            log,
            store,
            topics,
            turn: AtomicUsize::new(0),
            emitted,
        }
    }

    /// Leases the next batch for `lease`, waiting up to `wait` for one; `None` if none became
    /// available.
    pub async fn lease(
        &self,
        dataset: &Dataset,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Leased>, BatchesError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut emitted = self.emitted.clone();
        let lease_ms = millis(lease);
        loop {
            emitted.mark_unchanged();
            if let Some(leased) = self.lease_at(dataset, now_ms(), lease_ms).await? {
                return Ok(Some(leased));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let poll = tokio::time::sleep_until(deadline.min(now + WAIT_POLL));
            tokio::select! {
                // Without a stage in this process (its sender gone) only the poll wakes us.
                Ok(()) = emitted.changed() => {}
                _ = poll => {}
            }
        }
    }

    /// Leases the next batch at `now_ms` until `now_ms + lease_ms`, without waiting: first a
    /// batch whose lease expired, then the next new batch, taking partitions in turn.
    pub async fn lease_at(
        &self,
        dataset: &Dataset,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<Leased>, BatchesError> {
        let topic = self.topics.batches(&dataset.name);
        let until = now_ms.saturating_add(lease_ms);
        while let Some(lease) = self
            .store
            .retake_expired_batch(&dataset.name, now_ms, until)
            .await?
        {
            let entries = self
                .log
                .read(&topic, lease.partition, lease.offset, 1, Duration::ZERO)
                .await?;
            match entries.first().filter(|e| e.offset == lease.offset) {
                Some(entry) => match message::decode(entry) {
                    Ok(batch) => {
                        return Ok(Some(leased(batch, until)));
                    }
                    Err(reason) => {
                        warn!(dataset = %dataset.name, partition = lease.partition, offset = lease.offset, %reason, "dropping an undecodable batch")
                    }
                },
                None => {
                    warn!(dataset = %dataset.name, batch = lease.batch_id, "a leased batch is no longer in the batches log (retention?); dropping its lease")
                }
            }
            self.store.ack_batch(&dataset.name, &lease.batch_id).await?;
        }

        let partitions = dataset.partitions.max(1) as usize;
        let mut positions = vec![0; partitions];
        'fresh: loop {
            for (partition, next) in self.store.batch_dispatch(&dataset.name).await? {
                if let Some(slot) = positions.get_mut(partition as usize) {
                    *slot = next;
                }
            }
            let first = self.turn.fetch_add(1, Ordering::Relaxed);
            for i in 0..partitions {
                let q = (first + i) % partitions;
                let partition = q as Partition;
                let expected = positions[q];
                let entries = self
                    .log
                    .read(&topic, partition, expected, 1, Duration::ZERO)
                    .await?;
                let Some(entry) = entries.into_iter().next() else {
                    continue;
                };
                let decoded = message::decode(&entry);
                let id = match &decoded {
                    Ok(batch) => batch.id.to_string(),
                    Err(_) => format!("undecodable-{partition}-{}", entry.offset),
                };
                let claimed = self
                    .store
                    .claim_batch(&dataset.name, partition, expected, entry.offset, &id, until)
                    .await?;
                if !claimed {
                    // Another worker moved this partition on: look at the positions again.
                    continue 'fresh;
                }
                match decoded {
                    Ok(batch) => return Ok(Some(leased(batch, until))),
                    Err(reason) => {
                        warn!(dataset = %dataset.name, partition, offset = entry.offset, %reason, "skipping an undecodable batch");
                        self.store.ack_batch(&dataset.name, &id).await?;
                        continue 'fresh;
                    }
                }
            }
            return Ok(None);
        }
    }

    /// Completes an outstanding batch; `false` if it is not outstanding (acknowledged before,
    /// or never handed out).
    pub async fn ack(&self, dataset: &Dataset, id: &BatchId) -> Result<bool, BatchesError> {
        Ok(self.store.ack_batch(&dataset.name, id.as_str()).await?)
    }
}

fn leased(batch: BatchMessage, until_ms: i64) -> Leased {
    Leased {
        batch,
        expires_at: DateTime::from_timestamp_millis(until_ms).unwrap_or(DateTime::<Utc>::MAX_UTC),
    }
}
