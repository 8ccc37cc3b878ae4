//! The push concern: what push delivery keeps in the master store, shared by every instance on
//! it. Each target's definition (a webhook endpoint or a database sink; JSON text this crate never
//! parses), the claim that makes one instance deliver it at a time with the status its holder
//! reports, the progress a target keeps here (webhooks: a position per dataset and tenant, with
//! the message being retried), and its recent delivery attempts.
//!
//! A database sink keeps its progress in its own database, in the transaction that writes its
//! rows; only its definition, claim and attempts are here.
//!
//! Names are plain strings that the push crate has validated; this module never checks them or
//! interprets a definition, a status or a progress entry's state.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::{DatasetName, TenantId};

use crate::{FeedPosition, StoreError};

/// What a push target delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PushKind {
    Webhook,
    Sink,
}

impl PushKind {
    /// `webhook` or `sink`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            PushKind::Webhook => "webhook",
            PushKind::Sink => "sink",
        }
    }
}

/// A push target's definition as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPush {
    pub kind: PushKind,
    pub name: String,
    /// JSON text the push crate parses.
    pub definition: String,
    /// 1 when created, one more every time [`PushStore::put_push`] changed the definition.
    pub revision: u64,
    /// When the target was created; kept by updates. A target deleted and created again under
    /// the same name has another. Stored to the microsecond.
    pub created_at: DateTime<Utc>,
    /// When the definition was last created or changed. Stored to the microsecond.
    pub updated_at: DateTime<Utc>,
}

/// What [`PushStore::put_push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushPut {
    Created,
    Updated,
    Unchanged,
    /// The stored revision was not the one expected; nothing changed.
    Conflict,
}

/// A target's claim as every instance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushClaim {
    pub name: String,
    /// Who took the claim last (it may have released it or let it expire since).
    pub owner: String,
    /// Rises every time the claim is taken or fenced (the first claim of a target is epoch 1).
    pub epoch: u64,
    /// Milliseconds since the Unix epoch; from then on anyone may take the claim. `i64::MIN`
    /// after a release or a fence.
    pub lease_until_ms: i64,
    /// JSON text the holder stored with its last renewal, kept across claims; `None` before
    /// the first.
    pub status: Option<String>,
}

/// A target's progress on one tenant of one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct PushProgress {
    pub dataset: DatasetName,
    pub tenant: TenantId,
    /// Everything before it was delivered.
    pub position: FeedPosition,
    /// JSON text the push crate keeps with the position (a webhook's message in flight: where
    /// it ends, its attempts, when to try next); `None` when there is none.
    pub state: Option<String>,
    /// When this entry was last written. Stored to the microsecond.
    pub updated_at: DateTime<Utc>,
}

/// One delivery attempt, as its target's attempts list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAttempt {
    /// When the attempt started. Stored to the microsecond.
    pub at: DateTime<Utc>,
    /// The message's id (a webhook's `webhook-id`), the same on every retry of it.
    pub message: String,
    pub dataset: DatasetName,
    pub tenant: TenantId,
    /// Records in the message.
    pub records: u32,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    pub latency_ms: u32,
    /// Why it failed; `None` for a success.
    pub error: Option<String>,
}

