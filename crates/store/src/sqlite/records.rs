//! The records concern on SQLite: datasets, `apply` in one writer transaction, and reads of
//! records, outcomes and positions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tenantsync_core::{ChangeId, DatasetName, EntityId, Record, TenantId};

use super::{SqliteStore, partition_param, record_row};
use crate::apply;
use crate::rows::{self, RecordRow};
use crate::{
    Applied, DataCheck, Dataset, LoggedChange, Offset, RecordStore, StoreError, StoredOutcome,
};

const SELECT_POSITION: &str =
    "SELECT next_offset FROM positions WHERE dataset = ?1 AND partition = ?2";
const UPSERT_POSITION: &str = "INSERT INTO positions (dataset, partition, next_offset) \
     VALUES (?1, ?2, ?3) \
     ON CONFLICT (dataset, partition) DO UPDATE \
     SET next_offset = max(next_offset, excluded.next_offset)";
const SELECT_RECORD: &str = "SELECT tenant, id, version, data, updated_at, change_id \
     FROM records WHERE dataset = ?1 AND tenant = ?2 AND id = ?3";
const UPSERT_RECORD: &str = "INSERT INTO records \
     (dataset, tenant, id, version, data, updated_at, change_id, seq) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (dataset, tenant, id) DO UPDATE SET version = excluded.version, \
     data = excluded.data, updated_at = excluded.updated_at, change_id = excluded.change_id, \
     seq = excluded.seq";
const SELECT_FLOOR: &str =
    "SELECT version_floor FROM tenant_horizons WHERE dataset = ?1 AND tenant = ?2";

const SELECT_OUTCOME: &str = "SELECT id, status, version FROM applied_changes \
     WHERE dataset = ?1 AND tenant = ?2 AND change_id = ?3";
const INSERT_OUTCOME: &str = "INSERT INTO applied_changes \
     (dataset, tenant, change_id, id, status, version, applied_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
/// The oldest outcomes first, found through `applied_changes_by_time` (which holds the primary
/// key too, so the subquery never reads the table).
const PRUNE_OUTCOMES: &str = "DELETE FROM applied_changes \
     WHERE (dataset, tenant, change_id) IN (SELECT dataset, tenant, change_id \
       FROM applied_changes WHERE applied_at < ?1 ORDER BY applied_at LIMIT ?2)";
const SCAN_FIRST: &str = "SELECT tenant, id, version, data, updated_at, change_id \
     FROM records WHERE dataset = ?1 AND tenant = ?2 ORDER BY id LIMIT ?3";
const SCAN_AFTER: &str = "SELECT tenant, id, version, data, updated_at, change_id \
     FROM records WHERE dataset = ?1 AND tenant = ?2 AND id > ?3 ORDER BY id LIMIT ?4";

/// Served by a partial index holding only running erasures: for almost every batch, a probe
/// that finds nothing.
const SELECT_ERASING: &str = "SELECT tenant FROM tenant_erasures WHERE finished_at IS NULL";

