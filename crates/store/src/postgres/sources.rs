//! The sources concern on PostgreSQL.
//!
//! A claim is one upsert whose `WHERE` only lets a free claim (or its own owner's) be taken:
//! racers wait on the row lock and re-check the condition on the winner's version, so exactly
//! one wins. Renewals and releases are updates on the epoch. The source's row in `sources` is
//! what orders everything else against a delete: a claim locks it `FOR KEY SHARE` in the same
//! statement, recording locks it `FOR NO KEY UPDATE` first (which also serialises the recorders
//! of one source, so ids become visible in order), and a delete deletes it before the source's
//! other rows. Whoever comes second waits for the first to commit; a claim or recording that
//! comes after a delete finds no row and changes nothing, and a delete that comes after them
//! sees (and deletes) what they wrote, since each of its statements reads anew.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::PostgresStore;
use crate::rows;
use crate::{
    SourcePut, SourceRejectedPage, SourceRejection, SourceShard, SourceStore, StoreError,
    StoredSource,
};

/// Creates the source at revision 1, or raises the revision when the text differs; returns no
/// row when it is the same (and still locks the row, so that the revision read next in the
/// transaction is the one the put found).
const PUT_SOURCE: &str = "INSERT INTO sources (name, definition, revision, updated_at) \
     VALUES ($1, $2, 1, $3) \
     ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
     revision = sources.revision + 1, updated_at = excluded.updated_at \
     WHERE sources.definition IS DISTINCT FROM excluded.definition \
     RETURNING revision";
const SELECT_REVISION: &str = "SELECT revision FROM sources WHERE name = $1";
const SELECT_SOURCE: &str =
    "SELECT name, definition, revision, updated_at FROM sources WHERE name = $1";
const SELECT_SOURCES: &str =
    "SELECT name, definition, revision, updated_at FROM sources ORDER BY name";
/// The definition first: see the module doc.
const DELETE_SOURCE: [&str; 4] = [
    "DELETE FROM sources WHERE name = $1",
    "DELETE FROM source_shards WHERE source = $1",
    "DELETE FROM source_rejected WHERE source = $1",
    "DELETE FROM source_rejected_drops WHERE source = $1",
];
/// Takes the claim when the source is defined and there is no claim, or its lease expired (`$5`
/// is now), or it is the same owner's. A racer's insert waits for the first one's commit, then
/// its `WHERE` is checked against the committed claim: it finds a live lease of another owner
/// and returns no row.
const CLAIM_SOURCE: &str = "WITH defined AS (\
       SELECT name FROM sources WHERE name = $1 FOR KEY SHARE) \
     INSERT INTO source_shards (source, shard, owner, epoch, lease_until_ms, status) \
     SELECT name, $2::int8, $3::text, 1, $4::int8, NULL FROM defined \
     ON CONFLICT (source, shard) DO UPDATE SET owner = excluded.owner, \
     epoch = source_shards.epoch + 1, lease_until_ms = excluded.lease_until_ms \
     WHERE source_shards.lease_until_ms <= $5 OR source_shards.owner = excluded.owner \
     RETURNING epoch";
const RENEW_SOURCE: &str = "UPDATE source_shards \
     SET lease_until_ms = $4, status = coalesce($5::text, status) \
     WHERE source = $1 AND shard = $2 AND epoch = $3";
const RELEASE_SOURCE: &str = "UPDATE source_shards SET lease_until_ms = $4 \
     WHERE source = $1 AND shard = $2 AND epoch = $3";
const SELECT_SHARDS: &str = "SELECT shard, owner, epoch, lease_until_ms, status \
     FROM source_shards WHERE source = $1 ORDER BY shard";
