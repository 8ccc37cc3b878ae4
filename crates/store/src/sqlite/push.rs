//! The push concern on SQLite. Every write runs on the one writer thread, those that read
//! before they write in one `BEGIN IMMEDIATE` transaction, which takes the write lock before it
//! reads: a put's compare-and-set, a claim's, a progress write's check of the epoch, a replay's
//! fence and a delete's removal from every table cannot interleave with another write, also
//! from another process on the same file.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::SqliteStore;
use crate::push::put_outcome;
use crate::rows::{self, PushAttemptRow};
use crate::{
    PushAttempt, PushClaim, PushKind, PushProgress, PushPut, PushStore, StoreError, StoredPush,
};

/// Creates the target at revision 1 (`expected` none or 0), or raises the revision when the
/// text differs (`expected` none); returns no row when it changed nothing, so that a returned
/// revision of 1 means created. `?5` is `expected`: with 0 no stored revision matches it.
const PUT_PUSH: &str = "INSERT INTO push_targets \
     (kind, name, definition, revision, created_at, updated_at) \
     VALUES (?1, ?2, ?3, 1, ?4, ?4) \
     ON CONFLICT (kind, name) DO UPDATE SET definition = excluded.definition, \
     revision = push_targets.revision + 1, updated_at = excluded.updated_at \
     WHERE push_targets.definition IS NOT excluded.definition \
     AND (?5 IS NULL OR push_targets.revision = ?5) \
     RETURNING revision";
/// Raises the revision when the text differs and the revision is `?5` (`expected` above 0: a
/// target that does not exist is not created).
const UPDATE_PUSH: &str = "UPDATE push_targets SET definition = ?3, revision = revision + 1, \
     updated_at = ?4 \
     WHERE kind = ?1 AND name = ?2 AND definition IS NOT ?3 AND revision = ?5 \
     RETURNING revision";
const SELECT_PUSH: &str = "SELECT name, definition, revision, created_at, updated_at \
     FROM push_targets WHERE kind = ?1 AND name = ?2";
const SELECT_PUSHES: &str = "SELECT name, definition, revision, created_at, updated_at \
     FROM push_targets WHERE kind = ?1 ORDER BY name";
const PUSH_EXISTS: &str = "SELECT 1 FROM push_targets WHERE kind = ?1 AND name = ?2";
/// Keeps the deleted claim's epoch first, then the rest; the definition last.
const DELETE_PUSH: [&str; 5] = [
    "INSERT INTO push_epochs (kind, name, epoch) \
     SELECT kind, name, epoch FROM push_claims WHERE kind = ?1 AND name = ?2 \
     ON CONFLICT (kind, name) DO UPDATE SET epoch = max(push_epochs.epoch, excluded.epoch)",
    "DELETE FROM push_claims WHERE kind = ?1 AND name = ?2",
    "DELETE FROM push_progress WHERE kind = ?1 AND name = ?2",
    "DELETE FROM push_attempts WHERE kind = ?1 AND name = ?2",
    "DELETE FROM push_targets WHERE kind = ?1 AND name = ?2",
];
/// Takes the claim when the target is defined and there is no claim (epoch: one above what a
/// deleted incarnation of the target used), or its lease expired (`?5` is now), or it is the
/// same owner's; otherwise inserts nothing or leaves the row alone, and RETURNING yields
/// nothing. The `WHERE` also lets SQLite parse the upsert.
const CLAIM_PUSH: &str = "INSERT INTO push_claims \
     (kind, name, owner, epoch, lease_until_ms, status) \
     SELECT ?1, ?2, ?3, coalesce(\
       (SELECT epoch FROM push_epochs WHERE kind = ?1 AND name = ?2), 0) + 1, ?4, NULL \
     WHERE EXISTS (SELECT 1 FROM push_targets WHERE kind = ?1 AND name = ?2) \
     ON CONFLICT (kind, name) DO UPDATE SET owner = excluded.owner, \
     epoch = push_claims.epoch + 1, lease_until_ms = excluded.lease_until_ms \
     WHERE push_claims.lease_until_ms <= ?5 OR push_claims.owner = excluded.owner \
     RETURNING epoch";
