//! A sink's table in the consumer's database, behind one trait ([`SinkTable`]) with a backend
//! per database ([`super::postgres`], [`super::sqlite`]), and what both share: the table's
//! shape, and how a feed record becomes a row.
//!
//! This module never decides what to deliver (that is [`super::deliver`]); a table only writes
//! what it is given, under its guards.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use tenantsync_core::url::StoreUrl;
use tenantsync_core::{DatasetName, TenantId};
use tenantsync_store::{FeedPosition, FeedRecord};

use super::definition::{ColumnType, Definition};
use crate::PushError;

/// A sink's table and tenantsync's own bookkeeping beside it, in the sink's database.
///
/// # Contract
///
/// - [`prepare`](Self::prepare) creates, when absent, the data table (`tenant`, `id`,
///   `version`, `data`, `updated_at`, then the definition's extra columns; primary key
///   `(tenant, id)`) and tenantsync's tables `tenantsync_sink_progress` and
///   `tenantsync_sink_fence`. Creating the data table deletes, in the same transaction, every
///   progress row that refers to it (a table made anew must be filled anew), and progress rows
///   of this sink that refer to another table or dataset are deleted too (the definition
///   changed). An existing data table of another shape is refused with [`PushError::Table`],
///   saying what differs (a missing column, a wrong type, a wrong primary key); columns the
///   consumer added are allowed when they can be left out of an insert (nullable or with a
///   default). It is idempotent, and concurrent calls are serialised.
/// - [`progress`](Self::progress) is the position per tenant that the rows in the table
///   correspond to: everything before it is written.
/// - [`write`](Self::write) is one transaction, all or nothing: it (a) raises the sink's fence
///   to `epoch`, failing with [`PushError::Fenced`] if the fence is already above (another
///   instance took the sink over; claim epochs rise across re-creations of a target), (b) with
///   `reset`, deletes the tenant's rows first, (c) upserts each live record unless its row holds
///   the same or a newer version, and deletes each tombstone's row unless that row is newer
///   (when a record appears more than once, the highest version counts), (d) fills the extra
///   columns from `data`'s top-level fields ([`extra_value`]), and (e) stores `next` as the
///   tenant's position. So the table never goes back in version, a write repeated after a crash
///   changes nothing, and the position never runs ahead of the rows.
/// - Errors carry their class (`Classify`): a lost connection is transient, and the next call
///   connects again.
#[async_trait]
pub trait SinkTable: Send + Sync {
    async fn prepare(&self) -> Result<(), PushError>;

    async fn progress(&self) -> Result<HashMap<TenantId, FeedPosition>, PushError>;

    /// Writes several tenants' pages (distinct tenants) in ONE transaction, each as
    /// [`write`](Self::write) describes: the fence is raised once, and every tenant's rows and
    /// position commit together or not at all.
    async fn write_all(&self, epoch: u64, writes: &[TenantWrite<'_>]) -> Result<(), PushError>;

    /// One tenant's page: `write_all` with one write.
    async fn write(
        &self,
        epoch: u64,
        tenant: &TenantId,
        reset: bool,
        records: &[FeedRecord],
        next: FeedPosition,
    ) -> Result<(), PushError> {
        self.write_all(
            epoch,
            &[TenantWrite {
                tenant,
                reset,
                records,
                next,
            }],
        )
        .await
    }
}

/// One tenant's page for [`SinkTable::write_all`].
#[derive(Debug, Clone, Copy)]
pub struct TenantWrite<'a> {
    pub tenant: &'a TenantId,
    /// Delete the tenant's rows first.
    pub reset: bool,
    pub records: &'a [FeedRecord],
    /// The tenant's position after these records.
    pub next: FeedPosition,
}

/// What a backend needs of the definition, and the sink's name (its progress rows and fence
/// are keyed by it).
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub sink: String,
    pub dataset: DatasetName,
    /// `table` or `schema.table`, as defined.
    pub table: String,
    /// Extra columns, by name.
    pub columns: Vec<(String, ColumnType, String)>,
}

impl TableSpec {
    pub fn new(sink: &str, definition: &Definition) -> Self {
        Self {
            sink: sink.to_owned(),
            dataset: definition.dataset.clone(),
            table: definition.table.clone(),
            columns: definition
                .columns
                .iter()
                .map(|(name, c)| (name.clone(), c.ty, c.field.clone()))
                .collect(),
        }
    }

