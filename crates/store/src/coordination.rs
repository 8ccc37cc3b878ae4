//! The coordination concern: the batcher's claim on a dataset, the HTTP batch queue's
//! positions and leases, and the registry of live instances, shared by every instance on one
//! store.

use async_trait::async_trait;
use tenantsync_core::DatasetName;

use crate::{Offset, StoreError};

/// A batcher's hold on a dataset, from [`CoordinationStore::claim_batcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatcherClaim {
    /// Rises by one every time the claim is taken (the first claim of a dataset is epoch 1).
    /// [`renew_batcher`](CoordinationStore::renew_batcher) succeeds only with the current one.
    pub epoch: u64,
    /// What the batcher last stored with
    /// [`renew_batcher`](CoordinationStore::renew_batcher), kept across claims; `None` if no
    /// batcher of the dataset ever stored one.
    pub checkpoint: Option<Vec<u8>>,
}

/// An outstanding lease of a batch handed to an HTTP worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLease {
    pub batch_id: String,
    /// Where the batch sits in the dataset's batches log.
    pub partition: u32,
    pub offset: Offset,
    /// Milliseconds since the Unix epoch; from then on another worker may retake the batch.
    pub expires_at_ms: i64,
}

/// Claims, leases and the instance registry that coordinate instances sharing one store.
///
/// # Contract
///
/// - **One batcher per dataset.** [`claim_batcher`](Self::claim_batcher) gives the dataset's
///   claim to one owner at a time and raises its epoch every time it is taken;
///   [`renew_batcher`](Self::renew_batcher) succeeds only with the current epoch, so a batcher
///   whose claim was taken over learns it at its next renewal and must stop.
/// - **The HTTP queue** hands out each batch of the batches log once
///   ([`claim_batch`](Self::claim_batch) moves a partition's position by compare-and-set and
///   records the lease in the same transaction) and each expired lease to exactly one retaker
///   ([`retake_expired_batch`](Self::retake_expired_batch)); an acknowledged batch is never
///   handed out again. Delivery to workers is at least once: a worker whose lease expired may
///   still be working when another retakes the batch.
/// - **The instance registry** holds one row per instance name with the time it was last seen.
///   [`heartbeat_instance`](Self::heartbeat_instance) registers or renews a name,
///   [`live_instances`](Self::live_instances) lists those seen since a time, and
///   [`deregister_instance`](Self::deregister_instance) and
///   [`forget_instances`](Self::forget_instances) remove rows. What counts as live (how recent
///   a heartbeat must be) is the caller's choice; the store only keeps the times.
/// - **Times are the caller's** (`now_ms`, milliseconds since the Unix epoch); the store reads
///   no clock for them. Instances comparing each other's times need clocks in step (NTP).
#[async_trait]
pub trait CoordinationStore: Send + Sync + 'static {
    /// Takes the dataset's batcher claim for `owner` when nobody holds it: when there is no
    /// claim yet, when the current one's lease has expired (`lease_until_ms <= now_ms`), or when
    /// it is `owner`'s own (the same instance restarted; its old process is gone). Taking sets
    /// the owner, sets the lease to `now_ms + lease_ms`, raises the epoch by one (the first
    /// claim of a dataset gets epoch 1) and keeps the stored checkpoint, which it returns.
    ///
    /// Returns `None`, changing nothing, while another owner's lease is live. Atomic: of
    /// several owners racing for a free claim, exactly one gets it.
    async fn claim_batcher(
        &self,
        dataset: &DatasetName,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<BatcherClaim>, StoreError>;

    /// Renews the dataset's batcher claim if its epoch is still `epoch`: sets the lease to
    /// `now_ms + lease_ms` and, when `checkpoint` is `Some`, replaces the stored checkpoint
    /// (`Some` of an empty slice stores an empty checkpoint). Returns true.
    ///
    /// When the claim was taken since (another epoch) or never existed, changes nothing and
    /// returns false: the caller lost the claim and must stop. A lease that expired can still
    /// be renewed as long as nobody took the claim over (the epoch is unchanged).
    async fn renew_batcher(
        &self,
        dataset: &DatasetName,
        epoch: u64,
        now_ms: i64,
        lease_ms: i64,
        checkpoint: Option<&[u8]>,
    ) -> Result<bool, StoreError>;

    /// The HTTP queue's position in each partition of the dataset's batches log, as
    /// `(partition, next offset not yet handed out)`, sorted by partition. Partitions never
    /// handed out from are absent: their position is 0.
    async fn batch_dispatch(&self, dataset: &DatasetName)
    -> Result<Vec<(u32, Offset)>, StoreError>;

    /// Hands out the batch at `offset` of `partition` (the log may have gaps, so `offset` may
    /// be above `expected`): in one transaction, if the partition's position is still
    /// `expected` (a partition without one counts as 0), sets it to `offset + 1` and records an
    /// outstanding lease of `batch_id` at (`partition`, `offset`) expiring at `expires_at_ms`,
    /// and returns true. When the position is not `expected` (another worker moved it first),
    /// changes nothing and returns false. Of several callers racing with the same `expected`,
    /// exactly one gets true.
    ///
    /// `offset < expected` is a caller bug: [`StoreError::InvalidArgument`] (permanent), and
    /// nothing changes. Batch ids are unique within a dataset: handing out an id that is still
    /// outstanding fails with the database's unique-key error (permanent) and changes nothing.
    async fn claim_batch(
        &self,
        dataset: &DatasetName,
        partition: u32,
        expected: Offset,
        offset: Offset,
        batch_id: &str,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Takes over the outstanding lease of the dataset that expired earliest among those with
    /// `expires_at_ms <= now_ms` (ties in batch id order), extends it to `expires_at_ms`, and
    /// returns it with the new expiry; `None` when no lease has expired. Atomic: of callers
    /// racing over the same expired leases, each lease goes to exactly one of them, and is not
    /// retaken again before its new expiry.
    async fn retake_expired_batch(
        &self,
        dataset: &DatasetName,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Option<BatchLease>, StoreError>;

    /// Completes an outstanding batch: deletes its lease, expired or not, and returns true.
    /// Returns false when the batch is not outstanding (already acknowledged, or never handed
    /// out). The queue's position has already passed a completed batch, so it is never handed
    /// out again.
    async fn ack_batch(&self, dataset: &DatasetName, batch_id: &str) -> Result<bool, StoreError>;

    /// The outstanding lease of a batch, expired or not; `None` when it is not outstanding.
    async fn batch_lease(
        &self,
        dataset: &DatasetName,
        batch_id: &str,
    ) -> Result<Option<BatchLease>, StoreError>;

    /// Registers `instance` as seen at `now_ms`, or renews its registration: afterwards its
    /// last-seen time is the later of the stored one and `now_ms` (a delayed heartbeat never
    /// moves it back). Idempotent; concurrent heartbeats of different names never lose one.
    async fn heartbeat_instance(&self, instance: &str, now_ms: i64) -> Result<(), StoreError>;

    /// The names of the instances last seen at or after `since_ms`, sorted (byte order).
    async fn live_instances(&self, since_ms: i64) -> Result<Vec<String>, StoreError>;

    /// Removes `instance` from the registry (on a clean shutdown): it is no longer listed as
    /// live until its next heartbeat. Returns whether it was registered.
    async fn deregister_instance(&self, instance: &str) -> Result<bool, StoreError>;

    /// Removes every instance last seen before `before_ms` (gone long ago: killed, or renamed),
    /// so that the registry does not grow with every name ever used. Returns how many.
    async fn forget_instances(&self, before_ms: i64) -> Result<u64, StoreError>;
}
