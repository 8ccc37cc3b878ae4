//! The access concern on PostgreSQL: tokens, the audit log and secrets. Audit appends lock the
//! audit table against each other, so seqs become visible in order; a secret is created by one
//! upsert that racers wait on.

use async_trait::async_trait;
use tenantsync_core::TokenName;
use tokio_postgres::Row;

use super::PostgresStore;
use crate::rows;
use crate::{AccessStore, AuditEntry, StoreError, StoredToken};

/// Serialises appends (not reads): an identity's values are handed out outside transactions, so
/// without it a reader could see seq 8 committed before seq 7 and page past 7 for good.
const LOCK_AUDIT: &str = "LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE";
const APPEND_AUDIT: &str = "INSERT INTO audit_log (at, actor, action, target, detail) \
     VALUES ($1, $2, $3, $4, $5) RETURNING seq";
const SELECT_AUDIT: &str = "SELECT seq, at, actor, action, target, detail FROM audit_log \
     WHERE seq > $1 ORDER BY seq LIMIT $2";
/// The hashes of `$1` no token has, in the order given.
const MISSING_TOKENS: &str = "SELECT h FROM unnest($1::text[]) WITH ORDINALITY AS x(h, i) \
     WHERE NOT EXISTS (SELECT 1 FROM tokens WHERE hash = h) ORDER BY i";
/// Inserts or, for an existing secret, returns the stored value in one statement: a racer's
/// insert waits for the first one's commit and then returns its value.
const SECRET: &str = "INSERT INTO secrets (name, value) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING value";

/// A row of (name, hash, scopes, created_at).
fn token_row(row: &Row) -> Result<StoredToken, StoreError> {
    let scopes: &str = row.try_get(2)?;
    rows::token_from_row(row.try_get(0)?, row.try_get(1)?, scopes, row.try_get(3)?)
}

#[async_trait]
impl AccessStore for PostgresStore {
    async fn create_token(&self, token: &StoredToken) -> Result<bool, StoreError> {
        let scopes = rows::scopes_to_row(token)?;
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO tokens (name, hash, scopes, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .await?;
        let inserted = client
            .execute(
                &stmt,
                &[
                    &token.name.as_str(),
                    &token.hash,
                    &scopes,
                    &rows::to_micros(token.created_at),
                ],
            )
            .await?;
        Ok(inserted > 0)
    }

    async fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT name, hash, scopes, created_at FROM tokens ORDER BY name")
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(token_row)
            .collect()
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT name, hash, scopes, created_at FROM tokens WHERE hash = $1")
            .await?;
        client
            .query_opt(&stmt, &[&hash])
            .await?
            .as_ref()
            .map(token_row)
            .transpose()
    }

    async fn revoke_token(&self, name: &TokenName) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("DELETE FROM tokens WHERE name = $1")
            .await?;
        Ok(client.execute(&stmt, &[&name.as_str()]).await? > 0)
    }

    async fn missing_tokens(&self, hashes: &[String]) -> Result<Vec<String>, StoreError> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(MISSING_TOKENS).await?;
        client
            .query(&stmt, &[&hashes])
            .await?
            .iter()
            .map(|row| Ok(row.try_get(0)?))
            .collect()
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let detail = rows::audit_detail_to_row(entry)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (lock, append) = tokio::try_join!(
            biased;
            tx.prepare_cached(LOCK_AUDIT),
            tx.prepare_cached(APPEND_AUDIT),
        )?;
        let (_, row) = tokio::try_join!(
            biased;
            async { tx.execute(&lock, &[]).await },
            async {
                tx.query_one(
                    &append,
                    &[
                        &rows::to_micros(entry.at),
                        &entry.actor,
                        &entry.action,
                        &entry.target,
                        &detail,
                    ],
                )
                .await
            },
        )?;
        let seq: i64 = row.try_get(0)?;
        tx.commit().await?;
        rows::to_u64("audit seq", seq)
    }

    async fn audit_log(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        // No seq is above i64::MAX, so clamping keeps the answer (empty) right.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_AUDIT).await?;
        client
            .query(&stmt, &[&after, &limit])
            .await?
            .iter()
            .map(|row| {
                let detail: &str = row.try_get(5)?;
                rows::audit_from_row(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                    detail,
                )
            })
            .collect()
    }

    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SECRET).await?;
        Ok(client
            .query_one(&stmt, &[&name, &candidate])
            .await?
            .try_get(0)?)
    }
}
