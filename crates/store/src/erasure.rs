//! The erasure concern: the lifecycle of a tenant erasure, which fences the tenant's ordinary
//! changes out of [`RecordStore::apply`](crate::RecordStore::apply) while it runs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::TenantId;

use crate::StoreError;

/// A tenant erasure: started, and finished or not yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub tenant: TenantId,
    /// Stored to the microsecond.
    pub started_at: DateTime<Utc>,
    /// `None` while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    /// Records tombstoned by the erasure so far (progress; set by the caller).
    pub erased: u64,
}

/// Tenant erasures.
///
/// # Contract
///
/// - While an erasure of a tenant runs ([`start_erasure`](Self::start_erasure) until
///   [`finish_erasure`](Self::finish_erasure) succeeds),
///   [`RecordStore::apply`](crate::RecordStore::apply) rejects every change of that tenant
///   whose change id is not an erasure id
///   ([`ChangeId::is_erasure`](tenantsync_core::ChangeId::is_erasure)) with
///   [`TenantErasing`](tenantsync_core::RejectReason::TenantErasing), stored as its outcome;
///   erasure changes apply normally (see the records contract).
/// - `apply` reads the running erasures in its own transaction, and `finish_erasure` never
///   commits while an `apply` that saw the erasure running is still writing, so nothing that
///   batch stores survives the erasure.
/// - At most one erasure of a tenant runs at a time; starting one while another runs returns
///   the running one.
#[async_trait]
pub trait ErasureStore: Send + Sync + 'static {
    /// Starts erasing a tenant: returns the erasure and `true`, or, when one is already running
    /// for the tenant, that one and `false`. A finished erasure of the tenant is replaced by
    /// the new one (started at `at`, not finished, erased 0). From its commit on, `apply`
    /// refuses the tenant's ordinary changes (see the contract).
    async fn start_erasure(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<(Erasure, bool), StoreError>;

    /// The tenant's erasure, running or the last one finished; `None` if it was never erased.
    async fn erasure(&self, tenant: &TenantId) -> Result<Option<Erasure>, StoreError>;

    /// Every erasure not finished, ordered by tenant (byte order).
    async fn running_erasures(&self) -> Result<Vec<Erasure>, StoreError>;

    /// Records progress of a running erasure (no-op when none runs for the tenant).
    async fn erasure_progress(&self, tenant: &TenantId, erased: u64) -> Result<(), StoreError>;

    /// Finishes a running erasure, in one transaction, if the tenant has no live record left
    /// in any dataset: deletes every row of the tenant in `records` (all tombstones by then)
    /// in every dataset, raising the tenant's horizon to its end and its version floor to the
    /// highest version deleted (exactly as
    /// [`FeedStore::purge_tombstones`](crate::FeedStore::purge_tombstones) does, so feeds
    /// answer Gone to old cursors and versions never go down), deletes the tenant's stored
    /// change outcomes (they name record ids;
    /// [`RecordStore::outcome`](crate::RecordStore::outcome) answers `None` for them
    /// afterwards), and sets `finished_at = at`. Horizons, subscription progress and the
    /// erasure row stay.
    ///
    /// Returns the number of live records left: when it is not 0, nothing was changed. When no
    /// erasure runs for the tenant (never started, or already finished) it does nothing and
    /// returns 0, so a repeated call is harmless; check [`erasure`](Self::erasure) to tell the
    /// two apart.
    async fn finish_erasure(&self, tenant: &TenantId, at: DateTime<Utc>)
    -> Result<u64, StoreError>;
}
