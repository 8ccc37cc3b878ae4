//! The coordination concern on PostgreSQL.
//!
//! Batcher claims and the batch queue are single statements that compare and set: a claim is
//! an upsert whose `WHERE` only lets a free claim (or its own owner's) be taken, a renewal an
//! update on the epoch, a queue move an update (or, from position 0, an upsert) on the
//! position with the lease inserted by the same statement. Racers wait on the row lock and
//! re-check the condition on the winner's version, so exactly one wins. Retaking an expired
//! lease picks it with `FOR UPDATE SKIP LOCKED`, so racing retakers take different leases. The
//! instance registry is one upsert, select or delete per call.

use async_trait::async_trait;
use tenantsync_core::DatasetName;
use tokio_postgres::Row;

use super::PostgresStore;
use crate::rows;
use crate::{BatchLease, BatcherClaim, CoordinationStore, Offset, StoreError};

/// Takes the claim when there is none, when its lease expired (`$4` is now) or when it is the
/// same owner's. A racer's insert waits for the first one's commit, then its `WHERE` is checked
/// against the committed claim: it finds a live lease of another owner and returns no row.
const CLAIM_BATCHER: &str = "INSERT INTO batchers \
     (dataset, owner, epoch, lease_until_ms, checkpoint) VALUES ($1, $2, 1, $3, NULL) \
     ON CONFLICT (dataset) DO UPDATE SET owner = excluded.owner, epoch = batchers.epoch + 1, \
     lease_until_ms = excluded.lease_until_ms \
     WHERE batchers.lease_until_ms <= $4 OR batchers.owner = excluded.owner \
     RETURNING epoch, checkpoint";
const RENEW_BATCHER: &str = "UPDATE batchers \
     SET lease_until_ms = $3, checkpoint = coalesce($4::bytea, checkpoint) \
     WHERE dataset = $1 AND epoch = $2";
const SELECT_DISPATCH: &str = "SELECT partition, next_offset FROM batch_dispatch \
     WHERE dataset = $1 ORDER BY partition";
/// `claim_batch` from position 0 (`$3` is 0), which may have no row yet: the insert creates it,
/// a racer's insert waits for that commit and then finds the position moved. The lease is inserted only
/// when the position moved (`moved` has a row), in the same statement.
const CLAIM_FIRST_BATCH: &str = "WITH moved AS (\
       INSERT INTO batch_dispatch (dataset, partition, next_offset) VALUES ($1, $2, $5) \
       ON CONFLICT (dataset, partition) DO UPDATE SET next_offset = excluded.next_offset \
       WHERE batch_dispatch.next_offset = $3 \
       RETURNING 1) \
     INSERT INTO batch_leases (dataset, batch_id, partition, \"offset\", expires_at_ms) \
     SELECT $1::text, $6::text, $2::int8, $4::int8, $7::int8 FROM moved";
/// `claim_batch` from a position above 0: a missing row is position 0, so not `$3`, and nothing
/// moves. A racer's update waits on the row lock, then re-checks `next_offset = $3` on the
/// winner's version and matches nothing.
const CLAIM_NEXT_BATCH: &str = "WITH moved AS (\
       UPDATE batch_dispatch SET next_offset = $5 \
       WHERE dataset = $1 AND partition = $2 AND next_offset = $3 \
       RETURNING 1) \
     INSERT INTO batch_leases (dataset, batch_id, partition, \"offset\", expires_at_ms) \
     SELECT $1::text, $6::text, $2::int8, $4::int8, $7::int8 FROM moved";
/// SKIP LOCKED: a racer passes over the lease another one is retaking and takes the next. One
/// that read a lease before another's retake committed re-checks `expires_at_ms <= $2` on the
/// new version when locking it, and skips it.
const RETAKE_BATCH: &str = "UPDATE batch_leases SET expires_at_ms = $3 \
     WHERE dataset = $1 AND batch_id = (SELECT batch_id FROM batch_leases \
       WHERE dataset = $1 AND expires_at_ms <= $2 ORDER BY expires_at_ms, batch_id LIMIT 1 \
       FOR UPDATE SKIP LOCKED) \
     RETURNING batch_id, partition, \"offset\", expires_at_ms";
const ACK_BATCH: &str = "DELETE FROM batch_leases WHERE dataset = $1 AND batch_id = $2";
const SELECT_BATCH_LEASE: &str = "SELECT batch_id, partition, \"offset\", expires_at_ms \
     FROM batch_leases WHERE dataset = $1 AND batch_id = $2";

