//! The sources concern on SQLite. Every write runs on the one writer thread in one
//! `BEGIN IMMEDIATE` transaction, which takes the write lock before it reads: a claim's
//! compare-and-set, a recording's check that the source exists and the drops it causes, and a
//! delete's removal from every table cannot interleave with another write, also from another
//! process on the same file.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use crate::rows;
use crate::{
    SourcePut, SourceRejectedPage, SourceRejection, SourceShard, SourceStore, StoreError,
    StoredSource,
};

/// Creates the source at revision 1, or raises the revision when the text differs; returns no
/// row when it is the same, so that a returned revision of 1 means created.
const PUT_SOURCE: &str = "INSERT INTO sources (name, definition, revision, updated_at) \
     VALUES (?1, ?2, 1, ?3) \
     ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
     revision = sources.revision + 1, updated_at = excluded.updated_at \
     WHERE sources.definition IS NOT excluded.definition \
     RETURNING revision";
const SELECT_REVISION: &str = "SELECT revision FROM sources WHERE name = ?1";
const SELECT_SOURCE: &str =
    "SELECT name, definition, revision, updated_at FROM sources WHERE name = ?1";
const SELECT_SOURCES: &str =
    "SELECT name, definition, revision, updated_at FROM sources ORDER BY name";
const DELETE_SOURCE: [&str; 4] = [
    "DELETE FROM source_shards WHERE source = ?1",
    "DELETE FROM source_rejected WHERE source = ?1",
    "DELETE FROM source_rejected_drops WHERE source = ?1",
    "DELETE FROM sources WHERE name = ?1",
];
/// Takes the claim when the source is defined and there is no claim, or its lease expired
/// (`?5` is now), or it is the same owner's; otherwise inserts nothing or leaves the row alone,
/// and RETURNING yields nothing. The `WHERE` also lets SQLite parse the upsert.
const CLAIM_SOURCE: &str = "INSERT INTO source_shards \
     (source, shard, owner, epoch, lease_until_ms, status) \
     SELECT ?1, ?2, ?3, 1, ?4, NULL WHERE EXISTS (SELECT 1 FROM sources WHERE name = ?1) \
     ON CONFLICT (source, shard) DO UPDATE SET owner = excluded.owner, \
     epoch = source_shards.epoch + 1, lease_until_ms = excluded.lease_until_ms \
     WHERE source_shards.lease_until_ms <= ?5 OR source_shards.owner = excluded.owner \
     RETURNING epoch";
const RENEW_SOURCE: &str = "UPDATE source_shards \
     SET lease_until_ms = ?4, status = coalesce(?5, status) \
     WHERE source = ?1 AND shard = ?2 AND epoch = ?3";
const RELEASE_SOURCE: &str = "UPDATE source_shards SET lease_until_ms = ?4 \
     WHERE source = ?1 AND shard = ?2 AND epoch = ?3";
const SELECT_SHARDS: &str = "SELECT shard, owner, epoch, lease_until_ms, status \
     FROM source_shards WHERE source = ?1 ORDER BY shard";
const SOURCE_EXISTS: &str = "SELECT 1 FROM sources WHERE name = ?1";
const RECORD: &str = "INSERT INTO source_rejected (source, position, reason, at) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (source, position) DO NOTHING";
/// Every rejection of the source but the newest `?2`.
const DROP_OLDEST: &str = "DELETE FROM source_rejected WHERE source = ?1 AND id IN (\
     SELECT id FROM source_rejected WHERE source = ?1 ORDER BY id DESC LIMIT -1 OFFSET ?2)";
const COUNT_DROPS: &str = "INSERT INTO source_rejected_drops (source, dropped) VALUES (?1, ?2) \
     ON CONFLICT (source) DO UPDATE SET dropped = dropped + excluded.dropped";
const SELECT_PAGE: &str = "SELECT id, position, reason, at FROM source_rejected \
     WHERE source = ?1 AND id > ?2 ORDER BY id LIMIT ?3";
const SELECT_DROPPED: &str =
    "SELECT coalesce(sum(dropped), 0) FROM source_rejected_drops WHERE source = ?1";

fn source_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, i64, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn put_in_transaction(
    conn: &mut Connection,
    name: &str,
    definition: &str,
    now: i64,
) -> Result<(SourcePut, u64), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let written: Option<i64> = tx
        .prepare_cached(PUT_SOURCE)?
        .query_row(params![name, definition, now], |row| row.get(0))
        .optional()?;
    let put = match written {
        Some(1) => (SourcePut::Created, 1),
        Some(revision) => (SourcePut::Updated, revision),
        None => {
            let revision: i64 = tx
                .prepare_cached(SELECT_REVISION)?
                .query_row([name], |row| row.get(0))?;
            (SourcePut::Unchanged, revision)
        }
    };
    tx.commit()?;
    Ok((put.0, rows::to_u64("source revision", put.1)?))
}

