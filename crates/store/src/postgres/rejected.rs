//! The rejected-entries concern on PostgreSQL. Recording takes an advisory lock per dataset
//! first, then inserts and drops in the same transaction: ids of a dataset become visible in
//! order, and two recorders never drop the same entries twice.

use async_trait::async_trait;
use tenantsync_core::DatasetName;

use super::PostgresStore;
use crate::rows;
use crate::{RejectedEntry, RejectedPage, RejectedStore, StoreError};

/// Per dataset and schema; a hash collision between two datasets only makes them wait for each
/// other.
const LOCK_DATASET: &str = "SELECT pg_advisory_xact_lock(hashtext(\
     'tenantsync-store-rejected:' || coalesce(current_schema(), '') || ':' || $1::text))";
/// In the order given (ids follow `ORDER BY n`). Skips an entry already kept (the unique key,
/// also for a repeat within the call) or at or below its partition's highest dropped offset.
const RECORD: &str = "INSERT INTO rejected_entries (dataset, partition, \"offset\", reason, at) \
     SELECT $1, e.p, e.o, e.r, e.a \
     FROM unnest($2::int8[], $3::int8[], $4::text[], $5::int8[]) WITH ORDINALITY AS e(p, o, r, a, n) \
     WHERE NOT EXISTS (SELECT 1 FROM rejected_drops d \
       WHERE d.dataset = $1 AND d.partition = e.p AND d.dropped_through >= e.o) \
     ORDER BY e.n \
     ON CONFLICT (dataset, partition, \"offset\") DO NOTHING";
/// Drops every entry of the dataset but the newest `$2` and counts them per partition, in one
/// statement (its snapshot sees what this transaction just recorded).
const DROP_OLDEST: &str = "WITH gone AS (\
       DELETE FROM rejected_entries WHERE id IN (\
         SELECT id FROM rejected_entries WHERE dataset = $1 ORDER BY id DESC OFFSET $2) \
       RETURNING partition, \"offset\"), \
     per_partition AS (\
       SELECT partition, count(*) AS n, max(\"offset\") AS through FROM gone GROUP BY partition) \
     INSERT INTO rejected_drops (dataset, partition, dropped, dropped_through) \
     SELECT $1, partition, n, through FROM per_partition ORDER BY partition \
     ON CONFLICT (dataset, partition) DO UPDATE SET \
       dropped = rejected_drops.dropped + excluded.dropped, \
       dropped_through = GREATEST(rejected_drops.dropped_through, excluded.dropped_through)";
/// The count of dropped entries and a page, in one statement (one snapshot). Always one row at
/// least: with no entries on the page, a single row whose entry columns are NULL carries the
/// count.
const SELECT_PAGE: &str = "SELECT \
       (SELECT coalesce(sum(dropped), 0)::int8 FROM rejected_drops WHERE dataset = $1), \
       e.id, e.partition, e.\"offset\", e.reason, e.at \
     FROM (SELECT 1) one LEFT JOIN LATERAL (\
       SELECT id, partition, \"offset\", reason, at FROM rejected_entries \
       WHERE dataset = $1 AND id > $2 ORDER BY id LIMIT $3) e ON true \
     ORDER BY e.id";

#[async_trait]
impl RejectedStore for PostgresStore {
    async fn record_rejected(
        &self,
        dataset: &DatasetName,
        entries: &[RejectedEntry],
        keep: usize,
    ) -> Result<(), StoreError> {
        let ds = dataset.as_str();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let partitions: Vec<i64> = entries.iter().map(|e| i64::from(e.partition)).collect();
        let offsets = entries
            .iter()
            .map(|e| rows::to_i64("rejected entry offset", e.offset))
            .collect::<Result<Vec<_>, _>>()?;
        let reasons: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
        let at: Vec<i64> = entries.iter().map(|e| rows::to_micros(e.at)).collect();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (lock, record, drop_oldest) = tokio::try_join!(
            biased;
            tx.prepare_cached(LOCK_DATASET),
            tx.prepare_cached(RECORD),
            tx.prepare_cached(DROP_OLDEST),
        )?;
        // Pipelined; the server runs them in this order, under the lock.
        tokio::try_join!(
            biased;
            async { tx.execute(&lock, &[&ds]).await },
            async {
                tx.execute(&record, &[&ds, &partitions, &offsets, &reasons, &at])
                    .await
            },
            async { tx.execute(&drop_oldest, &[&ds, &keep]).await },
        )?;
        tx.commit().await?;
        Ok(())
    }

    async fn rejected(
        &self,
        dataset: &DatasetName,
        after: Option<u64>,
        limit: usize,
    ) -> Result<RejectedPage, StoreError> {
        // Ids start at 1; none is above i64::MAX, so clamping keeps the answer (empty) right.
        let after = after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_PAGE).await?;
        let found = client
            .query(&stmt, &[&dataset.as_str(), &after, &limit])
            .await?;
        let dropped = match found.first() {
            Some(row) => rows::to_u64("rejected entries dropped", row.try_get(0)?)?,
            None => {
                return Err(StoreError::Corrupt {
                    what: "rejected entries",
                    detail: "the page query returned no row".into(),
                });
            }
        };
        let mut entries = Vec::with_capacity(found.len());
        for row in &found {
            let id: Option<i64> = row.try_get(1)?;
            let Some(id) = id else { continue };
            entries.push(rows::rejected_from_row(
                id,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
                row.try_get(5)?,
            )?);
        }
        Ok(RejectedPage { entries, dropped })
    }
}
