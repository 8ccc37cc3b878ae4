//! The master store: the authoritative current state of every record, and the outcome of every
//! change ever applied.
//!
//! One trait, [`MasterStore`], and two backends chosen by URL scheme in [`open`]:
//! `sqlite://FILE` (the default, embedded) and `postgres://...`. Both pass the same conformance
//! suite (`tests/conformance.rs`). Schemas live in `migrations/` as `.sql` files.

mod apply;
mod error;
mod migrations;
pub mod postgres;
mod rows;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::{
    Change, ChangeId, DatasetName, EntityId, Outcome, Record, SubscriptionName, TenantId, TokenName,
};

pub use error::StoreError;

/// A log offset, as in `tenantsync-log` (this crate does not depend on the log).
pub type Offset = u64;

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

/// The result of [`MasterStore::apply`].
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

/// A record as the change feed serves it: its current state and its `seq`, the changes-log
/// offset of the change that last wrote it. Within a tenant (one partition) a later write always
/// has a higher seq.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRecord {
    pub seq: Offset,
    pub record: Record,
}

/// A page of a tenant's change feed, from [`MasterStore::tenant_feed`].
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

/// An API token as stored: its hash, never its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub name: TokenName,
    /// The hex SHA-256 of the token's text.
    pub hash: String,
    /// Scope strings, as given when the token was created (the store does not interpret them).
    pub scopes: Vec<String>,
    /// Stored to the microsecond.
    pub created_at: DateTime<Utc>,
}

/// One admin action in the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Assigned by the store: increasing in append order, starting at 1.
    pub seq: u64,
    /// Stored to the microsecond.
    pub at: DateTime<Utc>,
    /// Who did it: a token name, `jwt:<subject>`, `cli`, or `tenantsync` (the server itself).
    pub actor: String,
    /// What was done, like `token.created`, `erasure.finished`.
    pub action: String,
    /// What it was done to: a token name, subscription name or tenant id.
    pub target: String,
    /// More about it (a JSON object); never a token's secret.
    pub detail: serde_json::Value,
}

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

/// A batcher's hold on a dataset, from [`MasterStore::claim_batcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatcherClaim {
    /// Rises by one every time the claim is taken (the first claim of a dataset is epoch 1).
    /// [`renew_batcher`](MasterStore::renew_batcher) succeeds only with the current one.
    pub epoch: u64,
    /// What the batcher last stored with [`renew_batcher`](MasterStore::renew_batcher), kept
    /// across claims; `None` if no batcher of the dataset ever stored one.
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

