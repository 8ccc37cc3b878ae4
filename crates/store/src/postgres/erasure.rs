//! The erasure concern on PostgreSQL. `finish_erasure` takes the erasure gate exclusively
//! (see [`super::ERASURE_GATE_SHARED`]) before anything else, so a finish never commits under a
//! batch that saw its erasure running, and then deletes, raises and finishes in one statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::TenantId;
use tokio_postgres::Row;

use super::{ERASURE_GATE, PostgresStore};
use crate::rows;
use crate::{Erasure, ErasureStore, StoreError};

const SELECT_ERASURE: &str =
    "SELECT tenant, started_at, finished_at, erased FROM tenant_erasures WHERE tenant = $1";
const INSERT_ERASURE: &str = "INSERT INTO tenant_erasures (tenant, started_at, finished_at, erased) \
     VALUES ($1, $2, NULL, 0) ON CONFLICT (tenant) DO NOTHING \
     RETURNING tenant, started_at, finished_at, erased";
/// Serialises a start with other starts and with finishes of the same tenant.
const LOCK_ERASURE: &str = "SELECT tenant, started_at, finished_at, erased FROM tenant_erasures \
     WHERE tenant = $1 FOR NO KEY UPDATE";
const RESTART_ERASURE: &str = "UPDATE tenant_erasures \
     SET started_at = $2, finished_at = NULL, erased = 0 WHERE tenant = $1 \
     RETURNING tenant, started_at, finished_at, erased";
const RUNNING_ERASURES: &str = "SELECT tenant, started_at, finished_at, erased \
     FROM tenant_erasures WHERE finished_at IS NULL ORDER BY tenant";
const ERASURE_PROGRESS: &str = "UPDATE tenant_erasures SET erased = $2 \
     WHERE tenant = $1 AND finished_at IS NULL";
/// Run after [`ERASURE_GATE`].
const LOCK_RUNNING_ERASURE: &str = "SELECT 1 FROM tenant_erasures \
     WHERE tenant = $1 AND finished_at IS NULL FOR UPDATE";
/// Every dataset that can hold records or outcomes: `apply` writes a dataset's position row in
/// the transaction of its first batch, so this covers datasets never declared too. Each is then
/// one probe of the records' primary key, not a scan of every tenant.
const COUNT_LIVE: &str = "SELECT count(*)::int8 FROM records WHERE dataset IN \
     (SELECT dataset FROM positions UNION SELECT name FROM datasets) \
     AND tenant = $1 AND data IS NOT NULL";
/// One statement: the tenant's records go, its horizons and version floors rise as a purge
/// raises them (one past the highest seq deleted is the tenant's end), its outcomes go and the
/// erasure is finished.
const FINISH_ERASURE: &str = "WITH ds AS (\
       SELECT dataset FROM positions UNION SELECT name FROM datasets), \
     gone AS (\
       DELETE FROM records WHERE dataset IN (SELECT dataset FROM ds) AND tenant = $1 \
       RETURNING dataset, seq, version), \
     per_dataset AS (\
       SELECT dataset, max(seq) + 1 AS purged_below, max(version) AS version_floor \
       FROM gone GROUP BY dataset), \
     raised AS (\
       INSERT INTO tenant_horizons (dataset, tenant, purged_below, version_floor) \
       SELECT dataset, $1, purged_below, version_floor FROM per_dataset \
       ORDER BY dataset \
       ON CONFLICT (dataset, tenant) DO UPDATE SET \
         purged_below = GREATEST(tenant_horizons.purged_below, excluded.purged_below), \
         version_floor = GREATEST(tenant_horizons.version_floor, excluded.version_floor)), \
     forgotten AS (\
       DELETE FROM applied_changes WHERE dataset IN (SELECT dataset FROM ds) AND tenant = $1) \
     UPDATE tenant_erasures SET finished_at = $2 WHERE tenant = $1";

/// A row of (tenant, started_at, finished_at, erased).
fn erasure_row(row: &Row) -> Result<Erasure, StoreError> {
    rows::erasure_from_row(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    )
}

#[async_trait]
impl ErasureStore for PostgresStore {
    async fn start_erasure(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<(Erasure, bool), StoreError> {
        let (t, at) = (tenant.as_str(), rows::to_micros(at));
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (insert, lock, restart) = tokio::try_join!(
            biased;
            tx.prepare_cached(INSERT_ERASURE),
            tx.prepare_cached(LOCK_ERASURE),
            tx.prepare_cached(RESTART_ERASURE),
        )?;
        if let Some(row) = tx.query_opt(&insert, &[&t, &at]).await? {
            let started = erasure_row(&row)?;
            tx.commit().await?;
            return Ok((started, true));
        }
        // The row exists (a conflicting insert waits for the other's commit); lock its latest
        // version so that it cannot finish or restart under us.
        let existing = erasure_row(&tx.query_one(&lock, &[&t]).await?)?;
        if existing.finished_at.is_none() {
            tx.commit().await?;
            return Ok((existing, false));
        }
        let started = erasure_row(&tx.query_one(&restart, &[&t, &at]).await?)?;
        tx.commit().await?;
        Ok((started, true))
    }

    async fn erasure(&self, tenant: &TenantId) -> Result<Option<Erasure>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_ERASURE).await?;
        client
            .query_opt(&stmt, &[&tenant.as_str()])
            .await?
            .as_ref()
            .map(erasure_row)
            .transpose()
    }

    async fn running_erasures(&self) -> Result<Vec<Erasure>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RUNNING_ERASURES).await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(erasure_row)
            .collect()
    }

    async fn erasure_progress(&self, tenant: &TenantId, erased: u64) -> Result<(), StoreError> {
        let erased = rows::to_i64("erasure progress", erased)?;
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(ERASURE_PROGRESS).await?;
        client.execute(&stmt, &[&tenant.as_str(), &erased]).await?;
        Ok(())
    }

    async fn finish_erasure(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let (t, at) = (tenant.as_str(), rows::to_micros(at));
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (gate, lock, count_live, finish) = tokio::try_join!(
            biased;
            tx.prepare_cached(ERASURE_GATE),
            tx.prepare_cached(LOCK_RUNNING_ERASURE),
            tx.prepare_cached(COUNT_LIVE),
            tx.prepare_cached(FINISH_ERASURE),
        )?;
        // In this order, each a statement of its own: once the gate is held no batch that saw
        // the erasure running is writing, and the later snapshots see what they committed.
        tx.execute(&gate, &[]).await?;
        if tx.query_opt(&lock, &[&t]).await?.is_none() {
            return Ok(0);
        }
        let live: i64 = tx.query_one(&count_live, &[&t]).await?.try_get(0)?;
        if live != 0 {
            return rows::to_u64("live records", live);
        }
        tx.execute(&finish, &[&t, &at]).await?;
        tx.commit().await?;
        Ok(0)
    }
}
