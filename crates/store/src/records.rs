//! The records concern: declared datasets, applying changes consumed from a changes log, and
//! reading records and stored outcomes back.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::{Change, ChangeId, DatasetName, EntityId, Object, Outcome, Record, TenantId};

use crate::{Offset, StoreError};

/// A declared dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub name: DatasetName,
    pub partitions: u32,
}

/// One change read from a partition of a dataset's changes log, with its offset.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedChange {
    pub offset: Offset,
    pub change: Change,
}

/// The stored outcome of a change id, with the record it belongs to. A change id is unique per
/// (dataset, tenant) and names one change of one record: `id` is the record of the change that
/// first used it, so a caller holding a change with the same id can tell a true duplicate
/// (same `id`) from a reuse of the id for another record (rejected
/// [`RejectReason::KeyReused`](tenantsync_core::RejectReason::KeyReused) at apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutcome {
    /// The record (of the tenant) the change id belongs to.
    pub id: EntityId,
    pub outcome: Outcome,
}

/// The result of [`RecordStore::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// One outcome per input change, in input order. For a change that had been applied before
    /// (same dataset, tenant, change id and record id, or an offset below the stored position)
    /// this is the stored outcome of the first application. For a change whose id belongs to
    /// another record of the tenant it is `Rejected { reason: KeyReused, .. }`.
    pub outcomes: Vec<Outcome>,
    /// The current state, after the batch, of every key the batch addressed (whether or not it
    /// changed), each key once, ordered by the key's last appearance in the batch. Deleted
    /// records appear as tombstones (`data == None`). Keys that never existed do not appear.
    /// The processor republishes exactly these.
    pub states: Vec<Record>,
    /// One entry per input change, in input order: the key's record right after that change
    /// (for a change not applied now, the key's state at that point of the batch); `None` while
    /// the key does not exist. This is what a writer waiting for its change is shown.
    pub records: Vec<Option<Record>>,
    /// The partition's position before this batch. A batch whose first offset is above it means
    /// the log lost entries that were never applied (retention ran ahead of the processor).
    pub previous_position: Offset,
}

/// A check of the data a merge patch would leave in a record, handed to
/// [`RecordStore::apply_checked`]: the dataset's data contract, which the store knows nothing
/// of. A patch can only be judged against the record it merges into, so it is checked where the
/// store decides what the patch does; upserts carry their whole data and are checked by their
/// writers before they enter the changes log, deletes need no check.
///
/// # Contract
///
/// - **When.** Called only for a patch that would change a live record, with the merged result,
///   after the precondition held; never for upserts, deletes, duplicates, changes below the
///   position, or a patch that leaves the data as it was.
/// - **Where.** Inside the batch's transaction (on SQLite, on the one writer thread): it must be
///   quick, do no I/O, never block and never panic.
/// - **Pure.** The same data gets the same answer for the whole batch: the caller builds one
///   check per batch from the contract it holds then.
/// - **Refusal.** `Err(why)` rejects the patch: its outcome is `Rejected { reason:
///   SchemaViolation, current_version }` with the record's live version, stored like the other
///   rejections (so a redelivery reports it again), and the record is unchanged. `why` is logged
///   at debug level and not stored: a reader who wants the details checks the data again.
pub trait DataCheck: Send + Sync + 'static {
    fn check(&self, data: &Object) -> Result<(), String>;
}