/// The authoritative store of records.
///
/// # Contract
///
/// - **Atomic batches.** [`apply`](MasterStore::apply) commits all of a batch's effects and the
///   new partition position in one transaction, or nothing. A crash leaves either the state
///   before the batch or the state after it.
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
///   continues above it; once tombstones are purged, a key created in their tenant starts above
///   the highest version purged there. Versions never go down.
/// - **Feed order.** Every write of a record stores its seq (the offset of the change). Writes of
///   a tenant's records commit in seq order, so a reader that has seen a seq has seen every
///   lower one of that tenant: reading [`tenant_feed`](MasterStore::tenant_feed) page after
///   page misses no write.
/// - **Operations.** Upsert replaces data; patch is a JSON Merge Patch (RFC 7396) of the live
///   record (rejected `not_found` when there is none); delete tombstones a live record (a delete
///   of an absent or deleted record is `unchanged`). `expected_version` `Some(0)` requires the
///   record to be absent or deleted, `Some(v)` requires it live at version `v`; otherwise the
///   change is rejected `version_conflict`. Rejections are outcomes, stored like any other
///   (except `key_reused`, see above).
/// - **Concurrency.** Many readers and writers may call concurrently. Two `apply` calls for the
///   same dataset partition are serialised by the position check: whichever commits second
///   skips what the first applied. This makes a stale processor (one whose partition moved to
///   another process) harmless to the store.
/// - **Erasure.** While an erasure of a tenant runs ([`start_erasure`](MasterStore::start_erasure)
///   until [`finish_erasure`](MasterStore::finish_erasure) succeeds), `apply` rejects every change
///   of that tenant whose change id is not an erasure id
///   ([`ChangeId::is_erasure`](tenantsync_core::ChangeId::is_erasure)) with
///   [`TenantErasing`](tenantsync_core::RejectReason::TenantErasing) (current version = the
///   record's live version, 0 if absent or deleted), stored as its outcome like other
///   rejections; erasure changes apply normally. A change whose id already has an outcome still
///   reports that outcome. `apply` reads the running erasures in its own transaction, and
///   `finish_erasure` never commits while an `apply` that saw the erasure running is still
///   writing, so nothing that batch stores survives the erasure.
/// - **Batches.** One batcher per dataset: [`claim_batcher`](MasterStore::claim_batcher) gives
///   the dataset's claim to one owner at a time and raises its epoch every time it is taken;
///   [`renew_batcher`](MasterStore::renew_batcher) succeeds only with the current epoch, so a
///   batcher whose claim was taken over learns it at its next renewal and must stop. The HTTP
///   queue hands out each batch of the batches log once
///   ([`claim_batch`](MasterStore::claim_batch) moves a partition's position by compare-and-set
///   and records the lease in the same transaction) and each expired lease to exactly one
///   retaker ([`retake_expired_batch`](MasterStore::retake_expired_batch)); an acknowledged
///   batch is never handed out again. Delivery to workers is at least once: a worker whose
///   lease expired may still be working when another retakes the batch. Times are the
///   caller's (`now_ms`, milliseconds since the Unix epoch); the store reads no clock for them.
#[async_trait]
pub trait MasterStore: Send + Sync + 'static {
    /// Declares a dataset. Declaring an existing dataset with the same partition count is a
    /// no-op; a different count is [`StoreError::DatasetMismatch`].
    async fn declare_dataset(&self, dataset: &Dataset) -> Result<(), StoreError>;

    /// Every declared dataset, ordered by name.
    async fn datasets(&self) -> Result<Vec<Dataset>, StoreError>;

    /// Applies, in order, changes consumed from `partition` of the dataset's changes log, and
    /// records `next_offset` (one past the last consumed offset, which may be beyond the last
    /// change when undecodable entries were skipped) as the partition's position, in the same
    /// transaction. The position never moves backwards.
    async fn apply(
        &self,
        dataset: &DatasetName,
        partition: u32,
        changes: &[LoggedChange],
        next_offset: Offset,
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

    /// What [`outcome`](MasterStore::outcome) answers for each of several change ids of a
    /// dataset, answer for answer in order, in fewer round trips (the API checks a bulk
    /// request's idempotency keys with it). Implementations that cannot do better may keep
    /// this default, one `outcome` call per id.
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

    /// Up to `limit` records of a tenant (tombstones included) with ids greater than `after`,
    /// ordered by id (byte order).
    async fn scan(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        after: Option<&EntityId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

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

    /// Stores a new token. Returns false, storing nothing, when a token of that name exists.
    async fn create_token(&self, token: &StoredToken) -> Result<bool, StoreError>;

    /// Every token, ordered by name.
    async fn tokens(&self) -> Result<Vec<StoredToken>, StoreError>;

    /// The token with this hash, if any.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, StoreError>;

    /// Deletes a token. Returns whether it existed.
    async fn revoke_token(&self, name: &TokenName) -> Result<bool, StoreError>;

    /// Appends to the audit log; `entry.seq` is ignored and the assigned seq returned. Seqs
    /// are assigned in commit order (appends are serialised), so a reader paging with
    /// [`audit_log`](MasterStore::audit_log) never misses an entry; they may have gaps.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError>;

    /// Up to `limit` audit entries with seq > `after`, ascending.
    async fn audit_log(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// The secret stored under `name`; when there is none yet, stores `candidate` and returns
    /// it. Every caller on one store gets the same bytes, also when several race to create it.
    /// A stored secret is never replaced.
    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Starts erasing a tenant: returns the erasure and `true`, or, when one is already running
    /// for the tenant, that one and `false`. A finished erasure of the tenant is replaced by
    /// the new one (started at `at`, not finished, erased 0). From its commit on, `apply`
    /// refuses the tenant's ordinary changes (see the contract's **Erasure**).
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
    /// [`purge_tombstones`](MasterStore::purge_tombstones) does, so feeds answer Gone to old
    /// cursors and versions never go down), deletes the tenant's stored change outcomes (they
    /// name record ids; [`outcome`](MasterStore::outcome) answers `None` for them afterwards),
    /// and sets `finished_at = at`. Horizons, subscription progress and the erasure row stay.
    ///
    /// Returns the number of live records left: when it is not 0, nothing was changed. When no
    /// erasure runs for the tenant (never started, or already finished) it does nothing and
    /// returns 0, so a repeated call is harmless; check [`erasure`](MasterStore::erasure) to
    /// tell the two apart.
    async fn finish_erasure(&self, tenant: &TenantId, at: DateTime<Utc>)
    -> Result<u64, StoreError>;

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
    /// `offset < expected` is a caller bug: [`StoreError::InvalidArgument`] (not transient), and
    /// nothing changes. Batch ids are unique within a dataset: handing out
    /// an id that is still outstanding fails with the database's unique-key error and changes
    /// nothing.
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

    /// Succeeds when the store is reachable (for readiness checks).
    async fn check(&self) -> Result<(), StoreError>;
}

/// Opens a store from its URL: `sqlite://FILE` or `postgres://...` (any libpq-style URL),
/// creating or migrating its schema.
pub async fn open(url: &str) -> Result<Arc<dyn MasterStore>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(sqlite::SqliteStore::open(path.as_ref()).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::connect(url).await?))
    } else {
        Err(StoreError::InvalidUrl(url.to_owned()))
    }
}
