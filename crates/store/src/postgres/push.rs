//! The push concern on PostgreSQL.
//!
//! A put is one upsert (or, with a revision expected, one update) whose `WHERE` is the
//! compare-and-set; a claim is one upsert whose `WHERE` only lets a free claim (or its own
//! owner's) be taken: racers wait on the row lock and re-check the condition on the winner's
//! version, so exactly one wins. Renewals and releases are updates on the epoch.
//!
//! The target's row in `push_targets` orders everything else against a delete, which deletes it
//! before the target's other rows: a claim locks it `FOR KEY SHARE` in the same statement,
//! recording attempts `FOR NO KEY UPDATE` first, and a replay `FOR UPDATE` first (which a claim
//! waits for, and which waits for a claim: a claim committed before the replay is fenced by it,
//! and one after it reads its entries). A progress write under a claim locks the claim's row
//! `FOR SHARE` first, which a takeover or fence (updates of that row) waits for and which waits
//! for them: the write either commits before the epoch moves or finds another epoch and writes
//! nothing. Whoever comes second waits for the first to commit; a write that comes after a
//! delete finds no row and changes nothing, and a delete that comes after it sees (and
//! deletes) what it wrote, since each of its statements reads anew.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::{Row, Statement};

use super::PostgresStore;
use crate::push::put_outcome;
use crate::rows::{self, PushAttemptRow};
use crate::{
    PushAttempt, PushClaim, PushKind, PushProgress, PushPut, PushStore, StoreError, StoredPush,
};

/// Creates the target at revision 1 (`expected` none or 0), or raises the revision when the
/// text differs (`expected` none); returns no row when it changed nothing (and still locks an
/// existing row, so that the target read next in the transaction is the one the put found).
/// `$5` is `expected`: with 0 no stored revision matches it.
const PUT_PUSH: &str = "INSERT INTO push_targets \
     (kind, name, definition, revision, created_at, updated_at) \
     VALUES ($1, $2, $3, 1, $4, $4) \
     ON CONFLICT (kind, name) DO UPDATE SET definition = excluded.definition, \
     revision = push_targets.revision + 1, updated_at = excluded.updated_at \
     WHERE push_targets.definition IS DISTINCT FROM excluded.definition \
     AND ($5::int8 IS NULL OR push_targets.revision = $5::int8) \
     RETURNING revision";
/// Raises the revision when the text differs and the revision is `$5` (`expected` above 0: a
/// target that does not exist is not created).
const UPDATE_PUSH: &str = "UPDATE push_targets SET definition = $3, revision = revision + 1, \
     updated_at = $4 \
     WHERE kind = $1 AND name = $2 AND definition IS DISTINCT FROM $3 AND revision = $5 \
     RETURNING revision";
const SELECT_PUSH: &str = "SELECT name, definition, revision, created_at, updated_at \
     FROM push_targets WHERE kind = $1 AND name = $2";
const SELECT_PUSHES: &str = "SELECT name, definition, revision, created_at, updated_at \
     FROM push_targets WHERE kind = $1 ORDER BY name";