const RENEW_PUSH: &str = "UPDATE push_claims \
     SET lease_until_ms = ?4, status = coalesce(?5, status) \
     WHERE kind = ?1 AND name = ?2 AND epoch = ?3";
const RELEASE_PUSH: &str = "UPDATE push_claims SET lease_until_ms = ?4 \
     WHERE kind = ?1 AND name = ?2 AND epoch = ?3";
const SELECT_CLAIMS: &str = "SELECT name, owner, epoch, lease_until_ms, status \
     FROM push_claims WHERE kind = ?1 ORDER BY name";
const HOLDS_EPOCH: &str = "SELECT 1 FROM push_claims WHERE kind = ?1 AND name = ?2 AND epoch = ?3";
const FENCE: &str = "UPDATE push_claims SET epoch = epoch + 1, lease_until_ms = ?3 \
     WHERE kind = ?1 AND name = ?2";
const WRITE_PROGRESS: &str = "INSERT INTO push_progress \
     (kind, name, dataset, tenant, next_seq, live_from, state, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (kind, name, dataset, tenant) DO UPDATE SET next_seq = excluded.next_seq, \
     live_from = excluded.live_from, state = excluded.state, updated_at = excluded.updated_at";
const SELECT_PROGRESS: &str = "SELECT dataset, tenant, next_seq, live_from, state, updated_at \
     FROM push_progress WHERE kind = ?1 AND name = ?2 ORDER BY dataset, tenant";
const RECORD: &str = "INSERT INTO push_attempts \
     (kind, name, at, message, dataset, tenant, records, status, latency_ms, error) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
/// Every attempt of the target but the newest `?3`.
const DROP_OLDEST: &str = "DELETE FROM push_attempts WHERE id IN (\
     SELECT id FROM push_attempts WHERE kind = ?1 AND name = ?2 \
     ORDER BY id DESC LIMIT -1 OFFSET ?3)";
const SELECT_ATTEMPTS: &str = "SELECT at, message, dataset, tenant, records, status, latency_ms, \
     error FROM push_attempts WHERE kind = ?1 AND name = ?2 ORDER BY id DESC LIMIT ?3";

/// A row of (name, definition, revision, created_at, updated_at).
type PushRow = (String, String, i64, i64, i64);

fn push_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PushRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn stored_push(kind: PushKind, row: PushRow) -> Result<StoredPush, StoreError> {
    let (name, definition, revision, created_at, updated_at) = row;
    rows::stored_push_from_row(kind, name, definition, revision, created_at, updated_at)
}

fn select_push(
    conn: &Connection,
    kind: PushKind,
    name: &str,
) -> Result<Option<StoredPush>, StoreError> {
    conn.prepare_cached(SELECT_PUSH)?
        .query_row(params![kind.as_str(), name], push_row)
        .optional()?
        .map(|row| stored_push(kind, row))
        .transpose()
}