/// Push targets' definitions, claims, progress and attempts, shared by every instance on one
/// store.
///
/// # Contract
///
/// - **Targets** are identified by kind and name; the two kinds are separate namespaces.
///   Definitions are opaque text, compared byte for byte: [`put_push`](Self::put_push) raises
///   the revision only when the text changes, so an instance that sees a new revision knows to
///   restart the target with it. With `expected` it is a compare-and-set, so that two writers
///   editing one definition (an update and a secret rotation, an instance disabling a failing
///   endpoint) never lose each other's change.
/// - **One holder per target.** [`claim_push`](Self::claim_push) gives a target's claim to one
///   owner at a time and raises its epoch every time it is taken;
///   [`renew_push`](Self::renew_push), [`release_push`](Self::release_push) and
///   [`set_push_progress`](Self::set_push_progress) succeed only with the current epoch, so a
///   holder whose claim was taken over (or fenced by
///   [`replace_push_progress`](Self::replace_push_progress)) learns it at its next write and
///   must stop, and its progress writes never land. Of several owners racing for a free claim,
///   exactly one gets it.
/// - **A target is its definition.** Only a defined target can be claimed or have progress or
///   attempts recorded; [`delete_push`](Self::delete_push) removes the definition and everything
///   kept for it in one transaction, and a write racing it either commits before it (and is
///   removed with the rest) or finds no target and changes nothing. A target created again
///   under the same name starts afresh: revision 1, a new `created_at`, no progress, no
///   attempts, and epochs above any its previous incarnation used (a holder of the old one is
///   fenced from the new one).
/// - **Attempts** are bounded per target: recording keeps the newest `keep`.
/// - **Times are the caller's** (`now`, `now_ms` in milliseconds since the Unix epoch); the
///   store reads no clock for them. Instances comparing each other's leases need clocks in step
///   (NTP).
#[async_trait]
pub trait PushStore: Send + Sync + 'static {
    /// Creates the target or replaces its definition. With `expected: Some(r)` it changes
    /// anything only if the stored revision is `r` (`Some(0)`: only if the target does not
    /// exist), and returns [`PushPut::Conflict`] otherwise. A new target gets revision 1 and
    /// `created_at = updated_at = now`; a definition whose text differs from the stored one
    /// raises the revision by one and sets `updated_at` to `now`; the same text again is
    /// [`PushPut::Unchanged`] and changes nothing. Returns the target as stored afterwards
    /// (`None` only for a conflict on a target that does not exist). Claims, progress and
    /// attempts are kept across updates.
    async fn put_push(
        &self,
        kind: PushKind,
        name: &str,
        definition: &str,
        expected: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<(PushPut, Option<StoredPush>), StoreError>;

    /// The target; `None` when there is none.
    async fn push(&self, kind: PushKind, name: &str) -> Result<Option<StoredPush>, StoreError>;

    /// Every target of the kind, by name (byte order).
    async fn pushes(&self, kind: PushKind) -> Result<Vec<StoredPush>, StoreError>;

    /// Deletes the target and everything kept for it (claim and status, progress, attempts), in
    /// one transaction. Returns whether it existed.
    async fn delete_push(&self, kind: PushKind, name: &str) -> Result<bool, StoreError>;

    /// Takes the target's claim for `owner` when nobody holds it: when there is no claim yet,
    /// when the current one's lease has expired (`lease_until_ms <= now_ms`) or when it is
    /// `owner`'s own (the same instance restarted). Taking sets the owner, sets the lease to
    /// `now_ms + lease_ms`, raises the epoch and keeps the stored status; it returns the new
    /// epoch. Returns `None`, changing nothing, while another owner's lease is live, and when the
    /// target has no definition.
    async fn claim_push(
        &self,
        kind: PushKind,
        name: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<u64>, StoreError>;

    /// Renews the claim if its epoch is still `epoch`: sets the lease to `now_ms + lease_ms`
    /// and, when `status` is `Some`, replaces the stored status; returns true. Otherwise (taken
    /// over, fenced, deleted) changes nothing and returns false: the caller must stop.
    async fn renew_push(
        &self,
        kind: PushKind,
        name: &str,
        epoch: u64,
        now_ms: i64,
        lease_ms: i64,
        status: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Gives the claim up at once if its epoch is still `epoch` (sets `lease_until_ms` to
    /// `i64::MIN`, keeping owner, epoch and status) and returns true; otherwise changes nothing
    /// and returns false.
    async fn release_push(
        &self,
        kind: PushKind,
        name: &str,
        epoch: u64,
    ) -> Result<bool, StoreError>;

    /// Every claimed target of the kind, by name; targets never claimed are absent.
    async fn push_claims(&self, kind: PushKind) -> Result<Vec<PushClaim>, StoreError>;

    /// The target's progress entries, ordered by (dataset, tenant).
    async fn push_progress(
        &self,
        kind: PushKind,
        name: &str,
    ) -> Result<Vec<PushProgress>, StoreError>;

    /// Writes progress entries (each replaces the entry of its dataset and tenant), all or
    /// none, if the target's claim has epoch `epoch`; returns false, writing nothing, otherwise
    /// (the caller lost the claim and must stop).
    async fn set_push_progress(
        &self,
        kind: PushKind,
        name: &str,
        epoch: u64,
        entries: &[PushProgress],
    ) -> Result<bool, StoreError>;

    /// Writes progress entries (each replaces the entry of its dataset and tenant) whoever
    /// holds the claim, and fences the holder in the same transaction: the claim's epoch rises
    /// and its lease ends (`i64::MIN`), so the holder's next renewal or progress write fails and
    /// whoever claims next reads these entries. This is how an operator moves a target's
    /// position (a replay). Returns false, writing nothing, when the target does not exist.
    async fn replace_push_progress(
        &self,
        kind: PushKind,
        name: &str,
        entries: &[PushProgress],
    ) -> Result<bool, StoreError>;

    /// Records delivery attempts, then drops the target's oldest beyond the newest `keep`, in
    /// one transaction. For a target that does not exist, records nothing.
    async fn record_push_attempts(
        &self,
        kind: PushKind,
        name: &str,
        attempts: &[PushAttempt],
        keep: usize,
    ) -> Result<(), StoreError>;

    /// The target's newest attempts, at most `limit`, newest first.
    async fn push_attempts(
        &self,
        kind: PushKind,
        name: &str,
        limit: usize,
    ) -> Result<Vec<PushAttempt>, StoreError>;
}

/// What [`PushStore::put_push`] did, from the revision its upsert returned (`None`: it wrote
/// nothing) and the target read after it in the same transaction; both backends decide it here.
pub(crate) fn put_outcome(
    written: Option<i64>,
    stored: Option<&StoredPush>,
    definition: &str,
    expected: Option<u64>,
) -> PushPut {
    match (written, stored) {
        // An update returns 2 at least.
        (Some(1), _) => PushPut::Created,
        (Some(_), _) => PushPut::Updated,
        // The text was the same, at the revision expected if any. Otherwise the revision was not
        // the one expected, or (PostgreSQL, `expected` above 0) another writer created the target
        // after this put found none: a conflict either way.
        (None, Some(s))
            if s.definition == definition && expected.is_none_or(|r| r == s.revision) =>
        {
            PushPut::Unchanged
        }
        (None, _) => PushPut::Conflict,
    }
}