/// The definition first (see the module doc); the claim's epoch is kept for the target's next
/// incarnation as the claim goes.
const DELETE_PUSH: [&str; 4] = [
    "DELETE FROM push_targets WHERE kind = $1 AND name = $2",
    "WITH gone AS (\
       DELETE FROM push_claims WHERE kind = $1 AND name = $2 RETURNING kind, name, epoch) \
     INSERT INTO push_epochs (kind, name, epoch) SELECT kind, name, epoch FROM gone \
     ON CONFLICT (kind, name) DO UPDATE SET \
       epoch = greatest(push_epochs.epoch, excluded.epoch)",
    "DELETE FROM push_progress WHERE kind = $1 AND name = $2",
    "DELETE FROM push_attempts WHERE kind = $1 AND name = $2",
];
/// Takes the claim when the target is defined and there is no claim (epoch: one above what a
/// deleted incarnation of the target used), or its lease expired (`$5` is now), or it is the
/// same owner's. A racer's insert waits for the first one's commit, then its `WHERE` is checked
/// against the committed claim: it finds a live lease of another owner and returns no row.
const CLAIM_PUSH: &str = "WITH defined AS (\
       SELECT kind, name FROM push_targets WHERE kind = $1 AND name = $2 FOR KEY SHARE) \
     INSERT INTO push_claims (kind, name, owner, epoch, lease_until_ms, status) \
     SELECT kind, name, $3::text, coalesce(\
       (SELECT e.epoch FROM push_epochs e WHERE e.kind = $1 AND e.name = $2), 0) + 1, \
       $4::int8, NULL FROM defined \
     ON CONFLICT (kind, name) DO UPDATE SET owner = excluded.owner, \
     epoch = push_claims.epoch + 1, lease_until_ms = excluded.lease_until_ms \
     WHERE push_claims.lease_until_ms <= $5 OR push_claims.owner = excluded.owner \
     RETURNING epoch";
const RENEW_PUSH: &str = "UPDATE push_claims \
     SET lease_until_ms = $4, status = coalesce($5::text, status) \
     WHERE kind = $1 AND name = $2 AND epoch = $3";
const RELEASE_PUSH: &str = "UPDATE push_claims SET lease_until_ms = $4 \
     WHERE kind = $1 AND name = $2 AND epoch = $3";
const SELECT_CLAIMS: &str = "SELECT name, owner, epoch, lease_until_ms, status \
     FROM push_claims WHERE kind = $1 ORDER BY name";
const LOCK_CLAIM: &str = "SELECT 1 FROM push_claims \
     WHERE kind = $1 AND name = $2 AND epoch = $3 FOR SHARE";
const LOCK_FOR_REPLAY: &str = "SELECT 1 FROM push_targets WHERE kind = $1 AND name = $2 FOR UPDATE";
const LOCK_FOR_ATTEMPTS: &str =
    "SELECT 1 FROM push_targets WHERE kind = $1 AND name = $2 FOR NO KEY UPDATE";
const FENCE: &str = "UPDATE push_claims SET epoch = epoch + 1, lease_until_ms = $3 \
     WHERE kind = $1 AND name = $2";
/// One row per (dataset, tenant), the last given (an upsert may not touch a row twice).
const WRITE_PROGRESS: &str = "INSERT INTO push_progress \
     (kind, name, dataset, tenant, next_seq, live_from, state, updated_at) \
     SELECT DISTINCT ON (e.d, e.t) $1::text, $2::text, e.d, e.t, e.s, e.l, e.st, e.u \
     FROM unnest($3::text[], $4::text[], $5::int8[], $6::int8[], $7::text[], $8::int8[]) \
       WITH ORDINALITY AS e(d, t, s, l, st, u, n) \
     ORDER BY e.d, e.t, e.n DESC \
     ON CONFLICT (kind, name, dataset, tenant) DO UPDATE SET next_seq = excluded.next_seq, \
     live_from = excluded.live_from, state = excluded.state, updated_at = excluded.updated_at";
const SELECT_PROGRESS: &str = "SELECT dataset, tenant, next_seq, live_from, state, updated_at \
     FROM push_progress WHERE kind = $1 AND name = $2 ORDER BY dataset, tenant";
/// In the order given (ids follow `ORDER BY n`).
const RECORD: &str = "INSERT INTO push_attempts \
     (kind, name, at, message, dataset, tenant, records, status, latency_ms, error) \
     SELECT $1::text, $2::text, e.a, e.m, e.d, e.t, e.r, e.s, e.l, e.x \
     FROM unnest($3::int8[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[], \
       $9::int8[], $10::text[]) WITH ORDINALITY AS e(a, m, d, t, r, s, l, x, n) \
     ORDER BY e.n";