/// The indices of `keys`, in key order.
fn sorted_slots<A: Ord, B: Ord>(keys: &[(&A, &B)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by_key(|&i| keys[i]);
    order
}

fn outcome_row(row: &Row<'_>) -> rusqlite::Result<(String, String, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn apply_in_transaction(
    conn: &mut Connection,
    dataset: &DatasetName,
    partition: u32,
    changes: &[LoggedChange],
    next_offset: Offset,
    check: Option<&dyn DataCheck>,
) -> Result<Applied, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let ds = dataset.as_str();
    let part = partition_param(partition);
    let stored: Option<i64> = tx
        .prepare_cached(SELECT_POSITION)?
        .query_row(params![ds, part], |row| row.get(0))
        .optional()?;
    let position = rows::to_u64("position", stored.unwrap_or(0))?;

    let lookups = apply::lookups(changes);
    let mut erasing = HashSet::new();
    {
        let mut select = tx.prepare_cached(SELECT_ERASING)?;
        let mut running = select.query([])?;
        while let Some(row) = running.next()? {
            let tenant: String = row.get(0)?;
            if let Ok(i) = lookups
                .tenants
                .binary_search_by(|t| t.as_str().cmp(tenant.as_str()))
            {
                erasing.insert(lookups.tenants[i].clone());
            }
        }
    }
    // Probing in key order visits the b-tree's pages in order: fewer page cache misses once the
    // tables outgrow the cache.
    let mut records = vec![None; lookups.keys.len()];
    {
        let mut select = tx.prepare_cached(SELECT_RECORD)?;
        for slot in sorted_slots(&lookups.keys) {
            let (tenant, id) = lookups.keys[slot];
            let row = select
                .query_row(params![ds, tenant.as_str(), id.as_str()], record_row)
                .optional()?;
            records[slot] = row.map(RecordRow::into_record).transpose()?;
        }
    }
    let mut outcomes = vec![None; lookups.change_ids.len()];
    {
        let mut select = tx.prepare_cached(SELECT_OUTCOME)?;
        for slot in sorted_slots(&lookups.change_ids) {
            let (tenant, change_id) = lookups.change_ids[slot];
            let row = select
                .query_row(
                    params![ds, tenant.as_str(), change_id.as_str()],
                    outcome_row,
                )
                .optional()?;
            outcomes[slot] = row
                .map(|(id, status, version)| rows::stored_outcome_from_row(id, &status, version))
                .transpose()?;
        }
    }

    let mut floors = HashMap::new();
    {
        let mut select = tx.prepare_cached(SELECT_FLOOR)?;
        for tenant in apply::tenants_creating(&lookups, &records) {
            let floor: Option<i64> = select
                .query_row(params![ds, tenant.as_str()], |row| row.get(0))
                .optional()?;
            if let Some(floor) = floor {
                floors.insert(tenant.clone(), rows::to_u64("version floor", floor)?);
            }
        }
    }

    let now = Utc::now();
    let plan = apply::plan_batch(
        dataset,
        partition,
        changes,
        &lookups,
        position,
        next_offset,
        records,
        outcomes,
        &floors,
        &erasing,
        check,
        now,
    );

    {
        let mut upsert = tx.prepare_cached(UPSERT_RECORD)?;
        for &(i, seq) in &plan.written {
            let r = &plan.applied.states[i];
            let data = r.data.as_ref().map(rows::encode_data).transpose()?;
            upsert.execute(params![
                ds,
                r.tenant.as_str(),
                r.id.as_str(),
                rows::to_i64("version", r.version)?,
                data,
                r.updated_at.timestamp_micros(),
                r.change_id.as_str(),
                rows::to_i64("seq", seq)?,
            ])?;
        }
    }
    {
        let mut insert = tx.prepare_cached(INSERT_OUTCOME)?;
        let mut first_applied = plan.first_applied.clone();
        first_applied
            .sort_unstable_by_key(|&i| (&changes[i].change.tenant, &changes[i].change.change_id));
        for i in first_applied {
            let change = &changes[i].change;
            let (status, version) = rows::outcome_to_row(&plan.applied.outcomes[i])?;
            insert.execute(params![
                ds,
                change.tenant.as_str(),
                change.change_id.as_str(),
                change.id.as_str(),
                status,
                version,
                now.timestamp_micros(),
            ])?;
        }
    }
    // A redelivered batch changes nothing; not touching the position keeps its commit free of
    // writes (and of an fsync).
    if stored.is_none() || plan.position != position {
        tx.prepare_cached(UPSERT_POSITION)?.execute(params![
            ds,
            part,
            rows::to_i64("next offset", plan.position)?
        ])?;
    }
    tx.commit()?;
    Ok(plan.applied)
}

