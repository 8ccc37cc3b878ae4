//! The erasure concern on SQLite. Starting and finishing run on the one writer thread, as
//! `apply` does, so a finish never commits in the middle of a batch that saw the erasure running.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tenantsync_core::TenantId;

use super::{RAISE_HORIZON, SqliteStore};
use crate::rows;
use crate::{Erasure, ErasureStore, StoreError};

const SELECT_ERASURE: &str =
    "SELECT tenant, started_at, finished_at, erased FROM tenant_erasures WHERE tenant = ?1";
/// Every dataset that can hold records or outcomes: `apply` writes a dataset's position row in
/// the transaction of its first batch, so this covers datasets never declared too.
const DATASETS_WRITTEN: &str = "SELECT dataset FROM positions UNION SELECT name FROM datasets";
const COUNT_LIVE: &str =
    "SELECT count(*) FROM records WHERE dataset = ?1 AND tenant = ?2 AND data IS NOT NULL";
const ERASE_RECORDS: &str = "DELETE FROM records WHERE dataset = ?1 AND tenant = ?2 \
     RETURNING seq, version";
const ERASE_OUTCOMES: &str = "DELETE FROM applied_changes WHERE dataset = ?1 AND tenant = ?2";

fn erasure_row(row: &Row<'_>) -> rusqlite::Result<(String, i64, Option<i64>, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn read_erasure(conn: &Connection, tenant: &TenantId) -> Result<Option<Erasure>, StoreError> {
    conn.prepare_cached(SELECT_ERASURE)?
        .query_row([tenant.as_str()], erasure_row)
        .optional()?
        .map(|(tenant, started_at, finished_at, erased)| {
            rows::erasure_from_row(tenant, started_at, finished_at, erased)
        })
        .transpose()
}

fn start_erasure_in_transaction(
    conn: &mut Connection,
    tenant: &TenantId,
    at: DateTime<Utc>,
) -> Result<(Erasure, bool), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(running) = read_erasure(&tx, tenant)?.filter(|e| e.finished_at.is_none()) {
        return Ok((running, false));
    }
    tx.execute(
        "INSERT INTO tenant_erasures (tenant, started_at, finished_at, erased) \
         VALUES (?1, ?2, NULL, 0) ON CONFLICT (tenant) DO UPDATE \
         SET started_at = excluded.started_at, finished_at = NULL, erased = 0",
        params![tenant.as_str(), rows::to_micros(at)],
    )?;
    let started = read_erasure(&tx, tenant)?.ok_or_else(|| StoreError::Corrupt {
        what: "erasure",
        detail: format!("tenant {tenant}: the erasure just started is not there"),
    })?;
    tx.commit()?;
    Ok((started, true))
}

fn finish_erasure_in_transaction(
    conn: &mut Connection,
    tenant: &TenantId,
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let t = tenant.as_str();
    let running = read_erasure(&tx, tenant)?.filter(|e| e.finished_at.is_none());
    if running.is_none() {
        return Ok(0);
    }
    let datasets = tx
        .prepare_cached(DATASETS_WRITTEN)?
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut live = 0;
    {
        let mut count = tx.prepare_cached(COUNT_LIVE)?;
        for ds in &datasets {
            live += count.query_row(params![ds, t], |row| row.get::<_, i64>(0))?;
        }
    }
    if live != 0 {
        return rows::to_u64("live records", live);
    }
    {
        let mut erase = tx.prepare_cached(ERASE_RECORDS)?;
        let mut raise = tx.prepare_cached(RAISE_HORIZON)?;
        let mut forget = tx.prepare_cached(ERASE_OUTCOMES)?;
        for ds in &datasets {
            // One past the highest seq deleted (the tenant's end), and the highest version.
            let mut deleted: Option<(i64, i64)> = None;
            let mut gone = erase.query(params![ds, t])?;
            while let Some(row) = gone.next()? {
                let (seq, version): (i64, i64) = (row.get(0)?, row.get(1)?);
                let (below, floor) = deleted.get_or_insert((0, 0));
                *below = (*below).max(seq + 1);
                *floor = (*floor).max(version);
            }
            drop(gone);
            if let Some((below, floor)) = deleted {
                raise.execute(params![ds, t, below, floor])?;
            }
            forget.execute(params![ds, t])?;
        }
    }
    tx.execute(
        "UPDATE tenant_erasures SET finished_at = ?2 WHERE tenant = ?1",
        params![t, rows::to_micros(at)],
    )?;
    tx.commit()?;
    Ok(0)
}

#[async_trait]
impl ErasureStore for SqliteStore {
    async fn start_erasure(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<(Erasure, bool), StoreError> {
        let tenant = tenant.clone();
        self.write(move |conn| start_erasure_in_transaction(conn, &tenant, at))
            .await
    }

    async fn erasure(&self, tenant: &TenantId) -> Result<Option<Erasure>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| read_erasure(conn, &tenant)).await
    }

    async fn running_erasures(&self) -> Result<Vec<Erasure>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT tenant, started_at, finished_at, erased FROM tenant_erasures \
                 WHERE finished_at IS NULL ORDER BY tenant",
            )?
            .query_map([], erasure_row)?
            .map(|row| {
                let (tenant, started_at, finished_at, erased) = row?;
                rows::erasure_from_row(tenant, started_at, finished_at, erased)
            })
            .collect()
        })
        .await
    }

    async fn erasure_progress(&self, tenant: &TenantId, erased: u64) -> Result<(), StoreError> {
        let tenant = tenant.clone();
        let erased = rows::to_i64("erasure progress", erased)?;
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE tenant_erasures SET erased = ?2 \
                 WHERE tenant = ?1 AND finished_at IS NULL",
            )?
            .execute(params![tenant.as_str(), erased])?;
            Ok(())
        })
        .await
    }

    async fn finish_erasure(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let tenant = tenant.clone();
        self.write(move |conn| finish_erasure_in_transaction(conn, &tenant, at))
            .await
    }
}