/// Every attempt of the target but the newest `$3` (its snapshot sees what this transaction
/// just recorded).
const DROP_OLDEST: &str = "DELETE FROM push_attempts WHERE id IN (\
     SELECT id FROM push_attempts WHERE kind = $1 AND name = $2 ORDER BY id DESC OFFSET $3)";
const SELECT_ATTEMPTS: &str = "SELECT at, message, dataset, tenant, records, status, latency_ms, \
     error FROM push_attempts WHERE kind = $1 AND name = $2 ORDER BY id DESC LIMIT $3";

/// A row of (name, definition, revision, created_at, updated_at).
fn push_row(kind: PushKind, row: &Row) -> Result<StoredPush, StoreError> {
    rows::stored_push_from_row(
        kind,
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
    )
}

/// Progress entries as the columns of [`WRITE_PROGRESS`], `$3` to `$8`; every entry's numbers
/// are checked before anything is written.
struct ProgressColumns<'a> {
    datasets: Vec<&'a str>,
    tenants: Vec<&'a str>,
    next_seqs: Vec<i64>,
    live_froms: Vec<i64>,
    states: Vec<Option<&'a str>>,
    updated_ats: Vec<i64>,
}

impl<'a> ProgressColumns<'a> {
    fn new(entries: &'a [PushProgress]) -> Result<Self, StoreError> {
        let mut columns = Self {
            datasets: Vec::with_capacity(entries.len()),
            tenants: Vec::with_capacity(entries.len()),
            next_seqs: Vec::with_capacity(entries.len()),
            live_froms: Vec::with_capacity(entries.len()),
            states: Vec::with_capacity(entries.len()),
            updated_ats: Vec::with_capacity(entries.len()),
        };
        for e in entries {
            let (next_seq, live_from, updated_at) = rows::push_progress_to_row(e)?;
            columns.datasets.push(e.dataset.as_str());
            columns.tenants.push(e.tenant.as_str());
            columns.next_seqs.push(next_seq);
            columns.live_froms.push(live_from);
            columns.states.push(e.state.as_deref());
            columns.updated_ats.push(updated_at);
        }
        Ok(columns)
    }
}

/// Writes the entries with [`WRITE_PROGRESS`] prepared as `write`, after what was sent on `tx`
/// before.
async fn write_progress(
    tx: &deadpool_postgres::Transaction<'_>,
    write: &Statement,
    kind: PushKind,
    name: &str,
    c: &ProgressColumns<'_>,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        write,
        &[
            &kind.as_str(),
            &name,
            &c.datasets,
            &c.tenants,
            &c.next_seqs,
            &c.live_froms,
            &c.states,
            &c.updated_ats,
        ],
    )
    .await
}

