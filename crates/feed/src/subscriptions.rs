//! Subscriptions: one party following many tenants' feeds, with its progress kept by the
//! server.
//!
//! A subscription covers datasets and tenants (a list, or all). Its progress is one
//! [`FeedPosition`] per (dataset, tenant), recorded by acknowledging a batch's cursor. Each
//! batch holds changes of exactly one tenant of one dataset. The next batch comes from the
//! pending tenant acknowledged least recently, so a tenant with a large backlog takes turns with
//! the others instead of holding them up.
//!
//! A tenant whose acknowledged position fell behind its tombstone horizon (see
//! [`FeedError::Gone`]) is restarted from a snapshot, and the batch says so with `reset`: the
//! subscriber drops what it holds of that tenant before applying it.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use tenantsync_core::{DatasetName, TenantId};
use tenantsync_store::{FeedPosition, FeedRecord, MasterStore, Progress, StoreError, Subscription};
use tokio::time::Instant;

use crate::Hub;
use crate::cursor::{CursorError, CursorKey, SubscriptionCursor};
use crate::pending::{Key, Known};
use crate::tenant_feed::{FeedError, read_page};

/// Tenants probed in the store for one batch at most; more are left for the next call.
const MAX_PROBES: usize = 64;

/// One tenant's changes for a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub dataset: DatasetName,
    pub tenant: TenantId,
    /// The subscriber must drop what it holds of this tenant in this dataset first: the records
    /// that follow are a new snapshot.
    pub reset: bool,
    pub records: Vec<FeedRecord>,
    /// Acknowledging it records that this batch was processed.
    pub cursor: SubscriptionCursor,
    /// Whether this tenant is caught up after this batch.
    pub up_to_date: bool,
}

