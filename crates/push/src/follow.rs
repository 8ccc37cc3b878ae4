//! Following many tenants' feeds for one target: which (dataset, tenant) to deliver next, and
//! its next page.
//!
//! A target covers datasets and tenants (a list, or all). Its progress is one [`FeedPosition`]
//! per (dataset, tenant), kept where the target keeps it (see the crate's docs). The next tenant
//! to deliver is the pending one delivered least recently, so a tenant with a large backlog takes
//! turns with the others instead of holding them up. A tenant whose position fell behind its
//! tombstone horizon is read again from a snapshot, and its page says `reset`.
//!
//! This module reads; it never writes progress.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tenantsync_core::{DatasetName, TenantId};
use tenantsync_feed::{FeedError, Hub, Page, read_page};
use tenantsync_store::{FeedPosition, FeedStore, StoreError, TenantSelection};
use tokio::sync::watch;

/// What a target covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub datasets: Vec<DatasetName>,
    pub tenants: TenantSelection,
}

pub use tenantsync_feed::pending::{Key, Known};

/// The pairs the scope covers that may have something to deliver, least recently delivered
/// first: [`tenantsync_feed::pending`] over the scope.
pub fn pending(hub: &Hub, scope: &Scope, known: &HashMap<Key, Known>) -> Vec<Key> {
    tenantsync_feed::pending(hub, &scope.datasets, &scope.tenants, known)
}

/// A page to deliver, and whether it starts the tenant over (`reset`: the receiver drops what it
/// holds of the tenant in the dataset first).
#[derive(Debug, Clone, PartialEq)]
pub struct Next {
    pub page: Page,
    pub reset: bool,
    /// Where the page was read from: the position given, or for a snapshot (reset or first
    /// read) its start, `{next_seq: 0, live_from}`.
    pub from: FeedPosition,
}

/// The tenant's next page at `position` (`None`: a first snapshot); a position behind the
/// tombstone horizon starts a snapshot over, with `reset`.
pub async fn next_page(
    store: &dyn FeedStore,
    hub: &Hub,
    (dataset, tenant): (&DatasetName, &TenantId),
    position: Option<FeedPosition>,
    limit: usize,
) -> Result<Next, StoreError> {
    let (page, reset, position) =
        match read_page(store, hub, dataset, tenant, position, limit).await {
            Ok(page) => (page, false, position),
            Err(FeedError::Gone) => (
                read_page(store, hub, dataset, tenant, None, limit)
                    .await
                    .map_err(store_error)?,
                true,
                None,
            ),
            Err(FeedError::Store(e)) => return Err(e),
        };
    let from = position.unwrap_or(FeedPosition {
        next_seq: 0,
        live_from: page.next.live_from,
    });
    Ok(Next { page, reset, from })
}

/// Reads the whole rest of a snapshot that `first` started (for a sink's reset, written in one
/// transaction): pages until the tenant is up to date. Holds the tenant's records in memory.
pub async fn rest_of_snapshot(
    store: &dyn FeedStore,
    hub: &Hub,
    key: (&DatasetName, &TenantId),
    first: Page,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut all = first;
    while !all.up_to_date {
        let more = next_page(store, hub, key, Some(all.next), limit).await?;
        if more.reset {
            // Purged again under the snapshot: start over.
            return Box::pin(rest_of_snapshot(store, hub, key, more.page, limit)).await;
        }
        all.records.extend(more.page.records);
        all.next = more.page.next;
        all.up_to_date = more.page.up_to_date;
    }
    Ok(all)
}

fn store_error(e: FeedError) -> StoreError {
    match e {
        FeedError::Store(e) => e,
        // A snapshot (no position) is never behind the horizon.
        FeedError::Gone => StoreError::InvalidArgument("a new snapshot read as too old".into()),
    }
}

/// Wake-ups for a scope: [`Changes::wait`] returns when any covered dataset changed since the
/// last call, or after `timeout`.
pub struct Changes(Vec<watch::Receiver<u64>>);

impl Changes {
    /// Subscribed now: anything published after this wakes the next wait.
    pub fn new(hub: &Hub, scope: &Scope) -> Self {
        Self(
            scope
                .datasets
                .iter()
                .map(|d| hub.watch_dataset(d))
                .collect(),
        )
    }

    /// Marks everything published so far as seen.
    pub fn seen(&mut self) {
        for rx in &mut self.0 {
            rx.borrow_and_update();
        }
    }

    /// Waits for a change not yet seen, at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) {
        if self.0.is_empty() {
            tokio::time::sleep(timeout).await;
            return;
        }
        let any = futures::future::select_all(self.0.iter_mut().map(|rx| Box::pin(rx.changed())));
        let _ = tokio::time::timeout(timeout, any).await;
    }
}

/// A target's lag: records still to deliver (counted up to `count_limit` per tenant) and the
/// age of the oldest, over every pending tenant.
pub async fn lag(
    store: &dyn FeedStore,
    hub: &Hub,
    scope: &Scope,
    known: &HashMap<Key, Known>,
    count_limit: usize,
) -> Result<(u64, f64), StoreError> {
    let now = Utc::now();
    let (mut changes, mut oldest) = (0u64, None::<DateTime<Utc>>);
    for (dataset, tenant) in pending(hub, scope, known) {
        let position = known
            .get(&(dataset.clone(), tenant.clone()))
            .and_then(|k| k.position);
        let next = next_page(store, hub, (&dataset, &tenant), position, count_limit).await?;
        changes += next.page.records.len() as u64;
        if let Some(t) = next.page.records.iter().map(|r| r.record.updated_at).min() {
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
    }
    let seconds = oldest.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
    Ok((changes, seconds))
}