/// Keeps the later of the stored and the new time.
const HEARTBEAT_INSTANCE: &str = "INSERT INTO instances (name, last_seen_ms) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE \
     SET last_seen_ms = GREATEST(instances.last_seen_ms, excluded.last_seen_ms)";
const LIVE_INSTANCES: &str = "SELECT name FROM instances WHERE last_seen_ms >= $1 ORDER BY name";
const DEREGISTER_INSTANCE: &str = "DELETE FROM instances WHERE name = $1";
const FORGET_INSTANCES: &str = "DELETE FROM instances WHERE last_seen_ms < $1";

/// A row of (batch_id, partition, offset, expires_at_ms).
fn batch_lease_row(row: &Row) -> Result<BatchLease, StoreError> {
    rows::batch_lease_from_row(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    )
}

#[async_trait]
impl CoordinationStore for PostgresStore {
    async fn claim_batcher(
        &self,
        dataset: &DatasetName,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<BatcherClaim>, StoreError> {
        let lease_until = now_ms.saturating_add(lease_ms);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(CLAIM_BATCHER).await?;
        client
            .query_opt(&stmt, &[&dataset.as_str(), &owner, &lease_until, &now_ms])
            .await?
            .map(|row| rows::batcher_claim_from_row(row.try_get(0)?, row.try_get(1)?))
            .transpose()
    }

    async fn renew_batcher(
        &self,
        dataset: &DatasetName,
        epoch: u64,
        now_ms: i64,
        lease_ms: i64,
        checkpoint: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let epoch = rows::to_i64("batcher epoch", epoch)?;
        let lease_until = now_ms.saturating_add(lease_ms);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RENEW_BATCHER).await?;
        let renewed = client
            .execute(
                &stmt,
                &[&dataset.as_str(), &epoch, &lease_until, &checkpoint],
            )
            .await?;
        Ok(renewed > 0)
    }

    async fn batch_dispatch(
        &self,
        dataset: &DatasetName,
    ) -> Result<Vec<(u32, Offset)>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_DISPATCH).await?;
        client
            .query(&stmt, &[&dataset.as_str()])
            .await?
            .iter()
            .map(|row| {
                Ok((
                    rows::batch_partition_from_row(row.try_get(0)?)?,
                    rows::to_u64("batch queue position", row.try_get(1)?)?,
                ))
            })
            .collect()
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
        let (expected, offset, next) = rows::batch_claim_to_row(expected, offset)?;
        let client = self.pool.get().await?;
        let stmt = if expected == 0 {
            client.prepare_cached(CLAIM_FIRST_BATCH).await?
        } else {
            client.prepare_cached(CLAIM_NEXT_BATCH).await?
        };
        let leased = client
            .execute(
                &stmt,
                &[
                    &dataset.as_str(),
                    &i64::from(partition),
                    &expected,
                    &offset,
                    &next,
                    &batch_id,
                    &expires_at_ms,
                ],
            )
            .await?;
        Ok(leased > 0)
    }

    async fn retake_expired_batch(
        &self,
        dataset: &DatasetName,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Option<BatchLease>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RETAKE_BATCH).await?;
        client
            .query_opt(&stmt, &[&dataset.as_str(), &now_ms, &expires_at_ms])
            .await?
            .as_ref()
            .map(batch_lease_row)
            .transpose()
    }

    async fn ack_batch(&self, dataset: &DatasetName, batch_id: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(ACK_BATCH).await?;
        Ok(client
            .execute(&stmt, &[&dataset.as_str(), &batch_id])
            .await?
            > 0)
    }

    async fn batch_lease(
        &self,
        dataset: &DatasetName,
        batch_id: &str,
    ) -> Result<Option<BatchLease>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_BATCH_LEASE).await?;
        client
            .query_opt(&stmt, &[&dataset.as_str(), &batch_id])
            .await?
            .as_ref()
            .map(batch_lease_row)
            .transpose()
    }

    async fn heartbeat_instance(&self, instance: &str, now_ms: i64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(HEARTBEAT_INSTANCE).await?;
        client.execute(&stmt, &[&instance, &now_ms]).await?;
        Ok(())
    }

    async fn live_instances(&self, since_ms: i64) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(LIVE_INSTANCES).await?;
        let found = client.query(&stmt, &[&since_ms]).await?;
        Ok(found
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    async fn deregister_instance(&self, instance: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(DEREGISTER_INSTANCE).await?;
        Ok(client.execute(&stmt, &[&instance]).await? > 0)
    }

    async fn forget_instances(&self, before_ms: i64) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(FORGET_INSTANCES).await?;
        Ok(client.execute(&stmt, &[&before_ms]).await?)
    }
}