/// Errors of subscription operations.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error(transparent)]
    Cursor(#[from] CursorError),
    /// The subscription was deleted (or replaced) meanwhile.
    #[error("the subscription no longer exists")]
    Gone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<FeedError> for SubscriptionError {
    fn from(error: FeedError) -> Self {
        match error {
            // Handled where it can happen; kept total rather than panicking.
            FeedError::Gone => SubscriptionError::Gone,
            FeedError::Store(e) => SubscriptionError::Store(e),
        }
    }
}

/// One (dataset, tenant) a subscription covers, with what it acknowledged.
struct Candidate {
    dataset: DatasetName,
    tenant: TenantId,
    position: Option<FeedPosition>,
}

/// The (dataset, tenant) pairs of a subscription that may have something to deliver, least
/// recently acknowledged first (see [`crate::pending`]).
async fn pending(
    store: &dyn MasterStore,
    hub: &Hub,
    subscription: &Subscription,
) -> Result<Vec<Candidate>, StoreError> {
    let known: HashMap<Key, Known> = store
        .subscription_progress(&subscription.name)
        .await?
        .into_iter()
        .map(|p| {
            let known = Known {
                position: Some(p.position),
                delivered_at: Some(p.acked_at),
            };
            ((p.dataset, p.tenant), known)
        })
        .collect();
    Ok(
        crate::pending(hub, &subscription.datasets, &subscription.tenants, &known)
            .into_iter()
            .map(|(dataset, tenant)| {
                let position = known
                    .get(&(dataset.clone(), tenant.clone()))
                    .and_then(|k| k.position);
                Candidate {
                    dataset,
                    tenant,
                    position,
                }
            })
            .collect(),
    )
}

/// The next batch of the subscription, waiting up to `wait` for one when nothing is pending.
pub async fn next_batch(
    store: &dyn MasterStore,
    hub: &Hub,
    subscription: &Subscription,
    limit: usize,
    wait: Duration,
) -> Result<Option<Batch>, SubscriptionError> {
    let deadline = Instant::now() + wait;
    // Subscribed before looking: anything published after the look wakes the wait.
    let mut changed: Vec<_> = subscription
        .datasets
        .iter()
        .map(|d| hub.watch_dataset(d))
        .collect();
    loop {
        for rx in &mut changed {
            rx.borrow_and_update();
        }
        for candidate in pending(store, hub, subscription)
            .await?
            .into_iter()
            .take(MAX_PROBES)
        {
            let Candidate {
                dataset,
                tenant,
                position,
                ..
            } = candidate;
            let (page, reset) =
                match read_page(store, hub, &dataset, &tenant, position, limit).await {
                    Ok(page) => (page, false),
                    Err(FeedError::Gone) => (
                        read_page(store, hub, &dataset, &tenant, None, limit).await?,
                        true,
                    ),
                    Err(e) => return Err(e.into()),
                };
            if !reset && page.records.is_empty() {
                // Nothing to deliver (say, a snapshot of deleted records only): moving the
                // subscription past it loses nothing, and spares probing it on every fetch.
                if position != Some(page.next) {
                    let progress = Progress {
                        dataset,
                        tenant,
                        position: page.next,
                        acked_at: Utc::now(),
                    };
                    store
                        .ack(&subscription.name, subscription.created_at, &progress)
                        .await?;
                }
                continue;
            }
            return Ok(Some(Batch {
                cursor: SubscriptionCursor {
                    subscription: subscription.name.clone(),
                    created_at: subscription.created_at,
                    dataset: dataset.clone(),
                    tenant: tenant.clone(),
                    position: page.next,
                },
                dataset,
                tenant,
                reset,
                records: page.records,
                up_to_date: page.up_to_date,
            }));
        }
        if Instant::now() >= deadline || changed.is_empty() {
            return Ok(None);
        }
        let any = futures::future::select_all(changed.iter_mut().map(|rx| Box::pin(rx.changed())));
        if tokio::time::timeout_at(deadline, any).await.is_err() {
            return Ok(None);
        }
    }
}

/// Records a subscription's progress from a cursor it was given.
pub async fn ack(
    store: &dyn MasterStore,
    key: &CursorKey,
    subscription: &Subscription,
    cursor: &str,
) -> Result<(), SubscriptionError> {
    let cursor = SubscriptionCursor::decode(cursor, key)?;
    cursor.check(&subscription.name, subscription.created_at)?;
    if !subscription.datasets.contains(&cursor.dataset)
        || !subscription.tenants.covers(&cursor.tenant)
    {
        return Err(CursorError::Foreign(
            "dataset or tenant: the subscription no longer covers it",
        )
        .into());
    }
    let progress = Progress {
        dataset: cursor.dataset,
        tenant: cursor.tenant,
        position: cursor.position,
        acked_at: Utc::now(),
    };
    if store
        .ack(&subscription.name, subscription.created_at, &progress)
        .await?
    {
        Ok(())
    } else {
        Err(SubscriptionError::Gone)
    }
}

/// How far behind a subscription is on one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLag {
    pub dataset: DatasetName,
    pub tenant: TenantId,
    /// Records still to deliver, counted up to the limit [`lag`] was given.
    pub changes: usize,
    /// Age of the oldest record still to deliver.
    pub seconds: f64,
    /// Set when the acknowledged position is past tombstone retention: the next batch of this
    /// tenant resets it.
    pub reset_pending: bool,
}

/// The lag of every covered tenant that has something to deliver, counting up to `count_limit`
/// records per tenant (one store read of that many records per lagging tenant).
pub async fn lag(
    store: &dyn MasterStore,
    hub: &Hub,
    subscription: &Subscription,
    count_limit: usize,
) -> Result<Vec<TenantLag>, StoreError> {
    let now = Utc::now();
    let mut out = Vec::new();
    for c in pending(store, hub, subscription).await? {
        let page = read_page(store, hub, &c.dataset, &c.tenant, c.position, count_limit).await;
        let (records, reset_pending) = match page {
            Ok(page) => (page.records, false),
            Err(FeedError::Gone) => (Vec::new(), true),
            Err(FeedError::Store(e)) => return Err(e),
        };
        if records.is_empty() && !reset_pending {
            continue;
        }
        let oldest = records.iter().map(|r| r.record.updated_at).min();
        out.push(TenantLag {
            dataset: c.dataset,
            tenant: c.tenant,
            changes: records.len(),
            seconds: oldest.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0),
            reset_pending,
        });
    }
    out.sort_by(|a, b| (&a.dataset, &a.tenant).cmp(&(&b.dataset, &b.tenant)));
    Ok(out)
}
