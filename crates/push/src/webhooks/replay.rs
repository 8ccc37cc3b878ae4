//! `POST /v1/webhooks/{name}/replay`: moving an endpoint's positions back, so that what it was
//! sent since a time, or since a cursor a message carried, is sent again.
//!
//! The new positions are written with [`PushStore::replace_push_progress`], which fences
//! whoever delivers the endpoint: its next progress write fails, it stops, and the next holder
//! resumes from the new positions. A message in flight for a moved tenant is dropped (the
//! replay sends its records again anyway). This module never sends anything.
//!
//! [`PushStore::replace_push_progress`]: tenantsync_store::PushStore::replace_push_progress

use chrono::{DateTime, Utc};
use tenantsync_core::{DatasetName, TenantId};
use tenantsync_feed::{CursorError, CursorKey, FeedCursor, Hub};
use tenantsync_store::{
    FeedPosition, MasterStore, PushKind, PushProgress, StoreError, TenantSelection,
};

use super::definition::Definition;

/// Records read per page while looking for where a replay starts.
const SCAN_PAGE: usize = 1_000;

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Every covered tenant, from its first record written at or after the time (deletes
    /// included).
    Since(DateTime<Utc>),
    /// One tenant, from a feed cursor (as a message's `cursor` or the feed API gave it).
    Cursor(String),
}

/// Why a replay was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Not a cursor this store's key signed (400, naming `cursor`).
    #[error("cursor: {0}")]
    Cursor(#[from] CursorError),
    /// The cursor's dataset or tenant is not one the endpoint covers (422, naming `cursor`).
    #[error("cursor: the cursor is of a {0} the endpoint does not cover")]
    NotCovered(&'static str),
    /// The endpoint does not exist (any more).
    #[error("no such webhook endpoint")]
    NotFound,
    #[error("the master store: {0}")]
    Store(#[from] StoreError),
}

/// Moves the positions of the endpoint `name` (whose stored definition is `definition`) back to
/// `from`, fencing its holder. Returns how many tenants moved (a tenant with nothing written
/// since the time, or not yet delivered that far, is left alone).
pub async fn replay(
    store: &dyn MasterStore,
    hub: &Hub,
    key: &CursorKey,
    name: &str,
    definition: &Definition,
    from: ReplayFrom,
) -> Result<usize, ReplayError> {
    let scope = definition.scope();
    let entries = match from {
        ReplayFrom::Cursor(text) => {
            let cursor = FeedCursor::decode(&text, key)?;
            if !scope.datasets.contains(&cursor.dataset) {
                return Err(ReplayError::NotCovered("dataset"));
            }
            if let TenantSelection::Only(tenants) = &scope.tenants
                && !tenants.contains(&cursor.tenant)
            {
                return Err(ReplayError::NotCovered("tenant"));
            }
            vec![entry(cursor.dataset, cursor.tenant, cursor.position)]
        }
        ReplayFrom::Since(since) => {
            let mut entries = Vec::new();
            for dataset in &scope.datasets {
                for tenant in tenants(store, hub, dataset, &scope.tenants).await? {
                    if let Some(seq) = first_since(store, dataset, &tenant, since).await? {
                        // Tombstones from there on are sent too: deletes since then included.
                        let position = FeedPosition {
                            next_seq: seq,
                            live_from: seq,
                        };
                        entries.push(entry(dataset.clone(), tenant, position));
                    }
                }
            }
            entries
        }
    };
    // Only backwards: a tenant whose position is already at or before the replay's start (or
    // that was never delivered, and gets a snapshot) is left alone, so that a replay never
    // skips anything not yet sent.
    let current = store.push_progress(PushKind::Webhook, name).await?;
    let entries: Vec<PushProgress> = entries
        .into_iter()
        .filter(|e| {
            current
                .iter()
                .find(|c| c.dataset == e.dataset && c.tenant == e.tenant)
                .is_some_and(|c| c.position.next_seq > e.position.next_seq)
        })
        .collect();
    if entries.is_empty() {
        return Ok(0);
    }
    if !store
        .replace_push_progress(PushKind::Webhook, name, &entries)
        .await?
    {
        return Err(ReplayError::NotFound);
    }
    Ok(entries.len())
}

fn entry(dataset: DatasetName, tenant: TenantId, position: FeedPosition) -> PushProgress {
    PushProgress {
        dataset,
        tenant,
        position,
        state: None,
        updated_at: Utc::now(),
    }
}

/// The tenants a replay since a time looks at: the listed ones, or every tenant with records
/// (those the store knows, and any the hub saw published since).
async fn tenants(
    store: &dyn MasterStore,
    hub: &Hub,
    dataset: &DatasetName,
    selection: &TenantSelection,
) -> Result<Vec<TenantId>, StoreError> {
    Ok(match selection {
        TenantSelection::Only(tenants) => tenants.clone(),
        TenantSelection::All => {
            let mut all: Vec<TenantId> = store
                .tenant_ends(dataset)
                .await?
                .into_iter()
                .map(|(tenant, _)| tenant)
                .chain(hub.tenants(dataset))
                .collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    })
}

/// The lowest seq of the tenant's records (tombstones included) written at or after `since`.
/// Reads the feed in seq order up to the first such record.
async fn first_since(
    store: &dyn MasterStore,
    dataset: &DatasetName,
    tenant: &TenantId,
    since: DateTime<Utc>,
) -> Result<Option<u64>, StoreError> {
    let mut from = 0;
    loop {
        let page = store
            .tenant_feed(dataset, tenant, from, Some(0), SCAN_PAGE)
            .await?;
        if let Some(r) = page.records.iter().find(|r| r.record.updated_at >= since) {
            return Ok(Some(r.seq));
        }
        match page.records.last() {
            Some(last) if page.records.len() >= SCAN_PAGE => from = last.seq + 1,
            _ => return Ok(None),
        }
    }
}