fn declare_in_transaction(conn: &mut Connection, dataset: &Dataset) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let existing: Option<i64> = tx
        .query_row(
            "SELECT partitions FROM datasets WHERE name = ?1",
            [dataset.name.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    match existing {
        Some(existing) => {
            let existing = u32::try_from(existing).map_err(|_| StoreError::Corrupt {
                what: "dataset partitions",
                detail: format!("dataset {}: {existing} partitions", dataset.name),
            })?;
            if existing != dataset.partitions {
                return Err(StoreError::DatasetMismatch {
                    dataset: dataset.name.to_string(),
                    existing,
                    requested: dataset.partitions,
                });
            }
        }
        None => {
            tx.execute(
                "INSERT INTO datasets (name, partitions) VALUES (?1, ?2)",
                params![dataset.name.as_str(), i64::from(dataset.partitions)],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn declare_dataset(&self, dataset: &Dataset) -> Result<(), StoreError> {
        let dataset = dataset.clone();
        self.write(move |conn| declare_in_transaction(conn, &dataset))
            .await
    }

    async fn datasets(&self) -> Result<Vec<Dataset>, StoreError> {
        self.read(|conn| {
            let mut select =
                conn.prepare_cached("SELECT name, partitions FROM datasets ORDER BY name")?;
            let rows = select.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, partitions) = row?;
                out.push(Dataset {
                    name: DatasetName::new(name).map_err(|e| StoreError::Corrupt {
                        what: "dataset name",
                        detail: e.to_string(),
                    })?,
                    partitions: u32::try_from(partitions).map_err(|_| StoreError::Corrupt {
                        what: "dataset partitions",
                        detail: format!("{partitions} partitions"),
                    })?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn apply_checked(
        &self,
        dataset: &DatasetName,
        partition: u32,
        changes: &[LoggedChange],
        next_offset: Offset,
        check: Option<Arc<dyn DataCheck>>,
    ) -> Result<Applied, StoreError> {
        // The writer thread needs owned data; the copy is cheap next to the transaction.
        let dataset = dataset.clone();
        let changes = changes.to_vec();
        self.write(move |conn| {
            apply_in_transaction(
                conn,
                &dataset,
                partition,
                &changes,
                next_offset,
                check.as_deref(),
            )
        })
        .await
    }

    async fn position(&self, dataset: &DatasetName, partition: u32) -> Result<Offset, StoreError> {
        let dataset = dataset.clone();
        self.read(move |conn| {
            let position: Option<i64> = conn
                .prepare_cached(SELECT_POSITION)?
                .query_row(
                    params![dataset.as_str(), partition_param(partition)],
                    |row| row.get(0),
                )
                .optional()?;
            rows::to_u64("position", position.unwrap_or(0))
        })
        .await
    }

    async fn get(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        id: &EntityId,
    ) -> Result<Option<Record>, StoreError> {
        let (dataset, tenant, id) = (dataset.clone(), tenant.clone(), id.clone());
        self.read(move |conn| {
            conn.prepare_cached(SELECT_RECORD)?
                .query_row(
                    params![dataset.as_str(), tenant.as_str(), id.as_str()],
                    record_row,
                )
                .optional()?
                .map(RecordRow::into_record)
                .transpose()
        })
        .await
    }

    async fn outcome(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        change_id: &ChangeId,
    ) -> Result<Option<StoredOutcome>, StoreError> {
        let (dataset, tenant, change_id) = (dataset.clone(), tenant.clone(), change_id.clone());
        self.read(move |conn| {
            conn.prepare_cached(SELECT_OUTCOME)?
                .query_row(
                    params![dataset.as_str(), tenant.as_str(), change_id.as_str()],
                    outcome_row,
                )
                .optional()?
                .map(|(id, status, version)| rows::stored_outcome_from_row(id, &status, version))
                .transpose()
        })
        .await
    }

    async fn outcomes(
        &self,
        dataset: &DatasetName,
        change_ids: &[(TenantId, ChangeId)],
    ) -> Result<Vec<Option<StoredOutcome>>, StoreError> {
        if change_ids.is_empty() {
            return Ok(Vec::new());
        }
        let (dataset, change_ids) = (dataset.clone(), change_ids.to_vec());
        // One reader job (one snapshot) for all of them, rather than a blocking task per id.
        self.read(move |conn| {
            let mut select = conn.prepare_cached(SELECT_OUTCOME)?;
            let mut out = Vec::with_capacity(change_ids.len());
            for (tenant, change_id) in &change_ids {
                let row = select
                    .query_row(
                        params![dataset.as_str(), tenant.as_str(), change_id.as_str()],
                        outcome_row,
                    )
                    .optional()?;
                out.push(
                    row.map(|(id, status, version)| {
                        rows::stored_outcome_from_row(id, &status, version)
                    })
                    .transpose()?,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn prune_outcomes(&self, before: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(move |conn| {
            let pruned = conn
                .prepare_cached(PRUNE_OUTCOMES)?
                .execute(params![before.timestamp_micros(), limit])?;
            Ok(pruned as u64)
        })
        .await
    }

    async fn scan(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        after: Option<&EntityId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let (dataset, tenant, after) = (dataset.clone(), tenant.clone(), after.cloned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let (ds, t) = (dataset.as_str(), tenant.as_str());
            let found = match &after {
                None => conn
                    .prepare_cached(SCAN_FIRST)?
                    .query_map(params![ds, t, limit], record_row)?
                    .collect::<Result<Vec<_>, _>>()?,
                Some(after) => conn
                    .prepare_cached(SCAN_AFTER)?
                    .query_map(params![ds, t, after.as_str(), limit], record_row)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            found.into_iter().map(RecordRow::into_record).collect()
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await?;
        // A dead writer thread makes the store useless even if reads work.
        self.write(|_| Ok(())).await
    }
}
