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
use tenantsync_core::{Change, ChangeId, DatasetName, EntityId, Outcome, Record, TenantId};

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

/// The result of [`MasterStore::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// One outcome per input change, in input order. For a change that had been applied before
    /// (same dataset, tenant and change id, or an offset below the stored position) this is the
    /// stored outcome of the first application.
    pub outcomes: Vec<Outcome>,
    /// The current state, after the batch, of every key the batch addressed (whether or not it
    /// changed), each key once, ordered by the key's last appearance in the batch. Deleted
    /// records appear as tombstones (`data == None`). Keys that never existed do not appear.
    /// The processor republishes exactly these.
    pub states: Vec<Record>,
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
/// - **Versions.** A record's version starts at 1 and grows by exactly one per change that
///   alters its data or deletes it; a change that leaves the data exactly as it was creates no
///   new version. A delete keeps a tombstone row with its version, so a key written again
///   continues above it. Versions never go down.
/// - **Operations.** Upsert replaces data; patch is a JSON Merge Patch (RFC 7396) of the live
///   record (rejected `not_found` when there is none); delete tombstones a live record (a delete
///   of an absent or deleted record is `unchanged`). `expected_version` `Some(0)` requires the
///   record to be absent or deleted, `Some(v)` requires it live at version `v`; otherwise the
///   change is rejected `version_conflict`. Rejections are outcomes, stored like any other.
/// - **Concurrency.** Many readers and writers may call concurrently. Two `apply` calls for the
///   same dataset partition are serialised by the position check: whichever commits second
///   skips what the first applied. This makes a stale processor (one whose partition moved to
///   another process) harmless to the store.
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

    /// The stored outcome of a change, or `None` if it has not been applied (yet).
    async fn outcome(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        change_id: &ChangeId,
    ) -> Result<Option<Outcome>, StoreError>;

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
