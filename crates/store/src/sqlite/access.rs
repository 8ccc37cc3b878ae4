//! The access concern on SQLite: tokens, the audit log and secrets. Appends and secret
//! creation run on the one writer thread, which is what orders audit seqs and makes racing
//! secret creators agree.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use tenantsync_core::TokenName;

use super::SqliteStore;
use crate::rows;
use crate::{AccessStore, AuditEntry, StoreError, StoredToken};

type TokenRow = (String, String, String, i64);

fn token_row(row: &Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

#[async_trait]
impl AccessStore for SqliteStore {
    async fn create_token(&self, token: &StoredToken) -> Result<bool, StoreError> {
        let token = token.clone();
        self.write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO tokens (name, hash, scopes, created_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (name) DO NOTHING",
                )?
                .execute(params![
                    token.name.as_str(),
                    token.hash,
                    rows::scopes_to_row(&token)?,
                    rows::to_micros(token.created_at),
                ])?;
            Ok(inserted > 0)
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT name, hash, scopes, created_at FROM tokens ORDER BY name")?
                .query_map([], token_row)?
                .map(|row| {
                    let (name, hash, scopes, created_at) = row?;
                    rows::token_from_row(name, hash, &scopes, created_at)
                })
                .collect()
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT name, hash, scopes, created_at FROM tokens WHERE hash = ?1",
            )?
            .query_row([hash], token_row)
            .optional()?
            .map(|(name, hash, scopes, created_at)| {
                rows::token_from_row(name, hash, &scopes, created_at)
            })
            .transpose()
        })
        .await
    }

    async fn revoke_token(&self, name: &TokenName) -> Result<bool, StoreError> {
        let name = name.clone();
        self.write(move |conn| {
            Ok(conn
                .prepare_cached("DELETE FROM tokens WHERE name = ?1")?
                .execute([name.as_str()])?
                > 0)
        })
        .await
    }

    async fn missing_tokens(&self, hashes: &[String]) -> Result<Vec<String>, StoreError> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        // One JSON array parameter: no limit on the number of bound variables.
        let hashes = rows::to_json(hashes)?;
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT h.value FROM json_each(?1) AS h \
                 WHERE NOT EXISTS (SELECT 1 FROM tokens WHERE hash = h.value) ORDER BY h.key",
            )?
            .query_map([hashes], |row| row.get::<_, String>(0))?
            .map(|row| Ok(row?))
            .collect()
        })
        .await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let detail = rows::audit_detail_to_row(entry)?;
        let entry = entry.clone();
        self.write(move |conn| {
            let seq: i64 = conn
                .prepare_cached(
                    "INSERT INTO audit_log (at, actor, action, target, detail) \
                     VALUES (?1, ?2, ?3, ?4, ?5) RETURNING seq",
                )?
                .query_row(
                    params![
                        rows::to_micros(entry.at),
                        entry.actor,
                        entry.action,
                        entry.target,
                        detail
                    ],
                    |row| row.get(0),
                )?;
            rows::to_u64("audit seq", seq)
        })
        .await
    }

    async fn audit_log(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        // No seq is above i64::MAX, so clamping keeps the answer (empty) right.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT seq, at, actor, action, target, detail FROM audit_log \
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![after, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })?
            .map(|row| {
                let (seq, at, actor, action, target, detail) = row?;
                rows::audit_from_row(seq, at, actor, action, target, &detail)
            })
            .collect()
        })
        .await
    }

    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (name, candidate) = (name.to_owned(), candidate.to_vec());
        // On the writer: one writer thread, so of several racers the first inserts and the
        // others read what it stored.
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, candidate],
            )?;
            let value: Vec<u8> = tx.query_row(
                "SELECT value FROM secrets WHERE name = ?1",
                [&name],
                |row| row.get(0),
            )?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }
}
