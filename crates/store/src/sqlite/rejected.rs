//! The rejected-entries concern on SQLite. Recording runs on the one writer thread, in one
//! `BEGIN IMMEDIATE` transaction with the drops it causes, so ids commit in order.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::{Connection, TransactionBehavior, params};
use tenantsync_core::DatasetName;

use super::{SqliteStore, partition_param};
use crate::rows;
use crate::{RejectedEntry, RejectedPage, RejectedStore, StoreError};

/// Skips an entry already kept (the unique key) or at or below its partition's highest dropped
/// offset (recorded before, then dropped). The `WHERE` also lets SQLite parse the upsert.
const RECORD: &str = "INSERT INTO rejected_entries (dataset, partition, \"offset\", reason, at) \
     SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS (SELECT 1 FROM rejected_drops \
       WHERE dataset = ?1 AND partition = ?2 AND dropped_through >= ?3) \
     ON CONFLICT (dataset, partition, \"offset\") DO NOTHING";
/// Every entry of the dataset but the newest `?2`.
const DROP_OLDEST: &str = "DELETE FROM rejected_entries WHERE dataset = ?1 AND id IN (\
     SELECT id FROM rejected_entries WHERE dataset = ?1 ORDER BY id DESC LIMIT -1 OFFSET ?2) \
     RETURNING partition, \"offset\"";
const COUNT_DROPS: &str = "INSERT INTO rejected_drops \
     (dataset, partition, dropped, dropped_through) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (dataset, partition) DO UPDATE SET dropped = dropped + excluded.dropped, \
     dropped_through = max(dropped_through, excluded.dropped_through)";
const SELECT_PAGE: &str = "SELECT id, partition, \"offset\", reason, at FROM rejected_entries \
     WHERE dataset = ?1 AND id > ?2 ORDER BY id LIMIT ?3";
const SELECT_DROPPED: &str =
    "SELECT coalesce(sum(dropped), 0) FROM rejected_drops WHERE dataset = ?1";

fn record_in_transaction(
    conn: &mut Connection,
    dataset: &DatasetName,
    entries: &[RejectedEntry],
    keep: i64,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let ds = dataset.as_str();
    {
        let mut record = tx.prepare_cached(RECORD)?;
        for e in entries {
            record.execute(params![
                ds,
                partition_param(e.partition),
                rows::to_i64("rejected entry offset", e.offset)?,
                e.reason,
                rows::to_micros(e.at),
            ])?;
        }
    }
    // Per partition: how many dropped, and the highest offset dropped.
    let mut drops: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    {
        let mut drop_oldest = tx.prepare_cached(DROP_OLDEST)?;
        let mut gone = drop_oldest.query(params![ds, keep])?;
        while let Some(row) = gone.next()? {
            let (partition, offset): (i64, i64) = (row.get(0)?, row.get(1)?);
            let (count, through) = drops.entry(partition).or_insert((0, offset));
            *count += 1;
            *through = (*through).max(offset);
        }
    }
    {
        let mut count = tx.prepare_cached(COUNT_DROPS)?;
        for (partition, (dropped, through)) in &drops {
            count.execute(params![ds, partition, dropped, through])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[async_trait]
impl RejectedStore for SqliteStore {
    async fn record_rejected(
        &self,
        dataset: &DatasetName,
        entries: &[RejectedEntry],
        keep: usize,
    ) -> Result<(), StoreError> {
        let (dataset, entries) = (dataset.clone(), entries.to_vec());
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.write(move |conn| record_in_transaction(conn, &dataset, &entries, keep))
            .await
    }

    async fn rejected(
        &self,
        dataset: &DatasetName,
        after: Option<u64>,
        limit: usize,
    ) -> Result<RejectedPage, StoreError> {
        let dataset = dataset.clone();
        // Ids start at 1; none is above i64::MAX, so clamping keeps the answer (empty) right.
        let after = after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let ds = dataset.as_str();
            // One read transaction: the entries and the count of dropped ones agree.
            let tx = conn.unchecked_transaction()?;
            let entries = tx
                .prepare_cached(SELECT_PAGE)?
                .query_map(params![ds, after, limit], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })?
                .map(|row| {
                    let (id, partition, offset, reason, at) = row?;
                    rows::rejected_from_row(id, partition, offset, reason, at)
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let dropped: i64 = tx
                .prepare_cached(SELECT_DROPPED)?
                .query_row([ds], |row| row.get(0))?;
            tx.finish()?;
            Ok(RejectedPage {
                entries,
                dropped: rows::to_u64("rejected entries dropped", dropped)?,
            })
        })
        .await
    }
}
