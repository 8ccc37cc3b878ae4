//! The schema concern on PostgreSQL.
//!
//! Every write locks the one row of `schema_registry` first: a put with `FOR UPDATE` before it
//! reads the latest version, a settings change with the update that raises the generation.
//! Writes of this concern thus happen one after the other store-wide: a racer's read of the
//! latest version waits for the first put's commit (and, in READ COMMITTED, sees it), so two
//! puts never create the same version, and ids, taken from `last_id` under the lock, rise in
//! commit order. Registrations are rare; reads take no lock.

use async_trait::async_trait;
use tenantsync_core::DatasetName;
use tokio_postgres::Row;

use super::PostgresStore;
use crate::rows;
use crate::schemas::{decide_put, now_micros, stored_schema_from_row};
use crate::{ContractSettings, SchemaFormat, SchemaPut, SchemaStore, StoreError, StoredSchema};

const LOCK: &str = "SELECT last_id FROM schema_registry FOR UPDATE";
const SELECT_LATEST: &str = "SELECT id, dataset, format, version, schema, created_at \
     FROM schemas WHERE dataset = $1 AND format = $2 ORDER BY version DESC LIMIT 1";
const SELECT_VERSIONS: &str = "SELECT id, dataset, format, version, schema, created_at \
     FROM schemas WHERE dataset = $1 AND format = $2 ORDER BY version";
const SELECT_BY_ID: &str = "SELECT id, dataset, format, version, schema, created_at \
     FROM schemas WHERE id = $1";
const NEXT_ID: &str = "UPDATE schema_registry \
     SET last_id = last_id + 1, generation = generation + 1 RETURNING last_id";
const INSERT: &str = "INSERT INTO schemas (id, dataset, format, version, schema, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";
const SELECT_SETTINGS: &str =
    "SELECT compatibility, avro FROM contract_settings WHERE dataset = $1";
/// Writes the settings and, when they changed, raises the generation, in one statement.
const PUT_SETTINGS: &str = "WITH changed AS (\
       INSERT INTO contract_settings (dataset, compatibility, avro) VALUES ($1, $2, $3) \
       ON CONFLICT (dataset) DO UPDATE SET compatibility = excluded.compatibility, \
       avro = excluded.avro \
       WHERE (contract_settings.compatibility, contract_settings.avro) \
         IS DISTINCT FROM (excluded.compatibility, excluded.avro) \
       RETURNING 1) \
     UPDATE schema_registry SET generation = generation + 1 \
     WHERE EXISTS (SELECT 1 FROM changed)";
const PUT_DEFAULT: &str = "UPDATE schema_registry \
     SET default_compatibility = $1, generation = generation + 1 \
     WHERE default_compatibility IS DISTINCT FROM $1";
const SELECT_DEFAULT: &str = "SELECT default_compatibility FROM schema_registry";
const SELECT_GENERATION: &str = "SELECT generation FROM schema_registry";

/// A row of (id, dataset, format, version, schema, created_at).
fn schema_row(row: &Row) -> Result<StoredSchema, StoreError> {
    let format: String = row.try_get(2)?;
    stored_schema_from_row(
        row.try_get(0)?,
        row.try_get(1)?,
        &format,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
    )
}

#[async_trait]
impl SchemaStore for PostgresStore {
    async fn put_schema(
        &self,
        dataset: &DatasetName,
        format: SchemaFormat,
        schema: &str,
        expected_latest: u32,
    ) -> Result<SchemaPut, StoreError> {
        let (name, format_name) = (dataset.as_str(), format.as_str());
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (lock, latest, next_id, insert) = tokio::try_join!(
            biased;
            tx.prepare_cached(LOCK),
            tx.prepare_cached(SELECT_LATEST),
            tx.prepare_cached(NEXT_ID),
            tx.prepare_cached(INSERT),
        )?;
        // Pipelined; the read runs once the lock is held, on a snapshot taken then.
        let (_, latest) = tokio::try_join!(
            biased;
            async { tx.query_one(&lock, &[]).await },
            async { tx.query_opt(&latest, &[&name, &format_name]).await },
        )?;
        let latest = latest.as_ref().map(schema_row).transpose()?;
        let version = match decide_put(latest, schema, expected_latest) {
            Ok(put) => return Ok(put),
            Err(version) => version,
        };
        let id: i64 = tx.query_one(&next_id, &[]).await?.try_get(0)?;
        let created_at = now_micros();
        // Built before the insert: a row that does not convert is not stored.
        let stored = stored_schema_from_row(
            id,
            dataset.to_string(),
            format_name,
            i64::from(version),
            schema.to_owned(),
            created_at,
        )?;
        tx.execute(
            &insert,
            &[
                &id,
                &name,
                &format_name,
                &i64::from(version),
                &schema,
                &created_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(SchemaPut::Created(stored))
    }

    async fn schema_versions(
        &self,
        dataset: &DatasetName,
        format: SchemaFormat,
    ) -> Result<Vec<StoredSchema>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_VERSIONS).await?;
        client
            .query(&stmt, &[&dataset.as_str(), &format.as_str()])
            .await?
            .iter()
            .map(schema_row)
            .collect()
    }

    async fn schema_by_id(&self, id: u32) -> Result<Option<StoredSchema>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_BY_ID).await?;
        client
            .query_opt(&stmt, &[&i64::from(id)])
            .await?
            .as_ref()
            .map(schema_row)
            .transpose()
    }

    async fn contract_settings(
        &self,
        dataset: &DatasetName,
    ) -> Result<ContractSettings, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_SETTINGS).await?;
        Ok(match client.query_opt(&stmt, &[&dataset.as_str()]).await? {
            Some(row) => ContractSettings {
                compatibility: row.try_get(0)?,
                avro: row.try_get(1)?,
            },
            None => ContractSettings::default(),
        })
    }

    async fn set_contract_settings(
        &self,
        dataset: &DatasetName,
        settings: &ContractSettings,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(PUT_SETTINGS).await?;
        client
            .execute(
                &stmt,
                &[&dataset.as_str(), &settings.compatibility, &settings.avro],
            )
            .await?;
        Ok(())
    }

    async fn default_compatibility(&self) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_DEFAULT).await?;
        Ok(client.query_one(&stmt, &[]).await?.try_get(0)?)
    }

    async fn set_default_compatibility(&self, mode: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(PUT_DEFAULT).await?;
        client.execute(&stmt, &[&mode]).await?;
        Ok(())
    }

    async fn schemas_generation(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_GENERATION).await?;
        rows::to_u64(
            "schemas generation",
            client.query_one(&stmt, &[]).await?.try_get(0)?,
        )
    }
}
