//! Tombstone retention in the master store: deletes stay as tombstones for the configured
//! retention, so that every feed reader within it is shown them, and are purged afterwards.
//! Purging raises the tenant's horizon; a reader behind it is told to start over from a
//! snapshot (see [`FeedError::Gone`](crate::FeedError::Gone)).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tenantsync_dataset::Datasets;
use tenantsync_store::FeedStore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Hub;

/// Tombstones deleted per transaction.
const PURGE_BATCH: usize = 10_000;

/// Purges tombstones older than `retention` from every dataset, every `interval`, until
/// `shutdown`, and tells the hub. (Another instance purging the same store does not tell this
/// one's hub: its shared tails still hold the purged tombstones, so what they serve stays
/// complete; positions they do not cover are read from the store, which answers gone.)
pub async fn run(
    store: Arc<dyn FeedStore>,
    hub: Arc<Hub>,
    datasets: Arc<Datasets>,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return;
        };
        let all = match datasets.all().await {
            Ok(all) => all,
            Err(error) => {
                warn!(%error, "tombstone purge: cannot list datasets");
                continue;
            }
        };
        for dataset in all {
            let before = Utc::now() - retention;
            loop {
                match store
                    .purge_tombstones(&dataset.name, before, PURGE_BATCH)
                    .await
                {
                    Ok(0) => break,
                    Ok(n) => {
                        hub.purged(&dataset.name, n);
                        info!(dataset = %dataset.name, purged = n, "purged tombstones past retention");
                        if (n as usize) < PURGE_BATCH {
                            break;
                        }
                    }
                    Err(error) => {
                        warn!(dataset = %dataset.name, %error, "tombstone purge failed");
                        break;
                    }
                }
            }
        }
    }
}
