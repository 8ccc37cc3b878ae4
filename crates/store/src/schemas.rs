//! The schema concern: every dataset's data contract, shared by every instance on the store.
//! Schema versions per dataset and format (JSON Schema, Avro), each with an id unique across
//! the store (the id the Avro wire format carries), and per dataset its compatibility mode and
//! whether its states are also published as Avro.
//!
//! Schemas are text this module never parses, and modes are strings it never interprets: the
//! rules (compatibility, derivation) are the schema crate's.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::DatasetName;

use crate::{StoreError, rows};

/// The language of a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SchemaFormat {
    /// JSON Schema (draft 2020-12) of a record's data.
    Json,
    /// An Avro schema of a record's data.
    Avro,
}

impl SchemaFormat {
    /// `json` or `avro`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaFormat::Json => "json",
            SchemaFormat::Avro => "avro",
        }
    }
}

/// One version of one dataset's schema in one format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSchema {
    /// Unique across the store, every dataset and format; never reused, also after deletes.
    /// Starts at 1.
    pub id: u32,
    pub dataset: DatasetName,
    pub format: SchemaFormat,
    /// 1 for the dataset's first schema in this format, one more per version after.
    pub version: u32,
    /// The schema's text, as given.
    pub schema: String,
    /// Stored to the microsecond.
    pub created_at: DateTime<Utc>,
}

/// What [`SchemaStore::put_schema`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaPut {
    /// Stored as the new latest version.
    Created(StoredSchema),
    /// The latest version has this very text; nothing changed.
    Existing(StoredSchema),
    /// The latest version was not the one expected (another registration came first); nothing
    /// changed.
    Conflict,
}

/// A dataset's contract settings. Absent settings read as the defaults: no mode of its own
/// (the store-wide one applies) and no Avro.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContractSettings {
    /// The dataset's compatibility mode, as the schema crate spells it; `None`: the store-wide
    /// mode applies.
    pub compatibility: Option<String>,
    /// Whether states are also published to the dataset's Avro state topic.
    pub avro: bool,
}

/// # Contract
///
/// - **Versions.** [`put_schema`](SchemaStore::put_schema) adds a version only when the latest
///   version of `(dataset, format)` is `expected_latest` (0: none yet), atomically, so two
///   instances registering at once never both succeed on the same version; text equal to the
///   latest version's is `Existing` whatever `expected_latest` is.
/// - **Ids** are assigned at creation, unique across the store, increasing, never reused;
///   [`schema_by_id`](SchemaStore::schema_by_id) finds any version by its id.
/// - **Generation.** [`schemas_generation`](SchemaStore::schemas_generation) changes whenever
///   a version is created or settings change anywhere, so a cache can tell that it is stale
///   with one cheap read.
/// - Every call is atomic; all may be called concurrently from many instances.
#[async_trait]
pub trait SchemaStore: Send + Sync {
    async fn put_schema(
        &self,
        dataset: &DatasetName,
        format: SchemaFormat,
        schema: &str,
        expected_latest: u32,
    ) -> Result<SchemaPut, StoreError>;

    /// Every version of `(dataset, format)`, oldest first.
    async fn schema_versions(
        &self,
        dataset: &DatasetName,
        format: SchemaFormat,
    ) -> Result<Vec<StoredSchema>, StoreError>;

    async fn schema_by_id(&self, id: u32) -> Result<Option<StoredSchema>, StoreError>;

    /// The dataset's settings (the defaults when never set).
    async fn contract_settings(
        &self,
        dataset: &DatasetName,
    ) -> Result<ContractSettings, StoreError>;

    async fn set_contract_settings(
        &self,
        dataset: &DatasetName,
        settings: &ContractSettings,
    ) -> Result<(), StoreError>;

    /// The store-wide compatibility mode; `None` when never set (the schema crate's default
    /// applies).
    async fn default_compatibility(&self) -> Result<Option<String>, StoreError>;

    async fn set_default_compatibility(&self, mode: &str) -> Result<(), StoreError>;

    /// See the contract's **Generation**.
    async fn schemas_generation(&self) -> Result<u64, StoreError>;
}

/// A row of (id, dataset, format, version, schema, created_at), as both backends store it.
pub(crate) fn stored_schema_from_row(
    id: i64,
    dataset: String,
    format: &str,
    version: i64,
    schema: String,
    created_at: i64,
) -> Result<StoredSchema, StoreError> {
    let corrupt = |what: &'static str, detail: String| StoreError::Corrupt { what, detail };
    Ok(StoredSchema {
        id: u32::try_from(id).map_err(|_| corrupt("schema id", format!("{id} out of range")))?,
        dataset: DatasetName::new(dataset).map_err(|e| corrupt("schema dataset", e.to_string()))?,
        format: match format {
            "json" => SchemaFormat::Json,
            "avro" => SchemaFormat::Avro,
            other => {
                return Err(corrupt(
                    "schema format",
                    format!("unknown format {other:?}"),
                ));
            }
        },
        version: u32::try_from(version)
            .map_err(|_| corrupt("schema version", format!("{version} out of range")))?,
        schema,
        created_at: rows::from_micros("schema created_at", created_at)?,
    })
}

/// What a put decides from the latest version, read under the backend's lock: `Ok` with the
/// outcome when nothing is to be written, `Err(version)` with the version to create.
pub(crate) fn decide_put(
    latest: Option<StoredSchema>,
    schema: &str,
    expected_latest: u32,
) -> Result<SchemaPut, u32> {
    let current = latest.as_ref().map_or(0, |l| l.version);
    match latest {
        Some(latest) if latest.schema == schema => Ok(SchemaPut::Existing(latest)),
        _ if current != expected_latest => Ok(SchemaPut::Conflict),
        _ => Err(current + 1),
    }
}

/// The time a new version is stored with: now, to the microsecond (what both backends keep).
pub(crate) fn now_micros() -> i64 {
    rows::to_micros(Utc::now())
}
