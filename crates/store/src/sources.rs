//! The sources concern: what the sources component keeps in the master store, shared by every
//! instance on it. Each source's definition (JSON text this crate never parses), the claims on
//! its shards with the status their holders report, and the rows or events it could not turn
//! into changes.
//!
//! Names are plain strings that the sources crate has validated; this module never checks
//! them or interprets a definition, a status or a position.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::StoreError;

/// A source's definition as stored: JSON text the sources crate parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSource {
    pub name: String,
    pub definition: String,
    /// 1 when created, one more every time [`SourceStore::put_source`] changed the definition.
    pub revision: u64,
    /// When the definition was last created or changed. Stored to the microsecond.
    pub updated_at: DateTime<Utc>,
}

/// Whether [`SourceStore::put_source`] created the source, changed it, or found the same
/// definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePut {
    Created,
    Updated,
    Unchanged,
}

/// One shard's claim as every instance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceShard {
    pub shard: u32,
    /// Who took the claim last (it may have released it or let it expire since).
    pub owner: String,
    /// Rises by one every time the claim is taken (the first claim of a shard is epoch 1).
    pub epoch: u64,
    /// Milliseconds since the Unix epoch; from then on anyone may take the claim. `i64::MIN`
    /// after a release.
    pub lease_until_ms: i64,
    /// JSON text the holder stored with its last renewal (its figures: position, lag, counts,
    /// last error), kept across claims; `None` before the first.
    pub status: Option<String>,
}

/// A row or event a source could not turn into a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRejection {
    /// Where it sits in the source (an LSN, a topic, partition and offset), as the source
    /// writes it; the key that makes recording idempotent.
    pub position: String,
    /// Why it could not become a change.
    pub reason: String,
    /// When it was rejected. Stored to the microsecond.
    pub at: DateTime<Utc>,
}

/// A page of a source's rejections, from [`SourceStore::source_rejected`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRejectedPage {
    /// `(id, rejection)` in recording order; pass the last id as `after` for the next page.
    pub entries: Vec<(u64, SourceRejection)>,
    /// How many rejections of the source were dropped to keep within `keep`, since the source
    /// was created.
    pub dropped: u64,
}

