//! The coordination concern on SQLite: batcher claims and the HTTP batch queue, each a
//! compare-and-set in one `BEGIN IMMEDIATE` writer transaction, and the instance registry
//! (single statements through the writer).

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tenantsync_core::DatasetName;

use super::{SqliteStore, partition_param};
use crate::rows;
use crate::{BatchLease, BatcherClaim, CoordinationStore, Offset, StoreError};

/// Takes the claim when there is none, when its lease expired (`?4` is now) or when it is the
/// same owner's; otherwise the upsert's WHERE leaves the row alone and RETURNING yields nothing.
const CLAIM_BATCHER: &str = "INSERT INTO batchers \
     (dataset, owner, epoch, lease_until_ms, checkpoint) VALUES (?1, ?2, 1, ?3, NULL) \
     ON CONFLICT (dataset) DO UPDATE SET owner = excluded.owner, epoch = batchers.epoch + 1, \
     lease_until_ms = excluded.lease_until_ms \
     WHERE batchers.lease_until_ms <= ?4 OR batchers.owner = excluded.owner \
     RETURNING epoch, checkpoint";
const RENEW_BATCHER: &str = "UPDATE batchers \
     SET lease_until_ms = ?3, checkpoint = coalesce(?4, checkpoint) \
     WHERE dataset = ?1 AND epoch = ?2";
const SELECT_DISPATCH: &str = "SELECT partition, next_offset FROM batch_dispatch \
     WHERE dataset = ?1 ORDER BY partition";
const SELECT_DISPATCH_ONE: &str =
    "SELECT next_offset FROM batch_dispatch WHERE dataset = ?1 AND partition = ?2";
const UPSERT_DISPATCH: &str = "INSERT INTO batch_dispatch (dataset, partition, next_offset) \
     VALUES (?1, ?2, ?3) \
     ON CONFLICT (dataset, partition) DO UPDATE SET next_offset = excluded.next_offset";
const INSERT_BATCH_LEASE: &str = "INSERT INTO batch_leases \
     (dataset, batch_id, partition, \"offset\", expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)";
const RETAKE_BATCH: &str = "UPDATE batch_leases SET expires_at_ms = ?3 \
     WHERE dataset = ?1 AND batch_id = (SELECT batch_id FROM batch_leases \
       WHERE dataset = ?1 AND expires_at_ms <= ?2 ORDER BY expires_at_ms, batch_id LIMIT 1) \
     RETURNING batch_id, partition, \"offset\", expires_at_ms";
const ACK_BATCH: &str = "DELETE FROM batch_leases WHERE dataset = ?1 AND batch_id = ?2";
const SELECT_BATCH_LEASE: &str = "SELECT batch_id, partition, \"offset\", expires_at_ms \
     FROM batch_leases WHERE dataset = ?1 AND batch_id = ?2";

/// Keeps the later of the stored and the new time.
const HEARTBEAT_INSTANCE: &str = "INSERT INTO instances (name, last_seen_ms) VALUES (?1, ?2) \
     ON CONFLICT (name) DO UPDATE SET last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)";
const LIVE_INSTANCES: &str = "SELECT name FROM instances WHERE last_seen_ms >= ?1 ORDER BY name";
const DEREGISTER_INSTANCE: &str = "DELETE FROM instances WHERE name = ?1";
const FORGET_INSTANCES: &str = "DELETE FROM instances WHERE last_seen_ms < ?1";

fn batch_lease_row(row: &Row<'_>) -> rusqlite::Result<(String, i64, i64, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

/// The read-compare-write of `claim_batch`, in one writer transaction. An error (a batch id
/// still outstanding) drops the transaction, which rolls back the moved position.
fn claim_batch_in_transaction(
    conn: &mut Connection,
    dataset: &DatasetName,
    partition: u32,
    (expected, offset, next): (i64, i64, i64),
    batch_id: &str,
    expires_at_ms: i64,
) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (ds, part) = (dataset.as_str(), partition_param(partition));
    let position: Option<i64> = tx
        .prepare_cached(SELECT_DISPATCH_ONE)?
        .query_row(params![ds, part], |row| row.get(0))
        .optional()?;
    if position.unwrap_or(0) != expected {
        return Ok(false);
    }
    tx.prepare_cached(UPSERT_DISPATCH)?
        .execute(params![ds, part, next])?;
    tx.prepare_cached(INSERT_BATCH_LEASE)?.execute(params![
        ds,
        batch_id,
        part,
        offset,
        expires_at_ms
    ])?;
    tx.commit()?;
    Ok(true)
}