/// The authoritative records of every dataset, and the outcome of every change applied.
///
/// # Contract
///
/// - **Atomic batches.** [`apply`](Self::apply) commits all of a batch's effects and the new
///   partition position in one transaction, or nothing. A crash leaves either the state before
///   the batch or the state after it.
/// - **Idempotent.** A change is identified by (dataset, tenant, change id). Applying a change
///   whose id was applied before changes nothing and reports the first outcome. Changes at
///   offsets below the partition's stored position are not applied again either, so a batch
///   re-read after a crash is harmless.
/// - **A change id belongs to one record.** The first change applied with an id owns it, with
///   its record id. A later change with the same id (in the store or earlier in the same batch)
///   but another record id is not a duplicate: it is rejected
///   [`KeyReused`](tenantsync_core::RejectReason::KeyReused) with its own record's live version
///   (0 if absent or deleted), changes nothing, and is not stored (the id stays the first
///   record's, so redelivering it is rejected again). Never silently dropped.
/// - **Versions.** A record's version starts at 1 and grows by exactly one per change that
///   alters its data or deletes it; a change that leaves the data exactly as it was creates no
///   new version. A delete keeps a tombstone row with its version, so a key written again
///   continues above it; once tombstones are purged
///   ([`FeedStore::purge_tombstones`](crate::FeedStore::purge_tombstones), or an erasure's
///   finish), a key created in their tenant starts above the highest version purged there.
///   Versions never go down.
/// - **Feed order.** Every write of a record stores its seq (the offset of the change). Writes of
///   a tenant's records commit in seq order, so a reader that has seen a seq has seen every
///   lower one of that tenant: reading
///   [`FeedStore::tenant_feed`](crate::FeedStore::tenant_feed) page after page misses no write.
/// - **Operations.** Upsert replaces data; patch is a JSON Merge Patch (RFC 7396) of the live
///   record (rejected `not_found` when there is none); delete tombstones a live record (a delete
///   of an absent or deleted record is `unchanged`). `expected_version` `Some(0)` requires the
///   record to be absent or deleted, `Some(v)` requires it live at version `v`; otherwise the
///   change is rejected `version_conflict`. Rejections are outcomes, stored like any other
///   (except `key_reused`, see above).
/// - **Data contracts.** [`apply_checked`](Self::apply_checked) runs its [`DataCheck`] on the
///   merged result of each patch that would change a record, and rejects the patch
///   [`SchemaViolation`](tenantsync_core::RejectReason::SchemaViolation) when the check refuses
///   it; [`apply`](Self::apply) checks nothing.
/// - **Concurrency.** Many readers and writers may call concurrently. Two `apply` calls for the
///   same dataset partition are serialised by the position check: whichever commits second
///   skips what the first applied. This makes a stale processor (one whose partition moved to
///   another process) harmless to the store.
/// - **Erasure.** While an erasure of a tenant runs (see [`ErasureStore`](crate::ErasureStore)),
///   `apply` rejects every change of that tenant whose change id is not an erasure id
///   ([`ChangeId::is_erasure`](tenantsync_core::ChangeId::is_erasure)) with
///   [`TenantErasing`](tenantsync_core::RejectReason::TenantErasing) (current version = the
///   record's live version, 0 if absent or deleted), stored as its outcome like other
///   rejections; erasure changes apply normally. A change whose id already has an outcome still
///   reports that outcome. `apply` reads the running erasures in its own transaction.
/// - **Idempotency keys expire only when pruned.** Every stored outcome keeps the time it was
///   stored (the applying process's clock). [`prune_outcomes`](Self::prune_outcomes) deletes
///   the oldest; a pruned change id is as if never applied: [`outcome`](Self::outcome) answers
///   `None`, and a change applied with it afterwards is decided like a new change (applied
///   again unless its precondition refuses it) and owns the id anew. Positions still keep a
///   re-read batch from applying twice, whatever was pruned.
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Declares a dataset. Declaring an existing dataset with the same partition count is a
    /// no-op; a different count is [`StoreError::DatasetMismatch`].
    async fn declare_dataset(&self, dataset: &Dataset) -> Result<(), StoreError>;

    /// Every declared dataset, ordered by name.
    async fn datasets(&self) -> Result<Vec<Dataset>, StoreError>;

    /// Applies, in order, changes consumed from `partition` of the dataset's changes log, and
    /// records `next_offset` (one past the last consumed offset, which may be beyond the last
    /// change when undecodable entries were skipped) as the partition's position, in the same
    /// transaction. The position never moves backwards. Checks no data: see
    /// [`apply_checked`](Self::apply_checked).
    async fn apply(
        &self,
        dataset: &DatasetName,
        partition: u32,
        changes: &[LoggedChange],
        next_offset: Offset,
    ) -> Result<Applied, StoreError> {
        self.apply_checked(dataset, partition, changes, next_offset, None)
            .await
    }

    /// [`apply`](Self::apply), with the merged result of every patch that would change a record
    /// held to `check` (`None`: no check), as [`DataCheck`] describes.
    async fn apply_checked(
        &self,
        dataset: &DatasetName,
        partition: u32,
        changes: &[LoggedChange],
        next_offset: Offset,
        check: Option<Arc<dyn DataCheck>>,
    ) -> Result<Applied, StoreError>;

    /// The partition's position: one past the last offset applied (0 if none).
    async fn position(&self, dataset: &DatasetName, partition: u32) -> Result<Offset, StoreError>;

    /// The record's current state: `Some` with `data == None` for a deleted record (tombstone),
    /// `None` if it never existed.
    async fn get(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        id: &EntityId,
    ) -> Result<Option<Record>, StoreError>;

    /// The stored outcome of a change id and the record it belongs to, or `None` if no change
    /// with this id has been applied (yet). A `key_reused` rejection is never stored, so the
    /// outcome returned is always the owning record's; compare [`StoredOutcome::id`] with a
    /// change's record id to tell whether this outcome is that change's.
    async fn outcome(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        change_id: &ChangeId,
    ) -> Result<Option<StoredOutcome>, StoreError>;

    /// What [`outcome`](Self::outcome) answers for each of several change ids of a dataset,
    /// answer for answer in order, in fewer round trips (the API checks a bulk request's
    /// idempotency keys with it). Implementations that cannot do better may keep this default,
    /// one `outcome` call per id.
    async fn outcomes(
        &self,
        dataset: &DatasetName,
        change_ids: &[(TenantId, ChangeId)],
    ) -> Result<Vec<Option<StoredOutcome>>, StoreError> {
        let mut out = Vec::with_capacity(change_ids.len());
        for (tenant, change_id) in change_ids {
            out.push(self.outcome(dataset, tenant, change_id).await?);
        }
        Ok(out)
    }

    /// Deletes up to `limit` stored outcomes, of every dataset, that were stored before
    /// `before`, oldest first, in one transaction (so keep `limit` small enough for a short
    /// one), and returns how many it deleted: fewer than `limit` means none older is left, as
    /// far as this call could see. Records, positions and younger outcomes are untouched. Safe
    /// to run concurrently with `apply` and with itself: each outcome is deleted at most once,
    /// and one that an `apply` read as a duplicate just before was that change's outcome.
    async fn prune_outcomes(&self, before: DateTime<Utc>, limit: usize) -> Result<u64, StoreError>;

    /// Up to `limit` records of a tenant (tombstones included) with ids greater than `after`,
    /// ordered by id (byte order).
    async fn scan(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        after: Option<&EntityId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// Succeeds when the store is reachable (for readiness checks).
    async fn check(&self) -> Result<(), StoreError>;
}