const LOCK_SOURCE: &str = "SELECT 1 FROM sources WHERE name = $1 FOR NO KEY UPDATE";
/// In the order given (ids follow `ORDER BY n`). Skips a position already kept (the unique key,
/// also for a repeat within the call).
const RECORD: &str = "INSERT INTO source_rejected (source, position, reason, at) \
     SELECT $1, e.p, e.r, e.a \
     FROM unnest($2::text[], $3::text[], $4::int8[]) WITH ORDINALITY AS e(p, r, a, n) \
     ORDER BY e.n \
     ON CONFLICT (source, position) DO NOTHING";
/// Drops every rejection of the source but the newest `$2` and counts them, in one statement
/// (its snapshot sees what this transaction just recorded).
const DROP_OLDEST: &str = "WITH gone AS (\
       DELETE FROM source_rejected WHERE id IN (\
         SELECT id FROM source_rejected WHERE source = $1 ORDER BY id DESC OFFSET $2) \
       RETURNING 1) \
     INSERT INTO source_rejected_drops (source, dropped) \
     SELECT $1, count(*) FROM gone HAVING count(*) > 0 \
     ON CONFLICT (source) DO UPDATE SET \
       dropped = source_rejected_drops.dropped + excluded.dropped";
/// The count of dropped rejections and a page, in one statement (one snapshot). Always one row
/// at least: with no rejections on the page, a single row whose other columns are NULL carries
/// the count.
const SELECT_PAGE: &str = "SELECT \
       (SELECT coalesce(sum(dropped), 0)::int8 FROM source_rejected_drops WHERE source = $1), \
       e.id, e.position, e.reason, e.at \
     FROM (SELECT 1) one LEFT JOIN LATERAL (\
       SELECT id, position, reason, at FROM source_rejected \
       WHERE source = $1 AND id > $2 ORDER BY id LIMIT $3) e ON true \
     ORDER BY e.id";

/// A row of (name, definition, revision, updated_at).
fn source_row(row: &Row) -> Result<StoredSource, StoreError> {
    rows::stored_source_from_row(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    )
}

#[async_trait]
impl SourceStore for PostgresStore {
    async fn put_source(
        &self,
        name: &str,
        definition: &str,
        now: DateTime<Utc>,
    ) -> Result<(SourcePut, u64), StoreError> {
        let now = rows::to_micros(now);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (put, select) = tokio::try_join!(
            biased;
            tx.prepare_cached(PUT_SOURCE),
            tx.prepare_cached(SELECT_REVISION),
        )?;
        // Pipelined; the read runs after the put, on the row the put wrote or locked.
        let (written, stored) = tokio::try_join!(
            biased;
            async { tx.query_opt(&put, &[&name, &definition, &now]).await },
            async { tx.query_one(&select, &[&name]).await },
        )?;
        tx.commit().await?;
        let (put, revision): (SourcePut, i64) = match written {
            Some(row) => match row.try_get(0)? {
                1 => (SourcePut::Created, 1),
                revision => (SourcePut::Updated, revision),
            },
            None => (SourcePut::Unchanged, stored.try_get(0)?),
        };
        Ok((put, rows::to_u64("source revision", revision)?))
    }