fn exists(tx: &Transaction<'_>, kind: PushKind, name: &str) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached(PUSH_EXISTS)?
        .query_row(params![kind.as_str(), name], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Checks every entry's numbers before anything is written.
fn progress_rows(entries: &[PushProgress]) -> Result<Vec<(i64, i64, i64)>, StoreError> {
    entries.iter().map(rows::push_progress_to_row).collect()
}

fn write_progress(
    tx: &Transaction<'_>,
    kind: PushKind,
    name: &str,
    entries: &[PushProgress],
    numbers: &[(i64, i64, i64)],
) -> Result<(), StoreError> {
    let mut write = tx.prepare_cached(WRITE_PROGRESS)?;
    for (e, (next_seq, live_from, updated_at)) in entries.iter().zip(numbers) {
        write.execute(params![
            kind.as_str(),
            name,
            e.dataset.as_str(),
            e.tenant.as_str(),
            next_seq,
            live_from,
            e.state,
            updated_at
        ])?;
    }
    Ok(())
}

fn put_in_transaction(
    conn: &mut Connection,
    kind: PushKind,
    name: &str,
    definition: &str,
    expected: Option<u64>,
    now: i64,
) -> Result<(PushPut, Option<StoredPush>), StoreError> {
    // No stored revision is above i64::MAX: clamping keeps the answer (a conflict) right.
    let expected_param = expected.map(|r| i64::try_from(r).unwrap_or(i64::MAX));
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let statement = match expected {
        Some(r) if r > 0 => UPDATE_PUSH,
        _ => PUT_PUSH,
    };
    let written: Option<i64> = tx
        .prepare_cached(statement)?
        .query_row(
            params![kind.as_str(), name, definition, now, expected_param],
            |row| row.get(0),
        )
        .optional()?;
    let stored = select_push(&tx, kind, name)?;
    tx.commit()?;
    let put = put_outcome(written, stored.as_ref(), definition, expected);
    Ok((put, stored))
}

#[async_trait]
impl PushStore for SqliteStore {
    async fn put_push(
        &self,
        kind: PushKind,
        name: &str,
        definition: &str,
        expected: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<(PushPut, Option<StoredPush>), StoreError> {
        let (name, definition) = (name.to_owned(), definition.to_owned());
        let now = rows::to_micros(now);
        self.write(move |conn| put_in_transaction(conn, kind, &name, &definition, expected, now))
            .await
    }

    async fn push(&self, kind: PushKind, name: &str) -> Result<Option<StoredPush>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| select_push(conn, kind, &name)).await
    }

    async fn pushes(&self, kind: PushKind) -> Result<Vec<StoredPush>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(SELECT_PUSHES)?
                .query_map([kind.as_str()], push_row)?
                .map(|row| stored_push(kind, row?))
                .collect()
        })
        .await
    }

    async fn delete_push(&self, kind: PushKind, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut deleted = 0;
            for statement in DELETE_PUSH {
                deleted = tx
                    .prepare_cached(statement)?
                    .execute(params![kind.as_str(), name])?;
            }
            tx.commit()?;
            // The last statement deletes the definition.
            Ok(deleted > 0)
        })
        .await
    }

    async fn claim_push(
        &self,
        kind: PushKind,
        name: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        let lease_until = now_ms.saturating_add(lease_ms);
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let epoch: Option<i64> = tx
                .prepare_cached(CLAIM_PUSH)?
                .query_row(
                    params![kind.as_str(), name, owner, lease_until, now_ms],
                    |row| row.get(0),
                )
                .optional()?;
            tx.commit()?;
            epoch
                .map(|epoch| rows::to_u64("push claim epoch", epoch))
                .transpose()
        })
        .await
    }

    async fn renew_push(
        &self,
        kind: PushKind,
        name: &str,
        epoch: u64,
        now_ms: i64,
        lease_ms: i64,
        status: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (name, status) = (name.to_owned(), status.map(str::to_owned));
        let epoch = rows::to_i64("push claim epoch", epoch)?;
        let lease_until = now_ms.saturating_add(lease_ms);
        self.write(move |conn| {
            let renewed = conn.prepare_cached(RENEW_PUSH)?.execute(params![
                kind.as_str(),
                name,
                epoch,
                lease_until,
                status
            ])?;
            Ok(renewed > 0)
        })
        .await
    }

    async fn release_push(
        &self,
        kind: PushKind,
        name: &str,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let name = name.to_owned();
        let epoch = rows::to_i64("push claim epoch", epoch)?;
        self.write(move |conn| {
            let released = conn.prepare_cached(RELEASE_PUSH)?.execute(params![
                kind.as_str(),
                name,
                epoch,
                i64::MIN
            ])?;
            Ok(released > 0)
        })
        .await
    }

    async fn push_claims(&self, kind: PushKind) -> Result<Vec<PushClaim>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(SELECT_CLAIMS)?
                .query_map([kind.as_str()], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })?
                .map(|row| {
                    let (name, owner, epoch, lease_until_ms, status) = row?;
                    rows::push_claim_from_row(name, owner, epoch, lease_until_ms, status)
                })
                .collect()
        })
        .await
    }

    async fn push_progress(
        &self,
        kind: PushKind,
        name: &str,
    ) -> Result<Vec<PushProgress>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_PROGRESS)?
                .query_map(params![kind.as_str(), name], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ))
                })?
                .map(|row| {
                    let (dataset, tenant, next_seq, live_from, state, updated_at) = row?;
                    rows::push_progress_from_row(
                        dataset, tenant, next_seq, live_from, state, updated_at,
                    )
                })
                .collect()
        })
        .await
    }

    async fn set_push_progress(
        &self,
        kind: PushKind,
        name: &str,
        epoch: u64,
        entries: &[PushProgress],
    ) -> Result<bool, StoreError> {
        let (name, entries) = (name.to_owned(), entries.to_vec());
        let epoch = rows::to_i64("push claim epoch", epoch)?;
        let numbers = progress_rows(&entries)?;
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let held = tx
                .prepare_cached(HOLDS_EPOCH)?
                .query_row(params![kind.as_str(), name, epoch], |_| Ok(()))
                .optional()?
                .is_some();
            if !held {
                return Ok(false);
            }
            write_progress(&tx, kind, &name, &entries, &numbers)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn replace_push_progress(
        &self,
        kind: PushKind,
        name: &str,
        entries: &[PushProgress],
    ) -> Result<bool, StoreError> {
        let (name, entries) = (name.to_owned(), entries.to_vec());
        let numbers = progress_rows(&entries)?;
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !exists(&tx, kind, &name)? {
                return Ok(false);
            }
            // A target never claimed has no holder to fence: whoever claims it first reads
            // these entries.
            tx.prepare_cached(FENCE)?
                .execute(params![kind.as_str(), name, i64::MIN])?;
            write_progress(&tx, kind, &name, &entries, &numbers)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn record_push_attempts(
        &self,
        kind: PushKind,
        name: &str,
        attempts: &[PushAttempt],
        keep: usize,
    ) -> Result<(), StoreError> {
        let name = name.to_owned();
        let attempts: Vec<PushAttemptRow> = attempts.iter().map(PushAttemptRow::new).collect();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !exists(&tx, kind, &name)? {
                return Ok(());
            }
            {
                let mut record = tx.prepare_cached(RECORD)?;
                for a in &attempts {
                    record.execute(params![
                        kind.as_str(),
                        name,
                        a.at,
                        a.message,
                        a.dataset,
                        a.tenant,
                        a.records,
                        a.status,
                        a.latency_ms,
                        a.error
                    ])?;
                }
            }
            tx.prepare_cached(DROP_OLDEST)?
                .execute(params![kind.as_str(), name, keep])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn push_attempts(
        &self,
        kind: PushKind,
        name: &str,
        limit: usize,
    ) -> Result<Vec<PushAttempt>, StoreError> {
        let name = name.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            conn.prepare_cached(SELECT_ATTEMPTS)?
                .query_map(params![kind.as_str(), name, limit], |row| {
                    Ok(PushAttemptRow {
                        at: row.get(0)?,
                        message: row.get(1)?,
                        dataset: row.get(2)?,
                        tenant: row.get(3)?,
                        records: row.get(4)?,
                        status: row.get(5)?,
                        latency_ms: row.get(6)?,
                        error: row.get(7)?,
                    })
                })?
                .map(|row| row?.into_attempt())
                .collect()
        })
        .await
    }
}
