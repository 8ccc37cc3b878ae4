//! The feed concern on PostgreSQL. The feed reads a tenant's end and its records in one
//! statement (one snapshot) and its horizon in the next; purging deletes tombstones and raises
//! their tenants' horizons in one statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::{DatasetName, TenantId};

use super::{PostgresStore, corrupt_id};
use crate::rows::{self, RecordRow};
use crate::{FeedRecord, FeedStore, Offset, StoreError, TenantFeed};

/// The tenant's end and a page of its feed in one statement, so both come from one snapshot
/// (the end is never below a seq on the page). Always one row at least: with no records on the
/// page, a single row whose record columns are NULL carries the end. `$4` is `live_from`, NULL
/// for the end.
const SELECT_FEED: &str = "WITH e AS MATERIALIZED (SELECT GREATEST(\
       coalesce((SELECT max(seq) + 1 FROM records WHERE dataset = $1 AND tenant = $2), 0), \
       coalesce((SELECT purged_below FROM tenant_horizons WHERE dataset = $1 AND tenant = $2), 0)\
     )::int8 AS end_seq) \
     SELECT e.end_seq, r.tenant, r.id, r.version, r.data::text, r.updated_at, r.change_id, r.seq \
     FROM e LEFT JOIN LATERAL (SELECT * FROM records \
       WHERE dataset = $1 AND tenant = $2 AND seq >= $3 \
         AND (data IS NOT NULL OR seq >= coalesce($4::int8, e.end_seq)) \
       ORDER BY seq LIMIT $5) r ON true \
     ORDER BY r.seq";
/// Run after [`SELECT_FEED`], as a statement of its own, so it sees any purge that took rows
/// away from the page.
const SELECT_HORIZON: &str =
    "SELECT purged_below FROM tenant_horizons WHERE dataset = $1 AND tenant = $2";
/// The distinct tenants are found by skipping through the `(dataset, tenant, seq)` index, one
/// probe per tenant (a plain GROUP BY would read every record of the dataset), and each
/// tenant's highest seq with one more probe.
const TENANT_ENDS: &str = "WITH RECURSIVE t(tenant) AS (\
       (SELECT tenant FROM records WHERE dataset = $1 ORDER BY tenant LIMIT 1) \
       UNION ALL \
       SELECT (SELECT r.tenant FROM records r WHERE r.dataset = $1 AND r.tenant > t.tenant \
               ORDER BY r.tenant LIMIT 1) \
       FROM t WHERE t.tenant IS NOT NULL), \
     ends(tenant, end_seq) AS (\
       SELECT t.tenant, (SELECT max(r.seq) + 1 FROM records r \
                         WHERE r.dataset = $1 AND r.tenant = t.tenant) \
       FROM t WHERE t.tenant IS NOT NULL \
       UNION ALL \
       SELECT tenant, purged_below FROM tenant_horizons WHERE dataset = $1) \
     SELECT tenant, max(end_seq)::int8 FROM ends GROUP BY tenant ORDER BY tenant";
/// One statement, so one transaction: the tombstones go and their tenants' horizons and version
/// floors rise together (horizon rows upserted in tenant order, so concurrent purges lock them
/// alike). The outer `data IS NULL AND updated_at < $2` is checked again on a row a concurrent
/// apply rewrote while this waited for its lock, so a recreated record survives.
const PURGE_TOMBSTONES: &str = "WITH gone AS (\
       DELETE FROM records WHERE (dataset, tenant, id) IN (\
         SELECT dataset, tenant, id FROM records \
         WHERE dataset = $1 AND data IS NULL AND updated_at < $2 \
         ORDER BY updated_at LIMIT $3) \
       AND data IS NULL AND updated_at < $2 \
       RETURNING tenant, seq, version), \
     per_tenant AS (\
       SELECT tenant, max(seq) + 1 AS purged_below, max(version) AS version_floor, \
              count(*) AS n \
       FROM gone GROUP BY tenant), \
     raised AS (\
       INSERT INTO tenant_horizons (dataset, tenant, purged_below, version_floor) \
       SELECT $1, tenant, purged_below, version_floor FROM per_tenant \
       ORDER BY tenant \
       ON CONFLICT (dataset, tenant) DO UPDATE SET \
         purged_below = GREATEST(tenant_horizons.purged_below, excluded.purged_below), \
         version_floor = GREATEST(tenant_horizons.version_floor, excluded.version_floor)) \
     SELECT coalesce(sum(n), 0)::int8 FROM per_tenant";

#[async_trait]
impl FeedStore for PostgresStore {
    async fn tenant_feed(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        from: Offset,
        live_from: Option<Offset>,
        limit: usize,
    ) -> Result<TenantFeed, StoreError> {
        let (ds, t) = (dataset.as_str(), tenant.as_str());
        let from = rows::to_i64("feed seq", from)?;
        let live_from = live_from
            .map(|l| rows::to_i64("feed live_from", l))
            .transpose()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let (feed, horizon) = tokio::try_join!(
            biased;
            client.prepare_cached(SELECT_FEED),
            client.prepare_cached(SELECT_HORIZON),
        )?;
        // Pipelined, but the server runs them in order: the horizon's snapshot is the later one.
        let (found, horizon) = tokio::try_join!(
            biased;
            async {
                client
                    .query(&feed, &[&ds, &t, &from, &live_from, &limit])
                    .await
            },
            async { client.query_opt(&horizon, &[&ds, &t]).await },
        )?;
        let end = match found.first() {
            Some(row) => rows::to_u64("feed end", row.try_get(0)?)?,
            None => return Err(corrupt_id("feed end", "the feed query returned no row")),
        };
        let mut records = Vec::with_capacity(found.len());
        for row in &found {
            let seq: Option<i64> = row.try_get(7)?;
            let Some(seq) = seq else { continue };
            records.push(FeedRecord {
                seq: rows::to_u64("seq", seq)?,
                record: RecordRow {
                    tenant: row.try_get(1)?,
                    id: row.try_get(2)?,
                    version: row.try_get(3)?,
                    data: row.try_get(4)?,
                    updated_at: row.try_get(5)?,
                    change_id: row.try_get(6)?,
                }
                .into_record()?,
            });
        }
        let horizon = match horizon {
            Some(row) => rows::to_u64("horizon", row.try_get(0)?)?,
            None => 0,
        };
        Ok(TenantFeed {
            records,
            end,
            horizon,
        })
    }

    async fn tenant_ends(
        &self,
        dataset: &DatasetName,
    ) -> Result<Vec<(TenantId, Offset)>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(TENANT_ENDS).await?;
        client
            .query(&stmt, &[&dataset.as_str()])
            .await?
            .iter()
            .map(|row| {
                let tenant: String = row.try_get(0)?;
                let tenant = TenantId::new(tenant).map_err(|e| corrupt_id("feed tenant", e))?;
                Ok((tenant, rows::to_u64("tenant end", row.try_get(1)?)?))
            })
            .collect()
    }

    async fn purge_tombstones(
        &self,
        dataset: &DatasetName,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(PURGE_TOMBSTONES).await?;
        let purged: i64 = client
            .query_one(&stmt, &[&dataset.as_str(), &before, &limit])
            .await?
            .try_get(0)?;
        rows::to_u64("purged tombstones", purged)
    }
}