/// Source definitions, shard claims and rejections, shared by every instance on one store.
///
/// # Contract
///
/// - **Definitions** are opaque text, compared byte for byte:
///   [`put_source`](Self::put_source) raises the revision only when the text changes, so an
///   instance that sees a new revision knows to restart the source with it.
/// - **One holder per shard.** [`claim_source`](Self::claim_source) gives a (source, shard)
///   claim to one owner at a time and raises its epoch every time it is taken;
///   [`renew_source`](Self::renew_source) and [`release_source`](Self::release_source) succeed
///   only with the current epoch, so a holder whose claim was taken over learns it at its next
///   renewal and must stop. Of several owners racing for a free claim, exactly one gets it.
/// - **A source is its definition.** Only a defined source can be claimed or have rejections
///   recorded; [`delete_source`](Self::delete_source) removes the definition and everything kept
///   for it in one transaction, and a claim or recording racing it either commits before it (and
///   is removed with the rest) or finds no source and changes nothing. A source created again
///   under the same name starts afresh: revision 1, no claims, no rejections.
/// - **Rejections** are idempotent per (source, position) while kept, bounded per source with
///   the drops counted, and get ids increasing in commit order within a source (see
///   [`record_source_rejected`](Self::record_source_rejected)), so a reader paging with `after`
///   never misses one that is still kept.
/// - **Times are the caller's** (`now`, `now_ms` in milliseconds since the Unix epoch); the
///   store reads no clock for them. Instances comparing each other's leases need clocks in step
///   (NTP).
#[async_trait]
pub trait SourceStore: Send + Sync + 'static {
    /// Creates the source or replaces its definition, and returns what it did with the revision
    /// now stored. A new source gets revision 1; a definition whose text differs from the stored
    /// one raises the revision by one and sets `updated_at` to `now`. The same text again is
    /// [`SourcePut::Unchanged`] and changes nothing (neither revision nor `updated_at`). Claims
    /// and rejections are kept across updates.
    async fn put_source(
        &self,
        name: &str,
        definition: &str,
        now: DateTime<Utc>,
    ) -> Result<(SourcePut, u64), StoreError>;

    /// The source's definition; `None` when there is none.
    async fn source(&self, name: &str) -> Result<Option<StoredSource>, StoreError>;

    /// Every source, by name (byte order).
    async fn sources(&self) -> Result<Vec<StoredSource>, StoreError>;

    /// Deletes the definition and everything kept for it (its claims and their status, its
    /// rejections and their dropped count), in one transaction. Returns whether it existed.
    /// Holders of its claims learn it at their next renewal, which returns false.
    async fn delete_source(&self, name: &str) -> Result<bool, StoreError>;

    /// Takes the source's `shard` for `owner` when nobody holds it: when there is no claim yet,
    /// when the current one's lease has expired (`lease_until_ms <= now_ms`) or when it is
    /// `owner`'s own (the same instance restarted). Taking sets the owner, sets the lease to
    /// `now_ms + lease_ms`, raises the epoch by one (the first claim of a shard gets epoch 1)
    /// and keeps the stored status; it returns the new epoch.
    ///
    /// Returns `None`, changing nothing, while another owner's lease is live, and when the
    /// source has no definition. Atomic: of several owners racing for a free claim, exactly one
    /// gets it.
    async fn claim_source(
        &self,
        name: &str,
        shard: u32,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<u64>, StoreError>;

    /// Renews the claim on the source's `shard` if its epoch is still `epoch`: sets the lease to
    /// `now_ms + lease_ms` and, when `status` is `Some`, replaces the stored status. Returns
    /// true. A lease that expired can still be renewed as long as nobody took the claim over.
    ///
    /// When the claim was taken since (another epoch), or it or the source no longer exists,
    /// changes nothing and returns false: the caller lost the shard and must stop.
    async fn renew_source(
        &self,
        name: &str,
        shard: u32,
        epoch: u64,
        now_ms: i64,
        lease_ms: i64,
        status: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Gives the claim up at once (a clean stop, or handing the shard to another instance): if
    /// its epoch is still `epoch`, sets `lease_until_ms` to `i64::MIN`, so that anyone's next
    /// claim takes it, keeping owner, epoch and status, and returns true; otherwise changes
    /// nothing and returns false. Releasing does not fence the caller (the epoch is unchanged
    /// until someone claims): it must stop renewing.
    async fn release_source(&self, name: &str, shard: u32, epoch: u64) -> Result<bool, StoreError>;

    /// Every claimed shard of the source, by shard; shards never claimed are absent.
    async fn source_shards(&self, name: &str) -> Result<Vec<SourceShard>, StoreError>;

    /// Records rows or events of the source that could not become changes, in their order, then
    /// drops the source's oldest rejections beyond the newest `keep` (the `keep` of the latest
    /// call), counting them, in the same transaction. Ids increase in commit order within a
    /// source (rejections of one call in their order there) and are never reused.
    ///
    /// Idempotent per (source, position) while the position is kept: recording it again, in
    /// this call or a later one, changes nothing (neither its reason, time nor id). Once
    /// dropped, a position is forgotten: recording it again records it anew, as the newest,
    /// and dropping it again counts it again. (A source records a position again only when it
    /// re-reads it after a restart, well before it is dropped.)
    ///
    /// For a source with no definition (deleted meanwhile), records nothing.
    async fn record_source_rejected(
        &self,
        name: &str,
        entries: &[SourceRejection],
        keep: usize,
    ) -> Result<(), StoreError>;

    /// Up to `limit` of the source's kept rejections with ids above `after` (all when `None`),
    /// in recording order, with the count of dropped ones.
    async fn source_rejected(
        &self,
        name: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<SourceRejectedPage, StoreError>;
}
