//! The records concern on PostgreSQL.
//!
//! `apply` locks the partition's position row (`SELECT ... FOR UPDATE`) before reading anything,
//! which serialises concurrent appliers of one partition: the second one waits, then reads the
//! advanced position and the first one's outcomes, and applies nothing twice. Each batch costs a
//! handful of round trips whatever its size: statements are pipelined, and records and outcomes
//! are loaded and written with one array-parameter (`unnest`) statement each. Version floors are
//! loaded in a statement of their own after the records (READ COMMITTED gives it a later
//! snapshot), so a tombstone purged meanwhile is seen either as a row or as its floor.
//!
//! A batch reads which of its tenants are being erased right after the position lock; one that
//! finds some takes the erasure gate shared (see [`super::ERASURE_GATE_SHARED`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::{ChangeId, DatasetName, EntityId, Record, TenantId};
use tokio_postgres::Row;

use super::{ERASURE_GATE_SHARED, PostgresStore, corrupt_id, record_row, slot};
use crate::apply;
use crate::rows;
use crate::{
    Applied, DataCheck, Dataset, LoggedChange, Offset, RecordStore, StoreError, StoredOutcome,
};

const INSERT_POSITION: &str = "INSERT INTO positions (dataset, partition, next_offset) \
     VALUES ($1, $2, 0) ON CONFLICT DO NOTHING";
const LOCK_POSITION: &str = "SELECT next_offset FROM positions \
     WHERE dataset = $1 AND partition = $2 FOR UPDATE";
const UPDATE_POSITION: &str = "UPDATE positions SET next_offset = GREATEST(next_offset, $3) \
     WHERE dataset = $1 AND partition = $2";
const SELECT_POSITION: &str =
    "SELECT next_offset FROM positions WHERE dataset = $1 AND partition = $2";
/// `slot` (1-based) says which of the asked-for keys a row answers. The LATERAL ... LIMIT 1
/// keeps the plan one primary-key probe per key: left to itself the planner may pick a merge join
/// that reads the whole index on every batch, which gets slower as the table grows.
const LOAD_RECORDS: &str = "SELECT r.tenant, r.id, r.version, r.data::text, r.updated_at, \
     r.change_id, k.slot \
     FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(tenant, id, slot) \
     CROSS JOIN LATERAL (SELECT * FROM records \
       WHERE dataset = $1 AND tenant = k.tenant AND id = k.id LIMIT 1) r";
const LOAD_OUTCOMES: &str = "SELECT a.id, a.status, a.version, k.slot \
     FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(tenant, change_id, slot) \
     CROSS JOIN LATERAL (SELECT id, status, version FROM applied_changes \
       WHERE dataset = $1 AND tenant = k.tenant AND change_id = k.change_id LIMIT 1) a";
/// Which of the batch's tenants are being erased. Run right after the position lock and before
/// the loads; for almost every batch it finds nothing and that is all. When it finds some, the
/// batch takes [`ERASURE_GATE_SHARED`] and reads them again: see there.
const LOAD_ERASING: &str = "SELECT tenant FROM tenant_erasures \
     WHERE tenant = ANY($1::text[]) AND finished_at IS NULL";

/// Run after [`LOAD_RECORDS`], as a statement of its own: see [`crate::apply::plan_batch`].
const LOAD_FLOORS: &str = "SELECT tenant, version_floor FROM tenant_horizons \
     WHERE dataset = $1 AND tenant = ANY($2::text[])";
const WRITE_RECORDS: &str = "INSERT INTO records \
     (dataset, tenant, id, version, data, updated_at, change_id, seq) \
     SELECT $1, t, i, v, d::json, u, c, s \
     FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::timestamptz[], $7::text[], \
       $8::int8[]) AS x(t, i, v, d, u, c, s) \
     ON CONFLICT (dataset, tenant, id) DO UPDATE SET version = excluded.version, \
     data = excluded.data, updated_at = excluded.updated_at, change_id = excluded.change_id, \
     seq = excluded.seq";
/// A plain insert: under the position lock an outcome can only exist already if the same tenant
/// was applied through two partitions, and then failing (and retrying) beats applying twice.
const WRITE_OUTCOMES: &str = "INSERT INTO applied_changes \
     (dataset, tenant, change_id, id, status, version, applied_at) \
     SELECT $1, t, c, i, s, v, $7 \
     FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[]) \
       AS x(t, c, i, s, v)";