#[async_trait]
impl CoordinationStore for SqliteStore {
    async fn claim_batcher(
        &self,
        dataset: &DatasetName,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<BatcherClaim>, StoreError> {
        let (dataset, owner) = (dataset.clone(), owner.to_owned());
        let lease_until = now_ms.saturating_add(lease_ms);
        // One statement on the one writer thread, in a transaction that takes the write lock
        // before reading: another process on the same file cannot slip in between.
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let claimed: Option<(i64, Option<Vec<u8>>)> = tx
                .prepare_cached(CLAIM_BATCHER)?
                .query_row(
                    params![dataset.as_str(), owner, lease_until, now_ms],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            tx.commit()?;
            claimed
                .map(|(epoch, checkpoint)| rows::batcher_claim_from_row(epoch, checkpoint))
                .transpose()
        })
        .await
    }

    async fn renew_batcher(
        &self,
        dataset: &DatasetName,
        epoch: u64,
        now_ms: i64,
        lease_ms: i64,
        checkpoint: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let (dataset, checkpoint) = (dataset.clone(), checkpoint.map(<[u8]>::to_vec));
        let epoch = rows::to_i64("batcher epoch", epoch)?;
        let lease_until = now_ms.saturating_add(lease_ms);
        self.write(move |conn| {
            let renewed = conn.prepare_cached(RENEW_BATCHER)?.execute(params![
                dataset.as_str(),
                epoch,
                lease_until,
                checkpoint
            ])?;
            Ok(renewed > 0)
        })
        .await
    }

    async fn batch_dispatch(
        &self,
        dataset: &DatasetName,
    ) -> Result<Vec<(u32, Offset)>, StoreError> {
        let dataset = dataset.clone();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_DISPATCH)?
                .query_map([dataset.as_str()], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })?
                .map(|row| {
                    let (partition, next) = row?;
                    Ok((
                        rows::batch_partition_from_row(partition)?,
                        rows::to_u64("batch queue position", next)?,
                    ))
                })
                .collect()
        })
        .await
    }

    async fn claim_batch(
        &self,
        dataset: &DatasetName,
        partition: u32,
        expected: Offset,
        offset: Offset,
        batch_id: &str,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let columns = rows::batch_claim_to_row(expected, offset)?;
        let (dataset, batch_id) = (dataset.clone(), batch_id.to_owned());
        self.write(move |conn| {
            claim_batch_in_transaction(conn, &dataset, partition, columns, &batch_id, expires_at_ms)
        })
        .await
    }

    async fn retake_expired_batch(
        &self,
        dataset: &DatasetName,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Option<BatchLease>, StoreError> {
        let dataset = dataset.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let retaken = tx
                .prepare_cached(RETAKE_BATCH)?
                .query_row(
                    params![dataset.as_str(), now_ms, expires_at_ms],
                    batch_lease_row,
                )
                .optional()?;
            tx.commit()?;
            retaken
                .map(|(batch_id, partition, offset, expires_at_ms)| {
                    rows::batch_lease_from_row(batch_id, partition, offset, expires_at_ms)
                })
                .transpose()
        })
        .await
    }

    async fn ack_batch(&self, dataset: &DatasetName, batch_id: &str) -> Result<bool, StoreError> {
        let (dataset, batch_id) = (dataset.clone(), batch_id.to_owned());
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(ACK_BATCH)?
                .execute(params![dataset.as_str(), batch_id])?
                > 0)
        })
        .await
    }

    async fn batch_lease(
        &self,
        dataset: &DatasetName,
        batch_id: &str,
    ) -> Result<Option<BatchLease>, StoreError> {
        let (dataset, batch_id) = (dataset.clone(), batch_id.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(SELECT_BATCH_LEASE)?
                .query_row(params![dataset.as_str(), batch_id], batch_lease_row)
                .optional()?
                .map(|(batch_id, partition, offset, expires_at_ms)| {
                    rows::batch_lease_from_row(batch_id, partition, offset, expires_at_ms)
                })
                .transpose()
        })
        .await
    }

    async fn heartbeat_instance(&self, instance: &str, now_ms: i64) -> Result<(), StoreError> {
        let instance = instance.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(HEARTBEAT_INSTANCE)?
                .execute(params![instance, now_ms])?;
            Ok(())
        })
        .await
    }

    async fn live_instances(&self, since_ms: i64) -> Result<Vec<String>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(LIVE_INSTANCES)?
                .query_map(params![since_ms], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    async fn deregister_instance(&self, instance: &str) -> Result<bool, StoreError> {
        let instance = instance.to_owned();
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(DEREGISTER_INSTANCE)?
                .execute(params![instance])?
                > 0)
        })
        .await
    }

    async fn forget_instances(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let forgotten = conn
                .prepare_cached(FORGET_INSTANCES)?
                .execute(params![before_ms])?;
            Ok(forgotten as u64)
        })
        .await
    }
}