    /// The table's name quoted for SQL (quoted because a plain identifier may still be a
    /// reserved word), and the schema part of it, quoted, with its dot (or nothing).
    pub fn quoted(&self) -> (String, String) {
        match self.table.split_once('.') {
            Some((schema, table)) => (
                format!("\"{schema}\".\"{table}\""),
                format!("\"{schema}\"."),
            ),
            None => (format!("\"{}\"", self.table), String::new()),
        }
    }
}

/// The SQL of one sink's table, built once by its backend from the definition's names (which
/// were checked when the sink was defined, and are quoted in it).
pub struct Statements {
    /// The data table's name, quoted.
    pub table: String,
    /// Creates tenantsync's own tables when absent.
    pub own_tables: String,
    pub create_table: String,
    /// Deletes the progress rows that refer to a table just created (`$1`: its name).
    pub clear_new_table: String,
    /// Deletes this sink's progress rows of another table or dataset.
    pub drop_stale: String,
    pub read_progress: String,
    /// Raises the sink's fence and returns its epoch.
    pub fence: String,
    /// Deletes a tenant's rows.
    pub reset: String,
    pub upsert: String,
    pub delete: String,
    pub write_progress: String,
}

/// Opens the sink's table (connections are made when first needed).
pub async fn open(sink: &str, definition: &Definition) -> Result<Box<dyn SinkTable>, PushError> {
    let spec = TableSpec::new(sink, definition);
    match definition.store_url().map_err(PushError::Definition)? {
        StoreUrl::Postgres(url) => Ok(Box::new(super::postgres::PostgresTable::new(&url, spec)?)),
        StoreUrl::Sqlite(path) => Ok(Box::new(
            super::sqlite::SqliteTable::open(path, spec).await?,
        )),
    }
}

/// A column of an existing table, as the database describes it.
#[derive(Debug, Clone)]
pub struct FoundColumn {
    pub name: String,
    /// The type as the backend compares it (PostgreSQL's `format_type`, SQLite's affinity).
    pub ty: String,
    /// Whether an insert may leave it out (nullable, or with a default).
    pub optional: bool,
}

/// What differs between the table found and the one wanted (`wanted`: name and type, in
/// order), or `None` when it fits.
pub fn shape_difference(
    table: &str,
    wanted: &[(String, String)],
    found: &[FoundColumn],
    primary_key: &[String],
) -> Option<String> {
    let mut problems = Vec::new();
    for (name, ty) in wanted {
        match found.iter().find(|c| &c.name == name) {
            None => problems.push(format!("column {name} is missing")),
            Some(c) if !c.ty.eq_ignore_ascii_case(ty) => {
                problems.push(format!("column {name} is {}, not {ty}", c.ty))
            }
            Some(_) => {}
        }
    }
    for c in found {
        if !c.optional && !wanted.iter().any(|(name, _)| name == &c.name) {
            problems.push(format!(
                "column {} is not tenantsync's and cannot be left out of an insert (not null, \
                 no default)",
                c.name
            ));
        }
    }
    if primary_key != ["tenant", "id"] {
        let found = if primary_key.is_empty() {
            "it has none".to_owned()
        } else {
            format!("it is ({})", primary_key.join(", "))
        };
        problems.push(format!("the primary key must be (tenant, id); {found}"));
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "table {table} exists with another shape: {}",
            problems.join("; ")
        ))
    }
}

/// An extra column's value for one row.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtraValue {
    /// Text, or JSON text (for [`ColumnType::Json`]).
    Text(Option<String>),
    Bigint(Option<i64>),
    Double(Option<f64>),
    Boolean(Option<bool>),
}

/// The value of an extra column of type `ty` from `data`'s top-level `field`: NULL when the
/// field is missing, JSON null, or of another type than the column takes.
pub fn extra_value(ty: ColumnType, value: Option<&Value>) -> ExtraValue {
    let value = value.filter(|v| !v.is_null());
    match ty {
        ColumnType::Text => ExtraValue::Text(value.map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })),
        ColumnType::Json => ExtraValue::Text(value.map(Value::to_string)),
        ColumnType::Bigint => ExtraValue::Bigint(value.and_then(Value::as_i64)),
        ColumnType::Double => ExtraValue::Double(value.and_then(Value::as_f64)),
        ColumnType::Boolean => ExtraValue::Boolean(value.and_then(Value::as_bool)),
    }
}

/// A live record as a row.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub version: i64,
    /// JSON text.
    pub data: String,
    pub updated_at: DateTime<Utc>,
    /// In the order of [`TableSpec::columns`].
    pub extras: Vec<ExtraValue>,
}

/// What one write does: rows to upsert and tombstones (id, version) to apply.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub rows: Vec<Row>,
    pub tombstones: Vec<(String, i64)>,
}

