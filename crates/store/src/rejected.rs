//! The rejected-entries concern: entries of a changes log that could not be decoded, kept so
//! that an admin can see what was skipped, and why.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::DatasetName;

use crate::{Offset, StoreError};

/// A changes-log entry that was skipped because it could not be read as a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedEntry {
    pub partition: u32,
    pub offset: Offset,
    /// Why it could not be decoded.
    pub reason: String,
    /// When it was rejected. Stored to the microsecond.
    pub at: DateTime<Utc>,
}

/// A page of a dataset's rejected entries, from [`RejectedStore::rejected`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedPage {
    /// `(id, entry)` in recording order; pass the last id as `after` for the next page.
    pub entries: Vec<(u64, RejectedEntry)>,
    /// How many entries of the dataset were dropped to keep within `keep`, ever.
    pub dropped: u64,
}

/// Changes-log entries that could not be decoded, per dataset.
///
/// # Contract
///
/// - **Idempotent** per (dataset, partition, offset): recording an entry again changes nothing,
///   neither its reason, time and id while it is kept, nor the count of dropped entries once it
///   was dropped. (An entry at or below the highest offset dropped in its partition counts as
///   recorded before.)
/// - **Bounded.** A dataset keeps at most `keep` entries (the `keep` of the latest
///   [`record_rejected`](Self::record_rejected)): the oldest go first, in the same transaction,
///   and are counted in [`RejectedPage::dropped`].
/// - **Ordered.** Each entry gets an id when recorded, increasing in commit order within a
///   dataset (entries of one call in their order there) and never reused, so a reader paging
///   with `after` never misses an entry that is still kept.
#[async_trait]
pub trait RejectedStore: Send + Sync + 'static {
    /// Records entries of the dataset's changes log that were skipped, then drops the dataset's
    /// oldest entries beyond the newest `keep`.
    async fn record_rejected(
        &self,
        dataset: &DatasetName,
        entries: &[RejectedEntry],
        keep: usize,
    ) -> Result<(), StoreError>;

    /// Up to `limit` of the dataset's kept entries with ids above `after` (all when `None`), in
    /// recording order, with the count of dropped entries.
    async fn rejected(
        &self,
        dataset: &DatasetName,
        after: Option<u64>,
        limit: usize,
    ) -> Result<RejectedPage, StoreError>;
}
