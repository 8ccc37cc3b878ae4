//! The master store: the authoritative current state of every record, and the outcome of every
//! change ever applied.
//!
//! The store is split by concern, one trait each with its own contract: [`RecordStore`]
//! (datasets, applying changes, reading records and outcomes), [`RejectedStore`] (changes-log
//! entries that could not be decoded), [`FeedStore`] (a tenant's records by seq, tombstone
//! purges), [`SubscriptionStore`], [`AccessStore`] (tokens, the audit log, shared secrets),
//! [`ErasureStore`], [`CoordinationStore`] (the batcher's claim, the HTTP batch queue) and
//! [`SourceStore`] (source definitions, their shards' claims and status, their rejections),
//! [`PushStore`] (webhook and sink definitions, their claims, progress and attempts) and
//! [`SchemaStore`] (datasets' schema versions and contract settings).
//! [`MasterStore`] is all of them at once; a component that needs one concern takes that trait
//! (an `Arc<dyn MasterStore>` converts to an `Arc<dyn FeedStore>` and the like).
//!
//! Two backends, chosen by [`StoreUrl`] in [`open`]: `sqlite://FILE` (the default, embedded) and
//! `postgres://...`, each a folder with one module per concern. Both pass the same conformance
//! suite (`tests/conformance/`). Schemas live in `migrations/` as `.sql` files. Whether an
//! error is worth retrying is decided in one place, [`StoreError::class`].

mod access;
mod apply;
mod coordination;
mod erasure;
mod error;
mod feed;
mod migrations;
pub mod postgres;
mod push;
mod records;
mod rejected;
mod rows;
mod schemas;
mod sources;
pub mod sqlite;
mod subscriptions;

use std::sync::Arc;

use tenantsync_core::url::StoreUrl;

pub use access::{AccessStore, AuditEntry, StoredToken};
pub use coordination::{BatchLease, BatcherClaim, CoordinationStore};
pub use erasure::{Erasure, ErasureStore};
pub use error::{ErrorClass, StoreError};
pub use feed::{FeedPosition, FeedRecord, FeedStore, TenantFeed};
pub use push::{PushAttempt, PushClaim, PushKind, PushProgress, PushPut, PushStore, StoredPush};
pub use records::{Applied, DataCheck, Dataset, LoggedChange, RecordStore, StoredOutcome};
pub use rejected::{RejectedEntry, RejectedPage, RejectedStore};
pub use schemas::{ContractSettings, SchemaFormat, SchemaPut, SchemaStore, StoredSchema};
pub use sources::{
    SourcePut, SourceRejectedPage, SourceRejection, SourceShard, SourceStore, StoredSource,
};
pub use subscriptions::{Progress, Subscription, SubscriptionStore, TenantSelection};

/// A log offset, as in `tenantsync-log` (this crate does not depend on the log).
pub type Offset = u64;

/// The whole master store: every concern, from one database. Implemented for every type that
/// implements all the concern traits; a backend implements those.
///
/// Many readers and writers may call any method concurrently, also from several processes
/// sharing one database: each concern's contract says what it guarantees then. A component
/// holding an `Arc<dyn MasterStore>` hands each part of itself only the concern it uses
/// (`let feed: Arc<dyn FeedStore> = store;`).
pub trait MasterStore:
    RecordStore
    + RejectedStore
    + FeedStore
    + SubscriptionStore
    + AccessStore
    + ErasureStore
    + CoordinationStore
    + SourceStore
    + PushStore
    + SchemaStore
{
}

impl<T> MasterStore for T where
    T: ?Sized
        + RecordStore
        + RejectedStore
        + FeedStore
        + SubscriptionStore
        + AccessStore
        + ErasureStore
        + CoordinationStore
        + SourceStore
        + PushStore
        + SchemaStore
{
}

/// Opens the store at `url`, creating or migrating its schema.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn MasterStore>, StoreError> {
    Ok(match url {
        StoreUrl::Sqlite(file) => Arc::new(sqlite::SqliteStore::open(file).await?),
        StoreUrl::Postgres(url) => Arc::new(postgres::PostgresStore::connect_url(url).await?),
    })
}
