//! What a database sink is: `PUT /v1/sinks/{name}`'s body, checked without I/O, and the
//! definition stored from it.
//!
//! The sink's URL may hold a password: [`Definition::shown`] is the only form that leaves the
//! process in a reply or a log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tenantsync_core::DatasetName;
use tenantsync_core::url::StoreUrl;
use tenantsync_store::TenantSelection;

use crate::definition::{DefinitionError, Tenants};
use crate::follow::Scope;

/// The columns every sink table has, in this order.
pub const BASE_COLUMNS: [&str; 5] = ["tenant", "id", "version", "data", "updated_at"];

/// Which database a sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Postgres,
    Sqlite,
}

/// The type of an extra column: how a field of `data` is stored in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// A string field as is; any other JSON value as its JSON text.
    Text,
    /// An integer (64-bit); other values are stored as NULL.
    Bigint,
    /// A number (64-bit float); other values are stored as NULL.
    Double,
    /// `true`/`false`; other values are stored as NULL.
    Boolean,
    /// The field's JSON (PostgreSQL `jsonb`, SQLite JSON text).
    Json,
}

/// An extra column: `"price"` (the field, as JSON) or `{"field": "price", "type": "double"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnSpec {
    Field(String),
    Typed {
        field: String,
        #[serde(rename = "type")]
        ty: ColumnType,
    },
}

/// An extra column as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub field: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

/// `PUT /v1/sinks/{name}`: `{"kind", "url", "dataset", "tenants", "table", "columns"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    pub kind: SinkKind,
    pub url: String,
    pub dataset: DatasetName,
    pub tenants: Tenants,
    pub table: String,
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnSpec>,
    /// A disabled sink keeps its position and writes nothing until enabled again.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

/// A sink as stored (JSON in the master store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub kind: SinkKind,
    /// As given, password included: for the driver only, never for a message.
    pub url: String,
    pub dataset: DatasetName,
    pub tenants: Tenants,
    /// `table` or `schema.table`.
    pub table: String,
    /// Extra columns by name, each a field of `data`.
    pub columns: BTreeMap<String, Column>,
    pub enabled: bool,
}

impl Definition {
    pub fn from_spec(spec: SinkSpec) -> Result<Definition, DefinitionError> {
        let url = spec
            .url
            .parse::<StoreUrl>()
            .map_err(|e| DefinitionError::new("url", e.to_string()))?;
        match (spec.kind, &url) {
            (SinkKind::Postgres, StoreUrl::Postgres(_))
            | (SinkKind::Sqlite, StoreUrl::Sqlite(_)) => {}
            _ => {
                return Err(DefinitionError::new(
                    "url",
                    "a postgres sink takes a postgres:// URL, a sqlite sink a sqlite://FILE URL",
                ));
            }
        }
        let selection = spec.tenants.selection()?;
        let parts: Vec<&str> = spec.table.split('.').collect();
        if parts.len() > 2 || (parts.len() == 2 && spec.kind == SinkKind::Sqlite) {
            return Err(DefinitionError::new(
                "table",
                "a table name, or schema.table (PostgreSQL only)",
            ));
        }
        for part in parts {
            identifier("table", part)?;
        }
        let mut columns = BTreeMap::new();
        for (name, column) in spec.columns {
            let field = format!("columns.{name}");
            identifier(&field, &name)?;
            if BASE_COLUMNS.contains(&name.as_str()) || name.starts_with("tenantsync_") {
                return Err(DefinitionError::new(
                    field,
                    "the name of a column tenantsync writes itself",
                ));
            }
            let column = match column {
                ColumnSpec::Field(field) => Column {
                    field,
                    ty: ColumnType::Json,
                },
                ColumnSpec::Typed { field, ty } => Column { field, ty },
            };
            if column.field.is_empty() {
                return Err(DefinitionError::new(
                    field,
                    "name the field of data to copy",
                ));
            }
            columns.insert(name, column);
        }
        Ok(Definition {
            kind: spec.kind,
            url: spec.url,
            dataset: spec.dataset,
            tenants: Tenants::from_selection(&selection),
            table: spec.table,
            columns,
            enabled: spec.enabled,
        })
    }

    /// Parses a stored definition.
    pub fn parse(text: &str) -> Result<Definition, String> {
        serde_json::from_str(text)
            .map_err(|e| format!("the stored sink definition does not parse: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a definition serializes")
    }

    /// The URL, parsed (it was checked when the sink was defined).
    pub fn store_url(&self) -> Result<StoreUrl, String> {
        self.url.parse::<StoreUrl>().map_err(|e| e.to_string())
    }

    pub fn scope(&self) -> Scope {
        Scope {
            datasets: vec![self.dataset.clone()],
            tenants: self
                .tenants
                .selection()
                .unwrap_or(TenantSelection::Only(Vec::new())),
        }
    }

    /// The definition as answers and logs show it: the URL without its password.
    pub fn shown(&self) -> Value {
        let url = self
            .store_url()
            .map_or_else(|_| "(invalid)".to_owned(), |u| u.to_string());
        json!({
            "kind": self.kind,
            "url": url,
            "dataset": self.dataset,
            "tenants": self.tenants,
            "table": self.table,
            "columns": self.columns,
            "enabled": self.enabled,
        })
    }
}

/// A plain SQL identifier: lowercase letters, digits and `_`, not starting with a digit, at most
/// 63 bytes, so it needs no quoting in either database.
fn identifier(field: &str, name: &str) -> Result<(), DefinitionError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DefinitionError::new(
            field,
            format!("{name:?} is not a plain identifier (a-z, 0-9, '_'; at most 63 bytes)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<Definition, DefinitionError> {
        Definition::from_spec(serde_json::from_value(body).unwrap())
    }

    #[test]
    fn a_sink_shows_no_password() {
        let d = parse(json!({"kind": "postgres", "url": "postgres://u:hunter2@db/app", "dataset": "items", "tenants": "*", "table": "public.items", "columns": {"price": {"field": "price", "type": "double"}, "tags": "tags"}})).unwrap();
        assert!(!d.shown().to_string().contains("hunter2"));
        assert_eq!(d.columns["tags"].ty, ColumnType::Json);
        let again = Definition::parse(&d.to_json()).unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                json!({"kind": "postgres", "url": "sqlite://x.db", "dataset": "a", "tenants": "*", "table": "t"}),
                "url",
            ),
            (
                json!({"kind": "sqlite", "url": "sqlite://x.db", "dataset": "a", "tenants": "*", "table": "s.t"}),
                "table",
            ),
            (
                json!({"kind": "sqlite", "url": "sqlite://x.db", "dataset": "a", "tenants": "*", "table": "T; drop"}),
                "table",
            ),
            (
                json!({"kind": "sqlite", "url": "sqlite://x.db", "dataset": "a", "tenants": [], "table": "t"}),
                "tenants",
            ),
            (
                json!({"kind": "sqlite", "url": "sqlite://x.db", "dataset": "a", "tenants": "*", "table": "t", "columns": {"version": "v"}}),
                "columns.version",
            ),
            (
                json!({"kind": "sqlite", "url": "sqlite://x.db", "dataset": "a", "tenants": "*", "table": "t", "columns": {"Bad": "v"}}),
                "columns.Bad",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(parse(body.clone()).unwrap_err().field, field, "{body}");
        }
    }
}
