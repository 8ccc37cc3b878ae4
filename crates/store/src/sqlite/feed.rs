//! The feed concern on SQLite: a tenant's records by seq, read in one snapshot, and tombstone
//! purges that raise horizons in the same writer transaction.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use tenantsync_core::{DatasetName, TenantId};

use super::{RAISE_HORIZON, SqliteStore, record_row};
use crate::rows;
use crate::{FeedRecord, FeedStore, Offset, StoreError, TenantFeed};

/// The tenant's end, as `TenantFeed::end` defines it.
const SELECT_END: &str = "SELECT max(\
     coalesce((SELECT max(seq) + 1 FROM records WHERE dataset = ?1 AND tenant = ?2), 0), \
     coalesce((SELECT purged_below FROM tenant_horizons WHERE dataset = ?1 AND tenant = ?2), 0))";
const SELECT_HORIZON: &str =
    "SELECT purged_below FROM tenant_horizons WHERE dataset = ?1 AND tenant = ?2";
const SELECT_FEED: &str = "SELECT tenant, id, version, data, updated_at, change_id, seq \
     FROM records WHERE dataset = ?1 AND tenant = ?2 AND seq >= ?3 \
     AND (data IS NOT NULL OR seq >= ?4) ORDER BY seq LIMIT ?5";
const SELECT_ENDS: &str = "SELECT tenant, max(e) FROM (\
     SELECT tenant, max(seq) + 1 AS e FROM records WHERE dataset = ?1 GROUP BY tenant \
     UNION ALL SELECT tenant, purged_below FROM tenant_horizons WHERE dataset = ?1) \
     GROUP BY tenant ORDER BY tenant";
const PURGE: &str = "DELETE FROM records WHERE dataset = ?1 AND (tenant, id) IN (\
     SELECT tenant, id FROM records \
     WHERE dataset = ?1 AND data IS NULL AND updated_at < ?2 ORDER BY updated_at LIMIT ?3) \
     RETURNING tenant, seq, version";

#[async_trait]
impl FeedStore for SqliteStore {
    async fn tenant_feed(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        from: Offset,
        live_from: Option<Offset>,
        limit: usize,
    ) -> Result<TenantFeed, StoreError> {
        let (dataset, tenant) = (dataset.clone(), tenant.clone());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let from = rows::to_i64("feed seq", from)?;
        let live_from = live_from
            .map(|l| rows::to_i64("feed live_from", l))
            .transpose()?;
        self.read(move |conn| {
            let (ds, t) = (dataset.as_str(), tenant.as_str());
            // One read transaction: end, records and horizon come from one snapshot.
            let tx = conn.unchecked_transaction()?;
            let end: i64 = tx
                .prepare_cached(SELECT_END)?
                .query_row(params![ds, t], |row| row.get(0))?;
            let records = tx
                .prepare_cached(SELECT_FEED)?
                .query_map(
                    params![ds, t, from, live_from.unwrap_or(end), limit],
                    |row| Ok((record_row(row)?, row.get::<_, i64>(6)?)),
                )?
                .map(|row| {
                    let (record, seq) = row?;
                    Ok(FeedRecord {
                        seq: rows::to_u64("record seq", seq)?,
                        record: record.into_record()?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let horizon: Option<i64> = tx
                .prepare_cached(SELECT_HORIZON)?
                .query_row(params![ds, t], |row| row.get(0))
                .optional()?;
            tx.finish()?;
            Ok(TenantFeed {
                records,
                end: rows::to_u64("tenant end", end)?,
                horizon: rows::to_u64("tenant horizon", horizon.unwrap_or(0))?,
            })
        })
        .await
    }

    async fn tenant_ends(
        &self,
        dataset: &DatasetName,
    ) -> Result<Vec<(TenantId, Offset)>, StoreError> {
        let dataset = dataset.clone();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_ENDS)?
                .query_map([dataset.as_str()], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })?
                .map(|row| {
                    let (tenant, end) = row?;
                    Ok((
                        TenantId::new(tenant).map_err(|e| StoreError::Corrupt {
                            what: "record tenant",
                            detail: e.to_string(),
                        })?,
                        rows::to_u64("tenant end", end)?,
                    ))
                })
                .collect()
        })
        .await
    }

    async fn purge_tombstones(
        &self,
        dataset: &DatasetName,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let dataset = dataset.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ds = dataset.as_str();
            // Per tenant: one past the highest purged seq, and the highest purged version.
            let mut horizons: HashMap<String, (i64, i64)> = HashMap::new();
            let mut purged = 0u64;
            {
                let mut purge = tx.prepare_cached(PURGE)?;
                let mut found = purge.query(params![ds, before.timestamp_micros(), limit])?;
                while let Some(row) = found.next()? {
                    let (tenant, seq, version): (String, i64, i64) =
                        (row.get(0)?, row.get(1)?, row.get(2)?);
                    let entry = horizons.entry(tenant).or_insert((0, 0));
                    entry.0 = entry.0.max(seq + 1);
                    entry.1 = entry.1.max(version);
                    purged += 1;
                }
            }
            {
                let mut raise = tx.prepare_cached(RAISE_HORIZON)?;
                for (tenant, (below, floor)) in &horizons {
                    raise.execute(params![ds, tenant, below, floor])?;
                }
            }
            tx.commit()?;
            Ok(purged)
        })
        .await
    }
}
