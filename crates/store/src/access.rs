//! The access concern: API tokens, the audit log of admin actions, and the secrets every
//! instance on one store shares.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::TokenName;

use crate::StoreError;

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

/// Tokens, the audit log and shared secrets.
///
/// # Contract
///
/// - **Tokens** are stored by the hash of their text, never the text; names are unique.
/// - **The audit log** is append-only; seqs are assigned in commit order, so a reader paging
///   with [`audit_log`](Self::audit_log) never misses an entry (seqs may have gaps).
/// - **Secrets** are created once: every caller on one store gets the same bytes for a name,
///   also when several race to create it, and a stored secret is never replaced.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Stores a new token. Returns false, storing nothing, when a token of that name exists.
    async fn create_token(&self, token: &StoredToken) -> Result<bool, StoreError>;

    /// Every token, ordered by name.
    async fn tokens(&self) -> Result<Vec<StoredToken>, StoreError>;

    /// The token with this hash, if any.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, StoreError>;

    /// Deletes a token. Returns whether it existed.
    async fn revoke_token(&self, name: &TokenName) -> Result<bool, StoreError>;

    /// Of `hashes`, those no stored token has (revoked, or never stored), in the order given.
    /// Answers from one snapshot of committed state, so a token revoked by any process on this
    /// store before the call is reported; one read however many hashes, which is how an
    /// instance learns that tokens its open streams hold were revoked elsewhere. Hashes compare
    /// exactly.
    async fn missing_tokens(&self, hashes: &[String]) -> Result<Vec<String>, StoreError>;

    /// Appends to the audit log; `entry.seq` is ignored and the assigned seq returned. Seqs
    /// are assigned in commit order (appends are serialised), so a reader paging with
    /// [`audit_log`](Self::audit_log) never misses an entry; they may have gaps.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError>;

    /// Up to `limit` audit entries with seq > `after`, ascending.
    async fn audit_log(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// The secret stored under `name`; when there is none yet, stores `candidate` and returns
    /// it. Every caller on one store gets the same bytes, also when several race to create it.
    /// A stored secret is never replaced.
    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;
}