impl Changes {
    /// The records as rows and tombstones, one per id (the highest version).
    pub fn of(spec: &TableSpec, records: &[FeedRecord]) -> Self {
        let mut latest: HashMap<&str, &FeedRecord> = HashMap::new();
        for r in records {
            let entry = latest.entry(r.record.id.as_str()).or_insert(r);
            if entry.record.version < r.record.version {
                *entry = r;
            }
        }
        let mut latest: Vec<&FeedRecord> = latest.into_values().collect();
        latest.sort_by_key(|r| r.seq);
        let mut changes = Changes::default();
        for r in latest {
            let r = &r.record;
            let version = i64::try_from(r.version).unwrap_or(i64::MAX);
            match &r.data {
                Some(data) => changes.rows.push(Row {
                    id: r.id.as_str().to_owned(),
                    version,
                    data: Value::Object(data.clone()).to_string(),
                    updated_at: r.updated_at,
                    extras: spec
                        .columns
                        .iter()
                        .map(|(_, ty, field)| extra_value(*ty, data.get(field)))
                        .collect(),
                }),
                None => changes.tombstones.push((r.id.as_str().to_owned(), version)),
            }
        }
        changes
    }
}

/// A time as SQLite sink tables hold it: RFC 3339, UTC, to the microsecond (so that text order
/// is time order).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A stored position's seq, which the database keeps as a signed 64-bit integer.
pub fn to_i64(seq: u64) -> Result<i64, PushError> {
    i64::try_from(seq).map_err(|_| {
        PushError::sink(
            tenantsync_core::ErrorClass::Permanent,
            format!("position {seq} does not fit a signed 64-bit integer"),
        )
    })
}

/// A position as read back from the database.
pub fn position(next_seq: i64, live_from: i64) -> FeedPosition {
    FeedPosition {
        next_seq: next_seq.max(0) as u64,
        live_from: live_from.max(0) as u64,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn extra_values_take_their_type_or_null() {
        let v = json!({"s": "x", "n": 3, "f": 1.5, "b": true, "o": {"a": 1}, "z": null});
        let get = |f: &str| v.get(f);
        assert_eq!(
            extra_value(ColumnType::Text, get("s")),
            ExtraValue::Text(Some("x".into()))
        );
        assert_eq!(
            extra_value(ColumnType::Text, get("n")),
            ExtraValue::Text(Some("3".into()))
        );
        assert_eq!(
            extra_value(ColumnType::Bigint, get("n")),
            ExtraValue::Bigint(Some(3))
        );
        assert_eq!(
            extra_value(ColumnType::Bigint, get("f")),
            ExtraValue::Bigint(None)
        );
        assert_eq!(
            extra_value(ColumnType::Double, get("n")),
            ExtraValue::Double(Some(3.0))
        );
        assert_eq!(
            extra_value(ColumnType::Boolean, get("s")),
            ExtraValue::Boolean(None)
        );
        assert_eq!(
            extra_value(ColumnType::Json, get("o")),
            ExtraValue::Text(Some("{\"a\":1}".into()))
        );
        assert_eq!(
            extra_value(ColumnType::Json, get("z")),
            ExtraValue::Text(None)
        );
        assert_eq!(
            extra_value(ColumnType::Text, get("missing")),
            ExtraValue::Text(None)
        );
    }

    #[test]
    fn shape_differences_are_named() {
        let wanted = vec![
            ("tenant".to_owned(), "text".to_owned()),
            ("version".to_owned(), "bigint".to_owned()),
        ];
        let col = |name: &str, ty: &str, optional| FoundColumn {
            name: name.into(),
            ty: ty.into(),
            optional,
        };
        let pk = vec!["tenant".to_owned(), "id".to_owned()];
        assert_eq!(
            shape_difference(
                "t",
                &wanted,
                &[
                    col("tenant", "text", false),
                    col("version", "bigint", false)
                ],
                &pk
            ),
            None
        );
        let found = [
            col("tenant", "text", false),
            col("version", "integer", false),
            col("mine", "text", false),
        ];
        let message = shape_difference("t", &wanted, &found[..1], &["id".to_owned()]).unwrap();
        assert!(message.contains("column version is missing"), "{message}");
        assert!(message.contains("primary key"), "{message}");
        let message = shape_difference("t", &wanted, &found, &pk).unwrap();
        assert!(
            message.contains("version is integer, not bigint"),
            "{message}"
        );
        assert!(message.contains("column mine"), "{message}");
    }
}