    async fn source(&self, name: &str) -> Result<Option<StoredSource>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_SOURCE).await?;
        client
            .query_opt(&stmt, &[&name])
            .await?
            .as_ref()
            .map(source_row)
            .transpose()
    }

    async fn sources(&self) -> Result<Vec<StoredSource>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_SOURCES).await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(source_row)
            .collect()
    }

    async fn delete_source(&self, name: &str) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let [definition, shards, rejected, drops] = DELETE_SOURCE;
        let (definition, shards, rejected, drops) = tokio::try_join!(
            biased;
            tx.prepare_cached(definition),
            tx.prepare_cached(shards),
            tx.prepare_cached(rejected),
            tx.prepare_cached(drops),
        )?;
        // Pipelined; the server runs them in this order.
        let (deleted, ..) = tokio::try_join!(
            biased;
            async { tx.execute(&definition, &[&name]).await },
            async { tx.execute(&shards, &[&name]).await },
            async { tx.execute(&rejected, &[&name]).await },
            async { tx.execute(&drops, &[&name]).await },
        )?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn claim_source(
        &self,
        name: &str,
        shard: u32,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let lease_until = now_ms.saturating_add(lease_ms);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(CLAIM_SOURCE).await?;
        client
            .query_opt(
                &stmt,
                &[&name, &i64::from(shard), &owner, &lease_until, &now_ms],
            )
            .await?
            .map(|row| rows::to_u64("source shard epoch", row.try_get(0)?))
            .transpose()
    }

    async fn renew_source(
        &self,
        name: &str,
        shard: u32,
        epoch: u64,
        now_ms: i64,
        lease_ms: i64,
        status: Option<&str>,
    ) -> Result<bool, StoreError> {
        let epoch = rows::to_i64("source shard epoch", epoch)?;
        let lease_until = now_ms.saturating_add(lease_ms);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RENEW_SOURCE).await?;
        let renewed = client
            .execute(
                &stmt,
                &[&name, &i64::from(shard), &epoch, &lease_until, &status],
            )
            .await?;
        Ok(renewed > 0)
    }

    async fn release_source(&self, name: &str, shard: u32, epoch: u64) -> Result<bool, StoreError> {
        let epoch = rows::to_i64("source shard epoch", epoch)?;
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RELEASE_SOURCE).await?;
        let released = client
            .execute(&stmt, &[&name, &i64::from(shard), &epoch, &i64::MIN])
            .await?;
        Ok(released > 0)
    }

    async fn source_shards(&self, name: &str) -> Result<Vec<SourceShard>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_SHARDS).await?;
        client
            .query(&stmt, &[&name])
            .await?
            .iter()
            .map(|row| {
                rows::source_shard_from_row(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                )
            })
            .collect()
    }

    async fn record_source_rejected(
        &self,
        name: &str,
        entries: &[SourceRejection],
        keep: usize,
    ) -> Result<(), StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let positions: Vec<&str> = entries.iter().map(|e| e.position.as_str()).collect();
        let reasons: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
        let at: Vec<i64> = entries.iter().map(|e| rows::to_micros(e.at)).collect();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (lock, record, drop_oldest) = tokio::try_join!(
            biased;
            tx.prepare_cached(LOCK_SOURCE),
            tx.prepare_cached(RECORD),
            tx.prepare_cached(DROP_OLDEST),
        )?;
        // The lock is awaited alone: without a definition nothing is recorded (and the
        // transaction rolls back as it drops).
        if tx.query_opt(&lock, &[&name]).await?.is_none() {
            return Ok(());
        }
        // Pipelined; the server runs them in this order, under the lock.
        tokio::try_join!(
            biased;
            async { tx.execute(&record, &[&name, &positions, &reasons, &at]).await },
            async { tx.execute(&drop_oldest, &[&name, &keep]).await },
        )?;
        tx.commit().await?;
        Ok(())
    }

    async fn source_rejected(
        &self,
        name: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<SourceRejectedPage, StoreError> {
        // Ids start at 1; none is above i64::MAX, so clamping keeps the answer (empty) right.
        let after = after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_PAGE).await?;
        let found = client.query(&stmt, &[&name, &after, &limit]).await?;
        let dropped = match found.first() {
            Some(row) => rows::to_u64("source rejections dropped", row.try_get(0)?)?,
            None => {
                return Err(StoreError::Corrupt {
                    what: "source rejections",
                    detail: "the page query returned no row".into(),
                });
            }
        };
        let mut entries = Vec::with_capacity(found.len());
        for row in &found {
            let id: Option<i64> = row.try_get(1)?;
            let Some(id) = id else { continue };
            entries.push(rows::source_rejection_from_row(
                id,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            )?);
        }
        Ok(SourceRejectedPage { entries, dropped })
    }
}
