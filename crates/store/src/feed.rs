//! The feed concern: a tenant's records read in the order they were written (by seq), and the
//! retention that purges old tombstones from under that order.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::{DatasetName, Record, TenantId};

use crate::{Offset, StoreError};

/// A record as the change feed serves it: its current state and its `seq`, the changes-log
/// offset of the change that last wrote it. Within a tenant (one partition) a later write always
/// has a higher seq.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRecord {
    pub seq: Offset,
    pub record: Record,
}

/// A page of a tenant's change feed, from [`FeedStore::tenant_feed`].
#[derive(Debug, Clone, PartialEq)]
pub struct TenantFeed {
    /// Ordered by seq.
    pub records: Vec<FeedRecord>,
    /// The tenant's end when the page was read (before its records, in the same snapshot or
    /// an earlier one): one past its highest seq, and never below `horizon`. Every later write
    /// of the tenant gets a seq at or above it.
    pub end: Offset,
    /// The tenant's horizon when the page was read (after its records): tombstones with seqs
    /// below it may have been purged, so a reader that had not yet read past it may have
    /// missed a delete.
    pub horizon: Offset,
}

/// Where a reader of a tenant's feed is: the next seq to read, and the seq from which
/// tombstones are delivered. Below `live_from` the reader is taking a snapshot and has never
/// held any record whose tombstone sits there, so those are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FeedPosition {
    pub next_seq: Offset,
    pub live_from: Offset,
}

impl FeedPosition {
    /// Whether a reader here may have missed a purged tombstone: it has not read past
    /// `horizon` yet, and tombstones it would still be shown sit below it.
    pub fn is_behind(&self, horizon: Offset) -> bool {
        horizon > self.next_seq.max(self.live_from)
    }
}

/// A tenant's change feed: the master store's records read by seq.
///
/// # Contract
///
/// - **Feed order.** A record's seq is the offset of the change that last wrote it, and writes
///   of a tenant commit in seq order (see [`RecordStore`](crate::RecordStore)), so a reader that
///   has seen a seq has seen every lower one of that tenant: reading
///   [`tenant_feed`](Self::tenant_feed) page after page, each from one past the last seq read,
///   misses no write, and shows each record once, at its latest state.
/// - **Horizons.** [`purge_tombstones`](Self::purge_tombstones) deletes tombstones and raises
///   their tenant's horizon (one past the highest seq purged) and version floor (the highest
///   version purged) in the same transaction, so a reader can tell from
///   [`TenantFeed::horizon`] that it may have missed a delete, and a key created again in the
///   tenant continues above the versions purged: versions never go down, also under
///   concurrent applies. A record written again after it became a tombstone is never purged.
/// - **Snapshots.** A page's `end` is read no later than its records and its `horizon` no
///   earlier, so `end` is never below a seq on the page and a purge that took a record away
///   from the page shows in `horizon`.
#[async_trait]
pub trait FeedStore: Send + Sync + 'static {
    /// Up to `limit` records of a tenant with seq `>= from`, ordered by seq. Tombstones with a
    /// seq below `live_from` are left out; `None` means below the tenant's end at this read,
    /// which is how the first page of a snapshot skips deletes its reader never needs.
    async fn tenant_feed(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        from: Offset,
        live_from: Option<Offset>,
        limit: usize,
    ) -> Result<TenantFeed, StoreError>;

    /// Every tenant with records in the dataset, or whose records were all purged, with its end
    /// as [`TenantFeed::end`] defines it, ordered by tenant.
    async fn tenant_ends(
        &self,
        dataset: &DatasetName,
    ) -> Result<Vec<(TenantId, Offset)>, StoreError>;

    /// Deletes up to `limit` tombstones of the dataset last written before `before`, and raises
    /// their tenants' horizons and version floors to match, in one transaction. Returns how
    /// many were deleted.
    async fn purge_tombstones(
        &self,
        dataset: &DatasetName,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError>;
}