fn record_in_transaction(
    conn: &mut Connection,
    name: &str,
    entries: &[SourceRejection],
    keep: i64,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let defined = tx
        .prepare_cached(SOURCE_EXISTS)?
        .query_row([name], |_| Ok(()))
        .optional()?
        .is_some();
    if !defined {
        return Ok(());
    }
    {
        let mut record = tx.prepare_cached(RECORD)?;
        for e in entries {
            record.execute(params![name, e.position, e.reason, rows::to_micros(e.at)])?;
        }
    }
    let dropped = tx
        .prepare_cached(DROP_OLDEST)?
        .execute(params![name, keep])?;
    if dropped > 0 {
        tx.prepare_cached(COUNT_DROPS)?
            .execute(params![name, dropped as i64])?;
    }
    tx.commit()?;
    Ok(())
}

#[async_trait]
impl SourceStore for SqliteStore {
    async fn put_source(
        &self,
        name: &str,
        definition: &str,
        now: DateTime<Utc>,
    ) -> Result<(SourcePut, u64), StoreError> {
        let (name, definition) = (name.to_owned(), definition.to_owned());
        let now = rows::to_micros(now);
        self.write(move |conn| put_in_transaction(conn, &name, &definition, now))
            .await
    }

    async fn source(&self, name: &str) -> Result<Option<StoredSource>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_SOURCE)?
                .query_row([name], source_row)
                .optional()?
                .map(|(name, definition, revision, updated_at)| {
                    rows::stored_source_from_row(name, definition, revision, updated_at)
                })
                .transpose()
        })
        .await
    }

    async fn sources(&self) -> Result<Vec<StoredSource>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(SELECT_SOURCES)?
                .query_map([], source_row)?
                .map(|row| {
                    let (name, definition, revision, updated_at) = row?;
                    rows::stored_source_from_row(name, definition, revision, updated_at)
                })
                .collect()
        })
        .await
    }

    async fn delete_source(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut deleted = 0;
            for statement in DELETE_SOURCE {
                deleted = tx.prepare_cached(statement)?.execute([&name])?;
            }
            tx.commit()?;
            // The last statement deletes the definition.
            Ok(deleted > 0)
        })
        .await
    }

    async fn claim_source(
        &self,
        name: &str,
        shard: u32,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        let lease_until = now_ms.saturating_add(lease_ms);
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let epoch: Option<i64> = tx
                .prepare_cached(CLAIM_SOURCE)?
                .query_row(
                    params![name, i64::from(shard), owner, lease_until, now_ms],
                    |row| row.get(0),
                )
                .optional()?;
            tx.commit()?;
            epoch
                .map(|epoch| rows::to_u64("source shard epoch", epoch))
                .transpose()
        })
        .await
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
        let (name, status) = (name.to_owned(), status.map(str::to_owned));
        let epoch = rows::to_i64("source shard epoch", epoch)?;
        let lease_until = now_ms.saturating_add(lease_ms);
        self.write(move |conn| {
            let renewed = conn.prepare_cached(RENEW_SOURCE)?.execute(params![
                name,
                i64::from(shard),
                epoch,
                lease_until,
                status
            ])?;
            Ok(renewed > 0)
        })
        .await
    }

    async fn release_source(&self, name: &str, shard: u32, epoch: u64) -> Result<bool, StoreError> {
        let name = name.to_owned();
        let epoch = rows::to_i64("source shard epoch", epoch)?;
        self.write(move |conn| {
            let released = conn.prepare_cached(RELEASE_SOURCE)?.execute(params![
                name,
                i64::from(shard),
                epoch,
                i64::MIN
            ])?;
            Ok(released > 0)
        })
        .await
    }

    async fn source_shards(&self, name: &str) -> Result<Vec<SourceShard>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_SHARDS)?
                .query_map([name], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })?
                .map(|row| {
                    let (shard, owner, epoch, lease_until_ms, status) = row?;
                    rows::source_shard_from_row(shard, owner, epoch, lease_until_ms, status)
                })
                .collect()
        })
        .await
    }

    async fn record_source_rejected(
        &self,
        name: &str,
        entries: &[SourceRejection],
        keep: usize,
    ) -> Result<(), StoreError> {
        let (name, entries) = (name.to_owned(), entries.to_vec());
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.write(move |conn| record_in_transaction(conn, &name, &entries, keep))
            .await
    }

    async fn source_rejected(
        &self,
        name: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<SourceRejectedPage, StoreError> {
        let name = name.to_owned();
        // Ids start at 1; none is above i64::MAX, so clamping keeps the answer (empty) right.
        let after = after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            // One read transaction: the rejections and the count of dropped ones agree.
            let tx = conn.unchecked_transaction()?;
            let entries = tx
                .prepare_cached(SELECT_PAGE)?
                .query_map(params![name, after, limit], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .map(|row| {
                    let (id, position, reason, at) = row?;
                    rows::source_rejection_from_row(id, position, reason, at)
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let dropped: i64 = tx
                .prepare_cached(SELECT_DROPPED)?
                .query_row([&name], |row| row.get(0))?;
            tx.finish()?;
            Ok(SourceRejectedPage {
                entries,
                dropped: rows::to_u64("source rejections dropped", dropped)?,
            })
        })
        .await
    }
}
