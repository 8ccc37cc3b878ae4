//! Tombstone retention in the master store: deletes stay as tombstones for the configured
//! retention, so that every feed reader within it is shown them, and are purged afterwards.
//! Purging raises the tenant's horizon; a reader behind it is told to start over from a
//! snapshot (see the feed's `FeedError::Gone`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tenantsync_dataset::Datasets;
use tenantsync_feed::Hub;
use tenantsync_store::FeedStore;
use tenantsync_supervisor::ServiceError;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Tombstones deleted per transaction.
const PURGE_BATCH: usize = 10_000;

/// The retention service: purges tombstones older than `retention` from every dataset, every
/// `interval`, until `stop`, and tells the hub. (Another instance purging the same store does
/// not tell this one's hub: its shared tails still hold the purged tombstones, so what they
/// serve stays complete; positions they do not cover are read from the store, which answers
/// gone.)
pub async fn run(
    store: Arc<dyn FeedStore>,
    hub: Arc<Hub>,
    datasets: Arc<Datasets>,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) -> Result<(), ServiceError> {
    let retention = chrono::Duration::from_std(retention).map_err(|_| {
        ServiceError::permanent(format!("tombstone retention {retention:?} is out of range"))
    })?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
        for dataset in datasets.all().await.map_err(ServiceError::from_error)? {
            let before = Utc::now() - retention;
            loop {
                let purged = store
                    .purge_tombstones(&dataset.name, before, PURGE_BATCH)
                    .await
                    .map_err(ServiceError::from_error)?;
                if purged > 0 {
                    hub.purged(&dataset.name, purged);
                    info!(dataset = %dataset.name, purged, "purged tombstones past retention");
                }
                if (purged as usize) < PURGE_BATCH {
                    break;
                }
            }
        }
    }
}
