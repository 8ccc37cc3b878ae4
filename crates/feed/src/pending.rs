//! Which of the tenants a reader follows may have something for it: what subscriptions and push
//! targets share to pick their next tenant.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tenantsync_core::{DatasetName, TenantId};
use tenantsync_store::{FeedPosition, TenantSelection};

use crate::Hub;

/// A (dataset, tenant) pair.
pub type Key = (DatasetName, TenantId);

/// A reader's progress on one tenant, as the reader knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Known {
    /// `None`: nothing delivered yet (the first page is a snapshot).
    pub position: Option<FeedPosition>,
    /// When a batch of this tenant was last delivered or acknowledged (or its position last
    /// moved).
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The pairs of `datasets` and `tenants` that may have something to deliver, least recently
/// delivered first (never delivered first of all), so a tenant with a large backlog takes turns
/// with the others. A pair is left out when the hub knows the tenant's end and the position is
/// at it; a tenant whose end the hub does not know is included (reading it finds out).
pub fn pending(
    hub: &Hub,
    datasets: &[DatasetName],
    tenants: &TenantSelection,
    known: &HashMap<Key, Known>,
) -> Vec<Key> {
    let mut out: Vec<(Option<DateTime<Utc>>, Key)> = Vec::new();
    for dataset in datasets {
        let covered = match tenants {
            TenantSelection::All => hub.tenants(dataset),
            TenantSelection::Only(tenants) => tenants.clone(),
        };
        for tenant in covered {
            let key = (dataset.clone(), tenant);
            let k = known.get(&key).copied().unwrap_or_default();
            let caught_up = match (k.position, hub.known_end(dataset, &key.1)) {
                (Some(p), Some(end)) => p.next_seq >= end,
                // Never read: caught up only if the tenant has nothing at all.
                (None, Some(end)) => end == 0,
                (_, None) => false,
            };
            if !caught_up {
                out.push((k.delivered_at, key));
            }
        }
    }
    out.sort_by_key(|a| a.0);
    out.into_iter().map(|(_, key)| key).collect()
}
