//! The PostgreSQL backend, for deployments that outgrow one machine or already run PostgreSQL.
//!
//! Connections come from a deadpool pool; tables live in the first schema of the URL's
//! `search_path` (`?options=-csearch_path%3Dmy_schema`), so several stores can share a database.
//! `apply` locks the partition's position row (`SELECT ... FOR UPDATE`) before reading anything,
//! which serialises concurrent appliers of one partition: the second one waits, then reads the
//! advanced position and the first one's outcomes, and applies nothing twice. Each batch costs a
//! handful of round trips whatever its size: statements are pipelined, and records and outcomes
//! are loaded and written with one array-parameter (`unnest`) statement each.
//!
//! This module must never decide what a change does itself: that is [`crate::apply`].

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tenantsync_core::{ChangeId, DatasetName, EntityId, Record, TenantId};
use tokio_postgres::NoTls;
use tokio_postgres::Row;
use tracing::info;

use crate::apply;
use crate::migrations::{self, Migration};
use crate::rows::{self, RecordRow};
use crate::{Applied, Dataset, LoggedChange, MasterStore, Offset, StoreError, StoredOutcome};

const POOL_SIZE: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a pooled connection before giving up with a (transient) error.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// Serialises migrations across processes; per schema, so stores in different schemas of one
/// database do not wait for each other.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(\
     hashtext('tenantsync-store-migrations:' || coalesce(current_schema(), '')))";

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
const WRITE_RECORDS: &str = "INSERT INTO records \
     (dataset, tenant, id, version, data, updated_at, change_id) \
     SELECT $1, t, i, v, d::json, u, c \
     FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::timestamptz[], $7::text[]) \
       AS x(t, i, v, d, u, c) \
     ON CONFLICT (dataset, tenant, id) DO UPDATE SET version = excluded.version, \
     data = excluded.data, updated_at = excluded.updated_at, change_id = excluded.change_id";
/// A plain insert: under the position lock an outcome can only exist already if the same tenant
/// was applied through two partitions, and then failing (and retrying) beats applying twice.
const WRITE_OUTCOMES: &str = "INSERT INTO applied_changes \
     (dataset, tenant, change_id, id, status, version) \
     SELECT $1, t, c, i, s, v \
     FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[]) \
       AS x(t, c, i, s, v)";
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

/// The PostgreSQL master store.
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (any libpq-style URL; `options=-csearch_path%3DS`
    /// selects the schema) and applies missing migrations. TLS is not supported yet.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| StoreError::InvalidUrl(redact(url)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tenantsync");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let mut client = pool.get().await?;
        migrate(&mut client).await?;
        Ok(Self { pool })
    }
}

/// Hides a password in a URL that is about to appear in an error message.
fn redact(url: &str) -> String {
    if url.contains("password=") {
        return "<url with a password parameter>".to_owned();
    }
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _password)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute(MIGRATION_LOCK, &[]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tenantsync_migrations (
             version    bigint      NOT NULL PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM tenantsync_migrations",
            &[],
        )
        .await?
        .get(0);
    let known = migrations::latest(migrations::POSTGRES);
    if current > known {
        return Err(StoreError::Corrupt {
            what: "schema version",
            detail: format!(
                "database is at schema version {current}, newer than this build's {known}"
            ),
        });
    }
    for Migration { version, name, sql } in migrations::POSTGRES {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO tenantsync_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        info!(migration = name, "applied postgres migration");
    }
    tx.commit().await?;
    Ok(())
}

fn record_row(row: &Row) -> Result<Record, StoreError> {
    RecordRow {
        tenant: row.try_get(0)?,
        id: row.try_get(1)?,
        version: row.try_get(2)?,
        data: row.try_get(3)?,
        updated_at: row.try_get(4)?,
        change_id: row.try_get(5)?,
    }
    .into_record()
}

/// The entry a 1-based `WITH ORDINALITY` slot number points at.
fn slot<T>(slots: &mut [T], ordinal: i64) -> Result<&mut T, StoreError> {
    usize::try_from(ordinal - 1)
        .ok()
        .and_then(|i| slots.get_mut(i))
        .ok_or_else(|| corrupt_id("lookup slot", format!("slot {ordinal} was not asked for")))
}

fn corrupt_id(what: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

/// The columns of a batch of record writes, as arrays for one `unnest` insert.
#[derive(Default)]
struct RecordColumns<'a> {
    tenants: Vec<&'a str>,
    ids: Vec<&'a str>,
    versions: Vec<i64>,
    data: Vec<Option<String>>,
    updated_at: Vec<DateTime<Utc>>,
    change_ids: Vec<&'a str>,
}

impl<'a> RecordColumns<'a> {
    fn new(records: impl Iterator<Item = &'a Record>) -> Result<Self, StoreError> {
        let mut c = Self::default();
        for r in records {
            c.tenants.push(r.tenant.as_str());
            c.ids.push(r.id.as_str());
            c.versions.push(rows::to_i64("version", r.version)?);
            c.data
                .push(r.data.as_ref().map(rows::encode_data).transpose()?);
            c.updated_at.push(r.updated_at);
            c.change_ids.push(r.change_id.as_str());
        }
        Ok(c)
    }
}

#[async_trait]
impl MasterStore for PostgresStore {
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

    async fn apply(
        &self,
        dataset: &DatasetName,
        partition: u32,
        changes: &[LoggedChange],
        next_offset: Offset,
    ) -> Result<Applied, StoreError> {
        let ds = dataset.as_str();
        let part = i64::from(partition);
        let lookups = apply::lookups(changes);
        let key_tenants: Vec<&str> = lookups.keys.iter().map(|(t, _)| t.as_str()).collect();
        let key_ids: Vec<&str> = lookups.keys.iter().map(|(_, id)| id.as_str()).collect();
        let outcome_tenants: Vec<&str> =
            lookups.change_ids.iter().map(|(t, _)| t.as_str()).collect();
        let outcome_ids: Vec<&str> = lookups.change_ids.iter().map(|(_, c)| c.as_str()).collect();

        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (insert_position, lock_position, load_records, load_outcomes) = tokio::try_join!(
            tx.prepare_cached(INSERT_POSITION),
            tx.prepare_cached(LOCK_POSITION),
            tx.prepare_cached(LOAD_RECORDS),
            tx.prepare_cached(LOAD_OUTCOMES),
        )?;
        // One round trip: the server runs these in order, so the loads see everything committed
        // by whoever held the position lock before us.
        let (_, position, record_rows, outcome_rows) = tokio::try_join!(
            async { tx.execute(&insert_position, &[&ds, &part]).await },
            async { tx.query_one(&lock_position, &[&ds, &part]).await },
            async {
                tx.query(&load_records, &[&ds, &key_tenants, &key_ids])
                    .await
            },
            async {
                tx.query(&load_outcomes, &[&ds, &outcome_tenants, &outcome_ids])
                    .await
            },
        )?;
        let position = rows::to_u64("position", position.try_get(0)?)?;

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

        let plan = apply::plan_batch(
            dataset,
            partition,
            changes,
            &lookups,
            position,
            next_offset,
            records,
            outcomes,
            Utc::now(),
        );

        let columns = RecordColumns::new(plan.written.iter().map(|&i| &plan.applied.states[i]))?;
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
        tokio::try_join!(write_records, write_outcomes, update_position)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_error_messages() {
        assert_eq!(
            redact("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
        assert!(!redact("postgres://db/x?password=secret").contains("secret"));
    }
}