/// The oldest outcomes first, through `applied_changes_by_time`. SKIP LOCKED: concurrent
/// pruners take different rows instead of waiting on each other.
const PRUNE_OUTCOMES: &str = "DELETE FROM applied_changes \
     WHERE (dataset, tenant, change_id) IN (SELECT dataset, tenant, change_id \
       FROM applied_changes WHERE applied_at < $1 ORDER BY applied_at LIMIT $2 \
       FOR UPDATE SKIP LOCKED)";
const SELECT_RECORD: &str = "SELECT tenant, id, version, data::text, updated_at, change_id \
     FROM records WHERE dataset = $1 AND tenant = $2 AND id = $3";
const SELECT_OUTCOME: &str = "SELECT id, status, version FROM applied_changes \
     WHERE dataset = $1 AND tenant = $2 AND change_id = $3";
const SCAN_FIRST: &str = "SELECT tenant, id, version, data::text, updated_at, change_id \
     FROM records WHERE dataset = $1 AND tenant = $2 ORDER BY id LIMIT $3";
const SCAN_AFTER: &str = "SELECT tenant, id, version, data::text, updated_at, change_id \
     FROM records WHERE dataset = $1 AND tenant = $2 AND id > $3 ORDER BY id LIMIT $4";

/// Inserts or, for an existing dataset, returns the stored partition count in one statement.
const DECLARE_DATASET: &str = "INSERT INTO datasets (name, partitions) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING partitions";

/// The columns of a batch of record writes, as arrays for one `unnest` insert.
#[derive(Default)]
struct RecordColumns<'a> {
    tenants: Vec<&'a str>,
    ids: Vec<&'a str>,
    versions: Vec<i64>,
    data: Vec<Option<String>>,
    updated_at: Vec<DateTime<Utc>>,
    change_ids: Vec<&'a str>,
    seqs: Vec<i64>,
}

impl<'a> RecordColumns<'a> {
    fn new(records: impl Iterator<Item = (&'a Record, Offset)>) -> Result<Self, StoreError> {
        let mut c = Self::default();
        for (r, seq) in records {
            c.tenants.push(r.tenant.as_str());
            c.ids.push(r.id.as_str());
            c.versions.push(rows::to_i64("version", r.version)?);
            c.data
                .push(r.data.as_ref().map(rows::encode_data).transpose()?);
            c.updated_at.push(r.updated_at);
            c.change_ids.push(r.change_id.as_str());
            c.seqs.push(rows::to_i64("seq", seq)?);
        }
        Ok(c)
    }
}

#[async_trait]
impl RecordStore for PostgresStore {
    async fn declare_dataset(&self, dataset: &Dataset) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(DECLARE_DATASET).await?;
        let existing: i64 = client
            .query_one(
                &stmt,
                &[&dataset.name.as_str(), &i64::from(dataset.partitions)],
            )
            .await?
            .try_get(0)?;
        let existing = u32::try_from(existing).map_err(|_| {
            corrupt_id(
                "dataset partitions",
                format!("dataset {}: {existing} partitions", dataset.name),
            )
        })?;
        if existing != dataset.partitions {
            return Err(StoreError::DatasetMismatch {
                dataset: dataset.name.to_string(),
                existing,
                requested: dataset.partitions,
            });
        }
        Ok(())
    }

