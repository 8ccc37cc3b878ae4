//! The schema concern on SQLite. Every write runs on the one writer thread in one
//! `BEGIN IMMEDIATE` transaction, which takes the write lock before it reads: a put's
//! compare-and-set on the latest version, the id it takes from `schema_registry` and the
//! generation it raises cannot interleave with another write, also from another process on the
//! same file.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tenantsync_core::DatasetName;

use super::SqliteStore;
use crate::schemas::{decide_put, now_micros, stored_schema_from_row};
use crate::{ContractSettings, SchemaFormat, SchemaPut, SchemaStore, StoreError, StoredSchema};

const SELECT_LATEST: &str = "SELECT id, dataset, format, version, schema, created_at \
     FROM schemas WHERE dataset = ?1 AND format = ?2 ORDER BY version DESC LIMIT 1";
const SELECT_VERSIONS: &str = "SELECT id, dataset, format, version, schema, created_at \
     FROM schemas WHERE dataset = ?1 AND format = ?2 ORDER BY version";
const SELECT_BY_ID: &str = "SELECT id, dataset, format, version, schema, created_at \
     FROM schemas WHERE id = ?1";
/// Takes the next id and raises the generation, in one statement.
const NEXT_ID: &str = "UPDATE schema_registry \
     SET last_id = last_id + 1, generation = generation + 1 RETURNING last_id";
const INSERT: &str = "INSERT INTO schemas (id, dataset, format, version, schema, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SELECT_SETTINGS: &str =
    "SELECT compatibility, avro FROM contract_settings WHERE dataset = ?1";
/// Writes the settings; returns a row only when they changed.
const PUT_SETTINGS: &str = "INSERT INTO contract_settings (dataset, compatibility, avro) \
     VALUES (?1, ?2, ?3) \
     ON CONFLICT (dataset) DO UPDATE SET compatibility = excluded.compatibility, \
     avro = excluded.avro \
     WHERE contract_settings.compatibility IS NOT excluded.compatibility \
     OR contract_settings.avro IS NOT excluded.avro \
     RETURNING 1";
/// Sets the store-wide mode and raises the generation when it changed.
const PUT_DEFAULT: &str = "UPDATE schema_registry \
     SET default_compatibility = ?1, generation = generation + 1 \
     WHERE default_compatibility IS NOT ?1";
const BUMP: &str = "UPDATE schema_registry SET generation = generation + 1";
const SELECT_DEFAULT: &str = "SELECT default_compatibility FROM schema_registry";
const SELECT_GENERATION: &str = "SELECT generation FROM schema_registry";

fn schema_row(row: &Row<'_>) -> rusqlite::Result<(i64, String, String, i64, String, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn to_schema(row: (i64, String, String, i64, String, i64)) -> Result<StoredSchema, StoreError> {
    let (id, dataset, format, version, schema, created_at) = row;
    stored_schema_from_row(id, dataset, &format, version, schema, created_at)
}

fn put_in_transaction(
    conn: &mut Connection,
    dataset: &DatasetName,
    format: SchemaFormat,
    schema: String,
    expected_latest: u32,
) -> Result<SchemaPut, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let latest = tx
        .prepare_cached(SELECT_LATEST)?
        .query_row(params![dataset.as_str(), format.as_str()], schema_row)
        .optional()?
        .map(to_schema)
        .transpose()?;
    let version = match decide_put(latest, &schema, expected_latest) {
        Ok(put) => return Ok(put),
        Err(version) => version,
    };
    let id: i64 = tx
        .prepare_cached(NEXT_ID)?
        .query_row([], |row| row.get(0))?;
    let created_at = now_micros();
    tx.prepare_cached(INSERT)?.execute(params![
        id,
        dataset.as_str(),
        format.as_str(),
        i64::from(version),
        schema,
        created_at
    ])?;
    // Built before the commit: a row that does not convert is not stored.
    let stored = stored_schema_from_row(
        id,
        dataset.to_string(),
        format.as_str(),
        i64::from(version),
        schema,
        created_at,
    )?;
    tx.commit()?;
    Ok(SchemaPut::Created(stored))
}

#[async_trait]
impl SchemaStore for SqliteStore {
    async fn put_schema(
        &self,
        dataset: &DatasetName,
        format: SchemaFormat,
        schema: &str,
        expected_latest: u32,
    ) -> Result<SchemaPut, StoreError> {
        let (dataset, schema) = (dataset.clone(), schema.to_owned());
        self.write(move |conn| put_in_transaction(conn, &dataset, format, schema, expected_latest))
            .await
    }

    async fn schema_versions(
        &self,
        dataset: &DatasetName,
        format: SchemaFormat,
    ) -> Result<Vec<StoredSchema>, StoreError> {
        let dataset = dataset.clone();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_VERSIONS)?
                .query_map(params![dataset.as_str(), format.as_str()], schema_row)?
                .map(|row| to_schema(row?))
                .collect()
        })
        .await
    }

    async fn schema_by_id(&self, id: u32) -> Result<Option<StoredSchema>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(SELECT_BY_ID)?
                .query_row([i64::from(id)], schema_row)
                .optional()?
                .map(to_schema)
                .transpose()
        })
        .await
    }

    async fn contract_settings(
        &self,
        dataset: &DatasetName,
    ) -> Result<ContractSettings, StoreError> {
        let dataset = dataset.clone();
        self.read(move |conn| {
            let found: Option<(Option<String>, bool)> = conn
                .prepare_cached(SELECT_SETTINGS)?
                .query_row([dataset.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            Ok(found
                .map(|(compatibility, avro)| ContractSettings {
                    compatibility,
                    avro,
                })
                .unwrap_or_default())
        })
        .await
    }

    async fn set_contract_settings(
        &self,
        dataset: &DatasetName,
        settings: &ContractSettings,
    ) -> Result<(), StoreError> {
        let (dataset, settings) = (dataset.clone(), settings.clone());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx
                .prepare_cached(PUT_SETTINGS)?
                .query_row(
                    params![dataset.as_str(), settings.compatibility, settings.avro],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if changed {
                tx.prepare_cached(BUMP)?.execute([])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn default_compatibility(&self) -> Result<Option<String>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(SELECT_DEFAULT)?
                .query_row([], |row| row.get(0))?)
        })
        .await
    }

    async fn set_default_compatibility(&self, mode: &str) -> Result<(), StoreError> {
        let mode = mode.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(PUT_DEFAULT)?.execute([mode])?;
            Ok(())
        })
        .await
    }

    async fn schemas_generation(&self) -> Result<u64, StoreError> {
        self.read(move |conn| {
            let generation: i64 = conn
                .prepare_cached(SELECT_GENERATION)?
                .query_row([], |row| row.get(0))?;
            crate::rows::to_u64("schemas generation", generation)
        })
        .await
    }
}
