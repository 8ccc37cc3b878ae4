//! The subscriptions concern: named subscriptions and the progress the server keeps for them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::{DatasetName, SubscriptionName, TenantId};

use crate::{FeedPosition, StoreError};

/// Which tenants a subscription covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSelection {
    All,
    /// The API stores them sorted, without duplicates.
    Only(Vec<TenantId>),
}

impl TenantSelection {
    pub fn covers(&self, tenant: &TenantId) -> bool {
        match self {
            TenantSelection::All => true,
            TenantSelection::Only(tenants) => tenants.contains(tenant),
        }
    }
}

/// A named subscription: a set of datasets and tenants whose changes one party follows, with
/// its progress kept by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub name: SubscriptionName,
    /// The API stores them sorted, without duplicates.
    pub datasets: Vec<DatasetName>,
    pub tenants: TenantSelection,
    /// Set when the subscription was first created and kept by updates: it tells this
    /// subscription's cursors from those of a deleted one of the same name. Stored to the
    /// microsecond.
    pub created_at: DateTime<Utc>,
}

/// What a subscription acknowledged for one tenant of one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub dataset: DatasetName,
    pub tenant: TenantId,
    pub position: FeedPosition,
    pub acked_at: DateTime<Utc>,
}

/// Subscriptions and their acknowledged progress.
///
/// # Contract
///
/// - A subscription is identified by its name and its `created_at`: an update keeps both (and
///   the progress), a delete followed by a create of the same name makes another subscription.
/// - Progress is written only for the subscription it names, as created at the `created_at`
///   the caller holds: an [`ack`](Self::ack) for a deleted or re-created subscription writes
///   nothing. Deleting a subscription deletes its progress, and an ack racing the delete never
///   leaves progress behind.
#[async_trait]
pub trait SubscriptionStore: Send + Sync + 'static {
    /// Creates a subscription (its `created_at` is taken from the argument) or updates the
    /// datasets and tenants of an existing one (keeping its `created_at` and progress). Returns
    /// the stored subscription and whether it was created.
    async fn put_subscription(
        &self,
        subscription: &Subscription,
    ) -> Result<(Subscription, bool), StoreError>;

    async fn subscription(
        &self,
        name: &SubscriptionName,
    ) -> Result<Option<Subscription>, StoreError>;

    /// Every subscription, ordered by name.
    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError>;

    /// Deletes a subscription and its progress. Returns whether it existed.
    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<bool, StoreError>;

    /// Everything the subscription acknowledged, ordered by dataset and tenant.
    async fn subscription_progress(
        &self,
        name: &SubscriptionName,
    ) -> Result<Vec<Progress>, StoreError>;

    /// Records a subscription's progress for one tenant of one dataset, replacing what was
    /// there, if the subscription named exists and was created at `created_at`. Returns
    /// whether it did.
    async fn ack(
        &self,
        name: &SubscriptionName,
        created_at: DateTime<Utc>,
        progress: &Progress,
    ) -> Result<bool, StoreError>;
}
