//! Idempotency-key retention: the master store keeps each change's outcome under its change id
//! (its idempotency key) so that a retry is applied once; outcomes older than the retention
//! window are pruned here, oldest first, a bounded batch per transaction, so that the table
//! does not grow forever.
//!
//! A retry inside the window is still applied once. A retry after it finds no outcome and is
//! applied again like a new change, unless its precondition (`If-Match`, `expected_version`)
//! refuses it; the change status route answers 404 for it. Never touches records or positions:
//! a batch the processor re-reads is kept from applying twice by the positions, not by these
//! rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use tenantsync_store::RecordStore;
use tenantsync_supervisor::{MetricsSource, ServiceError};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Outcomes deleted per transaction: small enough that applies waiting for the store (SQLite
/// has one writer) wait milliseconds, not seconds.
pub const PRUNE_BATCH: usize = 1_000;

/// The `idempotency-prune` service and its count of pruned keys.
pub struct IdempotencyPruner {
    store: Arc<dyn RecordStore>,
    retention: Duration,
    pruned: AtomicU64,
}

impl IdempotencyPruner {
    pub fn new(store: Arc<dyn RecordStore>, retention: Duration) -> Self {
        Self {
            store,
            retention,
            pruned: AtomicU64::new(0),
        }
    }

    /// Outcomes this instance pruned since it started.
    pub fn pruned(&self) -> u64 {
        self.pruned.load(Ordering::Relaxed)
    }

    /// Every `interval` until `stop`, prunes every outcome stored more than the retention ago,
    /// [`PRUNE_BATCH`] per transaction. Other instances sharing the store may prune at the same
    /// time: each outcome is deleted once.
    pub async fn run(
        &self,
        interval: Duration,
        stop: CancellationToken,
    ) -> Result<(), ServiceError> {
        let retention = chrono::Duration::from_std(self.retention).map_err(|_| {
            ServiceError::permanent(format!(
                "idempotency retention {:?} is out of range",
                self.retention
            ))
        })?;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
            let before = Utc::now() - retention;
            let mut total = 0;
            while !stop.is_cancelled() {
                let pruned = self
                    .store
                    .prune_outcomes(before, PRUNE_BATCH)
                    .await
                    .map_err(ServiceError::from_error)?;
                self.pruned.fetch_add(pruned, Ordering::Relaxed);
                total += pruned;
                if (pruned as usize) < PRUNE_BATCH {
                    break;
                }
            }
            if total > 0 {
                info!(pruned = total, %before, "pruned idempotency keys past retention");
            }
        }
    }
}

impl MetricsSource for IdempotencyPruner {
    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "idempotency_keys_pruned",
            "Change outcomes (idempotency keys) pruned past their retention by this instance",
            ConstCounter::new(self.pruned()),
        );
    }
}