    async fn datasets(&self) -> Result<Vec<Dataset>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT name, partitions FROM datasets ORDER BY name")
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|row| {
                let name: String = row.try_get(0)?;
                let partitions: i64 = row.try_get(1)?;
                Ok(Dataset {
                    name: DatasetName::new(name).map_err(|e| corrupt_id("dataset name", e))?,
                    partitions: u32::try_from(partitions).map_err(|_| {
                        corrupt_id("dataset partitions", format!("{partitions} partitions"))
                    })?,
                })
            })
            .collect()
    }

    async fn apply_checked(
        &self,
        dataset: &DatasetName,
        partition: u32,
        changes: &[LoggedChange],
        next_offset: Offset,
        check: Option<Arc<dyn DataCheck>>,
    ) -> Result<Applied, StoreError> {
        let ds = dataset.as_str();
        let part = i64::from(partition);
        let lookups = apply::lookups(changes);
        let key_tenants: Vec<&str> = lookups.keys.iter().map(|(t, _)| t.as_str()).collect();
        let key_ids: Vec<&str> = lookups.keys.iter().map(|(_, id)| id.as_str()).collect();
        let outcome_tenants: Vec<&str> =
            lookups.change_ids.iter().map(|(t, _)| t.as_str()).collect();
        let outcome_ids: Vec<&str> = lookups.change_ids.iter().map(|(_, c)| c.as_str()).collect();
        let batch_tenants: Vec<&str> = lookups.tenants.iter().map(|t| t.as_str()).collect();

        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (
            insert_position,
            lock_position,
            load_erasing,
            erasure_gate,
            load_records,
            load_outcomes,
            load_floors,
        ) = tokio::try_join!(
            biased;
            tx.prepare_cached(INSERT_POSITION),
            tx.prepare_cached(LOCK_POSITION),
            tx.prepare_cached(LOAD_ERASING),
            tx.prepare_cached(ERASURE_GATE_SHARED),
            tx.prepare_cached(LOAD_RECORDS),
            tx.prepare_cached(LOAD_OUTCOMES),
            tx.prepare_cached(LOAD_FLOORS),
        )?;
        let loads = || async {
            tokio::try_join!(
                biased;
                async {
                    tx.query(&load_records, &[&ds, &key_tenants, &key_ids])
                        .await
                },
                async {
                    tx.query(&load_outcomes, &[&ds, &outcome_tenants, &outcome_ids])
                        .await
                },
            )
        };
        let erasing_of = |rows: &[Row]| -> Result<HashSet<TenantId>, StoreError> {
            let mut erasing = HashSet::new();
            for row in rows {
                let tenant: &str = row.try_get(0)?;
                let i = batch_tenants.binary_search(&tenant).map_err(|_| {
                    corrupt_id("erasure", format!("tenant {tenant:?} was not asked for"))
                })?;
                erasing.insert(lookups.tenants[i].clone());
            }
            Ok(erasing)
        };
        // One round trip: the server runs these in order, so the loads see everything committed
        // by whoever held the position lock before us.
        let (_, position, erasing_rows, (mut record_rows, mut outcome_rows)) = tokio::try_join!(
            biased;
            async { tx.execute(&insert_position, &[&ds, &part]).await },
            async { tx.query_one(&lock_position, &[&ds, &part]).await },
            async { tx.query(&load_erasing, &[&batch_tenants]).await },
            loads(),
        )?;
        let position = rows::to_u64("position", position.try_get(0)?)?;
        let mut erasing = erasing_of(&erasing_rows)?;
        if !erasing.is_empty() {
            let (_, again) = tokio::try_join!(
                biased;
                async { tx.execute(&erasure_gate, &[]).await },
                async { tx.query(&load_erasing, &[&batch_tenants]).await },
            )?;
            let again = erasing_of(&again)?;
            if again != erasing {
                // An erasure finished (or started) since the first read: what the loads read
                // may predate it.
                (record_rows, outcome_rows) = loads().await?;
                erasing = again;
            }
        }

        let mut records: Vec<Option<Record>> = vec![None; lookups.keys.len()];
        for row in &record_rows {
            let record = record_row(row)?;
            *slot(&mut records, row.try_get(6)?)? = Some(record);
        }
        let mut outcomes: Vec<Option<StoredOutcome>> = vec![None; lookups.change_ids.len()];
        for row in &outcome_rows {
            let status: String = row.try_get(1)?;
            let outcome = rows::stored_outcome_from_row(row.try_get(0)?, &status, row.try_get(2)?)?;
            *slot(&mut outcomes, row.try_get(3)?)? = Some(outcome);
        }
        // Another round trip, but only for batches that create keys, and it must come after
        // the records' statement anyway.
        let creating = apply::tenants_creating(&lookups, &records);
        let mut floors: HashMap<TenantId, u64> = HashMap::new();
        if !creating.is_empty() {
            let names: Vec<&str> = creating.iter().map(|t| t.as_str()).collect();
            for row in tx.query(&load_floors, &[&ds, &names]).await? {
                let tenant: &str = row.try_get(0)?;
                let floor = rows::to_u64("version floor", row.try_get(1)?)?;
                let i = names.binary_search(&tenant).map_err(|_| {
                    corrupt_id(
                        "version floor",
                        format!("tenant {tenant:?} was not asked for"),
                    )
                })?;
                floors.insert(creating[i].clone(), floor);
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
            check.as_deref(),
            now,
        );

        let columns = RecordColumns::new(
            plan.written
                .iter()
                .map(|&(i, seq)| (&plan.applied.states[i], seq)),
        )?;
        let mut o_tenants = Vec::with_capacity(plan.first_applied.len());
        let mut o_ids = Vec::with_capacity(plan.first_applied.len());
        let mut o_records = Vec::with_capacity(plan.first_applied.len());
        let mut o_statuses = Vec::with_capacity(plan.first_applied.len());
        let mut o_versions = Vec::with_capacity(plan.first_applied.len());
        for &i in &plan.first_applied {
            let change = &changes[i].change;
            let (status, version) = rows::outcome_to_row(&plan.applied.outcomes[i])?;
            o_tenants.push(change.tenant.as_str());
            o_ids.push(change.change_id.as_str());
            o_records.push(change.id.as_str());
            o_statuses.push(status);
            o_versions.push(version);
        }
        let new_position = rows::to_i64("next offset", plan.position)?;
        let (write_records, write_outcomes, update_position) = tokio::try_join!(
            biased;
            tx.prepare_cached(WRITE_RECORDS),
            tx.prepare_cached(WRITE_OUTCOMES),
            tx.prepare_cached(UPDATE_POSITION),
        )?;
        let write_records = async {
            if columns.tenants.is_empty() {
                return Ok(0);
            }
            tx.execute(
                &write_records,
                &[
                    &ds,
                    &columns.tenants,
                    &columns.ids,
                    &columns.versions,
                    &columns.data,
                    &columns.updated_at,
                    &columns.change_ids,
                    &columns.seqs,
                ],
            )
            .await
        };
        let write_outcomes = async {
            if o_tenants.is_empty() {
                return Ok(0);
            }
            tx.execute(
                &write_outcomes,
                &[
                    &ds,
                    &o_tenants,
                    &o_ids,
                    &o_records,
                    &o_statuses,
                    &o_versions,
                    &now,
                ],
            )
            .await
        };
        let update_position = async {
            if plan.position == position {
                return Ok(0);
            }
            tx.execute(&update_position, &[&ds, &part, &new_position])
                .await
        };
        tokio::try_join!(
            biased;
            write_records,
            write_outcomes,
            update_position
        )?;
        tx.commit().await?;
        Ok(plan.applied)
    }

    async fn position(&self, dataset: &DatasetName, partition: u32) -> Result<Offset, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_POSITION).await?;
        let row = client
            .query_opt(&stmt, &[&dataset.as_str(), &i64::from(partition)])
            .await?;
        match row {
            Some(row) => rows::to_u64("position", row.try_get(0)?),
            None => Ok(0),
        }
    }

    async fn get(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        id: &EntityId,
    ) -> Result<Option<Record>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_RECORD).await?;
        client
            .query_opt(&stmt, &[&dataset.as_str(), &tenant.as_str(), &id.as_str()])
            .await?
            .as_ref()
            .map(record_row)
            .transpose()
    }

    async fn outcome(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        change_id: &ChangeId,
    ) -> Result<Option<StoredOutcome>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_OUTCOME).await?;
        let row = client
            .query_opt(
                &stmt,
                &[&dataset.as_str(), &tenant.as_str(), &change_id.as_str()],
            )
            .await?;
        match row {
            Some(row) => {
                let status: String = row.try_get(1)?;
                Ok(Some(rows::stored_outcome_from_row(
                    row.try_get(0)?,
                    &status,
                    row.try_get(2)?,
                )?))
            }
            None => Ok(None),
        }
    }

    async fn outcomes(
        &self,
        dataset: &DatasetName,
        change_ids: &[(TenantId, ChangeId)],
    ) -> Result<Vec<Option<StoredOutcome>>, StoreError> {
        if change_ids.is_empty() {
            return Ok(Vec::new());
        }
        let tenants: Vec<&str> = change_ids.iter().map(|(t, _)| t.as_str()).collect();
        let ids: Vec<&str> = change_ids.iter().map(|(_, c)| c.as_str()).collect();
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(LOAD_OUTCOMES).await?;
        let found = client
            .query(&stmt, &[&dataset.as_str(), &tenants, &ids])
            .await?;
        let mut out: Vec<Option<StoredOutcome>> = vec![None; change_ids.len()];
        for row in &found {
            let status: String = row.try_get(1)?;
            let outcome = rows::stored_outcome_from_row(row.try_get(0)?, &status, row.try_get(2)?)?;
            *slot(&mut out, row.try_get(3)?)? = Some(outcome);
        }
        Ok(out)
    }

    async fn prune_outcomes(&self, before: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(PRUNE_OUTCOMES).await?;
        Ok(client.execute(&stmt, &[&before, &limit]).await?)
    }

    async fn scan(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        after: Option<&EntityId>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let found = match after {
            None => {
                let stmt = client.prepare_cached(SCAN_FIRST).await?;
                client
                    .query(&stmt, &[&dataset.as_str(), &tenant.as_str(), &limit])
                    .await?
            }
            Some(after) => {
                let stmt = client.prepare_cached(SCAN_AFTER).await?;
                client
                    .query(
                        &stmt,
                        &[&dataset.as_str(), &tenant.as_str(), &after.as_str(), &limit],
                    )
                    .await?
            }
        };
        found.iter().map(record_row).collect()
    }

    async fn check(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}