#[async_trait]
impl PushStore for PostgresStore {
    async fn put_push(
        &self,
        kind: PushKind,
        name: &str,
        definition: &str,
        expected: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<(PushPut, Option<StoredPush>), StoreError> {
        let now = rows::to_micros(now);
        // No stored revision is above i64::MAX: clamping keeps the answer (a conflict) right.
        let expected_param = expected.map(|r| i64::try_from(r).unwrap_or(i64::MAX));
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (put, select) = tokio::try_join!(
            biased;
            tx.prepare_cached(match expected {
                Some(r) if r > 0 => UPDATE_PUSH,
                _ => PUT_PUSH,
            }),
            tx.prepare_cached(SELECT_PUSH),
        )?;
        // Pipelined; the read runs after the put, on the row the put wrote or locked.
        let (written, stored) = tokio::try_join!(
            biased;
            async {
                tx.query_opt(
                    &put,
                    &[&kind.as_str(), &name, &definition, &now, &expected_param],
                )
                .await
            },
            async { tx.query_opt(&select, &[&kind.as_str(), &name]).await },
        )?;
        tx.commit().await?;
        let written: Option<i64> = written.map(|row| row.try_get(0)).transpose()?;
        let stored = stored.map(|row| push_row(kind, &row)).transpose()?;
        let put = put_outcome(written, stored.as_ref(), definition, expected);
        Ok((put, stored))
    }

    async fn push(&self, kind: PushKind, name: &str) -> Result<Option<StoredPush>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_PUSH).await?;
        client
            .query_opt(&stmt, &[&kind.as_str(), &name])
            .await?
            .map(|row| push_row(kind, &row))
            .transpose()
    }

    async fn pushes(&self, kind: PushKind) -> Result<Vec<StoredPush>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_PUSHES).await?;
        client
            .query(&stmt, &[&kind.as_str()])
            .await?
            .iter()
            .map(|row| push_row(kind, row))
            .collect()
    }

    async fn delete_push(&self, kind: PushKind, name: &str) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let [definition, claim, progress, attempts] = DELETE_PUSH;
        let (definition, claim, progress, attempts) = tokio::try_join!(
            biased;
            tx.prepare_cached(definition),
            tx.prepare_cached(claim),
            tx.prepare_cached(progress),
            tx.prepare_cached(attempts),
        )?;
        let kind = kind.as_str();
        // Pipelined; the server runs them in this order.
        let (deleted, ..) = tokio::try_join!(
            biased;
            async { tx.execute(&definition, &[&kind, &name]).await },
            async { tx.execute(&claim, &[&kind, &name]).await },
            async { tx.execute(&progress, &[&kind, &name]).await },
            async { tx.execute(&attempts, &[&kind, &name]).await },
        )?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn claim_push(
        &self,
        kind: PushKind,
        name: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let lease_until = now_ms.saturating_add(lease_ms);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(CLAIM_PUSH).await?;
        client
            .query_opt(
                &stmt,
                &[&kind.as_str(), &name, &owner, &lease_until, &now_ms],
            )
            .await?
            .map(|row| rows::to_u64("push claim epoch", row.try_get(0)?))
            .transpose()
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
        let epoch = rows::to_i64("push claim epoch", epoch)?;
        let lease_until = now_ms.saturating_add(lease_ms);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RENEW_PUSH).await?;
        let renewed = client
            .execute(
                &stmt,
                &[&kind.as_str(), &name, &epoch, &lease_until, &status],
            )
            .await?;
        Ok(renewed > 0)
    }

    async fn release_push(
        &self,
        kind: PushKind,
        name: &str,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let epoch = rows::to_i64("push claim epoch", epoch)?;
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RELEASE_PUSH).await?;
        let released = client
            .execute(&stmt, &[&kind.as_str(), &name, &epoch, &i64::MIN])
            .await?;
        Ok(released > 0)
    }

    async fn push_claims(&self, kind: PushKind) -> Result<Vec<PushClaim>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_CLAIMS).await?;
        client
            .query(&stmt, &[&kind.as_str()])
            .await?
            .iter()
            .map(|row| {
                rows::push_claim_from_row(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                )
            })
            .collect()
    }

    async fn push_progress(
        &self,
        kind: PushKind,
        name: &str,
    ) -> Result<Vec<PushProgress>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_PROGRESS).await?;
        client
            .query(&stmt, &[&kind.as_str(), &name])
            .await?
            .iter()
            .map(|row| {
                rows::push_progress_from_row(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                    row.try_get(5)?,
                )
            })
            .collect()
    }

    async fn set_push_progress(
        &self,
        kind: PushKind,
        name: &str,
        epoch: u64,
        entries: &[PushProgress],
    ) -> Result<bool, StoreError> {
        let epoch = rows::to_i64("push claim epoch", epoch)?;
        let columns = ProgressColumns::new(entries)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (lock, write) = tokio::try_join!(
            biased;
            tx.prepare_cached(LOCK_CLAIM),
            tx.prepare_cached(WRITE_PROGRESS),
        )?;
        // The lock is awaited alone: without the epoch nothing is written (and the transaction
        // rolls back as it drops).
        if tx
            .query_opt(&lock, &[&kind.as_str(), &name, &epoch])
            .await?
            .is_none()
        {
            return Ok(false);
        }
        write_progress(&tx, &write, kind, name, &columns).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn replace_push_progress(
        &self,
        kind: PushKind,
        name: &str,
        entries: &[PushProgress],
    ) -> Result<bool, StoreError> {
        let columns = ProgressColumns::new(entries)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (lock, fence, write) = tokio::try_join!(
            biased;
            tx.prepare_cached(LOCK_FOR_REPLAY),
            tx.prepare_cached(FENCE),
            tx.prepare_cached(WRITE_PROGRESS),
        )?;
        // Awaited alone: without a definition nothing is written.
        if tx
            .query_opt(&lock, &[&kind.as_str(), &name])
            .await?
            .is_none()
        {
            return Ok(false);
        }
        // A target never claimed has no holder to fence: whoever claims it first (after this
        // commits, the lock sees to it) reads these entries. The fence waits for a progress
        // write holding the claim; the entries written next replace what it wrote.
        // Pipelined; the server runs them in this order, under the lock.
        tokio::try_join!(
            biased;
            async { tx.execute(&fence, &[&kind.as_str(), &name, &i64::MIN]).await },
            write_progress(&tx, &write, kind, name, &columns),
        )?;
        tx.commit().await?;
        Ok(true)
    }

    async fn record_push_attempts(
        &self,
        kind: PushKind,
        name: &str,
        attempts: &[PushAttempt],
        keep: usize,
    ) -> Result<(), StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let rows: Vec<PushAttemptRow> = attempts.iter().map(PushAttemptRow::new).collect();
        let at: Vec<i64> = rows.iter().map(|a| a.at).collect();
        let messages: Vec<&str> = rows.iter().map(|a| a.message.as_str()).collect();
        let datasets: Vec<&str> = rows.iter().map(|a| a.dataset.as_str()).collect();
        let tenants: Vec<&str> = rows.iter().map(|a| a.tenant.as_str()).collect();
        let records: Vec<i64> = rows.iter().map(|a| a.records).collect();
        let statuses: Vec<Option<i64>> = rows.iter().map(|a| a.status).collect();
        let latencies: Vec<i64> = rows.iter().map(|a| a.latency_ms).collect();
        let errors: Vec<Option<&str>> = rows.iter().map(|a| a.error.as_deref()).collect();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (lock, record, drop_oldest) = tokio::try_join!(
            biased;
            tx.prepare_cached(LOCK_FOR_ATTEMPTS),
            tx.prepare_cached(RECORD),
            tx.prepare_cached(DROP_OLDEST),
        )?;
        let kind = kind.as_str();
        // Awaited alone: without a definition nothing is recorded.
        if tx.query_opt(&lock, &[&kind, &name]).await?.is_none() {
            return Ok(());
        }
        // Pipelined; the server runs them in this order, under the lock.
        tokio::try_join!(
            biased;
            async {
                tx.execute(
                    &record,
                    &[
                        &kind, &name, &at, &messages, &datasets, &tenants, &records, &statuses,
                        &latencies, &errors,
                    ],
                )
                .await
            },
            async { tx.execute(&drop_oldest, &[&kind, &name, &keep]).await },
        )?;
        tx.commit().await?;
        Ok(())
    }

    async fn push_attempts(
        &self,
        kind: PushKind,
        name: &str,
        limit: usize,
    ) -> Result<Vec<PushAttempt>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_ATTEMPTS).await?;
        client
            .query(&stmt, &[&kind.as_str(), &name, &limit])
            .await?
            .iter()
            .map(|row| {
                PushAttemptRow {
                    at: row.try_get(0)?,
                    message: row.try_get(1)?,
                    dataset: row.try_get(2)?,
                    tenant: row.try_get(3)?,
                    records: row.try_get(4)?,
                    status: row.try_get(5)?,
                    latency_ms: row.try_get(6)?,
                    error: row.try_get(7)?,
                }
                .into_attempt()
            })
            .collect()
    }
}
