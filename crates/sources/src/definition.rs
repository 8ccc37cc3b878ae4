//! What a source is: its name and its definition (`PUT /v1/sources/{name}`, or a `[sources.NAME]`
//! table of the config file), parsed and checked without I/O. A definition that parses here may
//! still fail the check that connects (`check.rs`).
//!
//! A definition may hold a password (in the outbox's URL, in a Kafka option); [`Definition::shown`]
//! is the only form that leaves the process in a reply or a log.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tenantsync_core::url::PostgresUrl;
use tenantsync_core::{DatasetName, TenantId};

/// A definition refused before any I/O: `field` names where in the JSON (`columns.tenant`,
/// `tables.public.items.dataset`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DefinitionError {
    pub field: String,
    pub reason: String,
}

impl DefinitionError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A source's name: 1 to 40 of `a-z`, `0-9` and `_`, starting with a letter, so that it fits
/// in PostgreSQL replication slot and publication names (`tenantsync_{name}_{shard}`) and Kafka
/// group ids unchanged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceName(String);

impl SourceName {
    pub const MAX_LEN: usize = 40;

    pub fn new(name: impl Into<String>) -> Result<Self, DefinitionError> {
        let name = name.into();
        let valid = name.len() <= Self::MAX_LEN
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(Self(name))
        } else {
            Err(DefinitionError::new(
                "name",
                format!(
                    "a source name is 1 to {} characters of a-z, 0-9 and '_', starting with a \
                     letter",
                    Self::MAX_LEN
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most shards an outbox may be split into.
pub const MAX_SHARDS: u32 = 64;

/// A source's definition, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Definition {
    PostgresOutbox(Outbox),
    Debezium(Debezium),
}

/// `"kind": "postgres-outbox"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbox {
    pub url: PostgresUrl,
    /// Schema and table (`public` when the definition names none).
    pub schema: String,
    pub table: String,
    pub columns: OutboxColumns,
    /// Delete relayed rows from the outbox once they are durable in the changes log.
    pub delete_after_relay: bool,
    /// How many parts the outbox's tenants are split into (by a hash of the tenant), each
    /// relayed by one instance at a time.
    pub shards: u32,
}

/// Column names of the outbox, by role; the defaults follow Debezium's outbox event router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxColumns {
    /// The change id (uuid or text).
    pub id: String,
    /// The dataset.
    pub aggregatetype: String,
    /// The record id.
    pub aggregateid: String,
    /// `upsert`, `patch` or `delete`.
    #[serde(rename = "type")]
    pub op: String,
    /// The record's data (jsonb), or the merge patch; null for a delete.
    pub payload: String,
    pub tenant: String,
    /// Optional in the table: a bigint, null for none.
    pub expected_version: String,
}

impl Default for OutboxColumns {
    fn default() -> Self {
        Self {
            id: "id".into(),
            aggregatetype: "aggregatetype".into(),
            aggregateid: "aggregateid".into(),
            op: "type".into(),
            payload: "payload".into(),
            tenant: "tenant".into(),
            expected_version: "expected_version".into(),
        }
    }
}

impl OutboxColumns {
    /// `(role, column)` of every column, `expected_version` last.
    pub fn all(&self) -> [(&'static str, &str); 7] {
        [
            ("id", &self.id),
            ("aggregatetype", &self.aggregatetype),
            ("aggregateid", &self.aggregateid),
            ("type", &self.op),
            ("payload", &self.payload),
            ("tenant", &self.tenant),
            ("expected_version", &self.expected_version),
        ]
    }
}

/// `"kind": "debezium"`.
#[derive(Debug, Clone)]
pub struct Debezium {
    /// Bootstrap servers of the Kafka cluster Debezium writes to.
    pub kafka: String,
    pub topics: Topics,
    /// librdkafka properties for the consumer (security settings and the like).
    pub kafka_options: BTreeMap<String, String>,
    /// By `schema.table`.
    pub tables: BTreeMap<String, TableMapping>,
}

impl PartialEq for Debezium {
    fn eq(&self, other: &Self) -> bool {
        self.kafka == other.kafka
            && self.topics == other.topics
            && self.kafka_options == other.kafka_options
            && self.tables == other.tables
    }
}

/// Which topics a Debezium source reads.
#[derive(Debug, Clone)]
pub enum Topics {
    List(Vec<String>),
    Pattern(Regex),
}

impl PartialEq for Topics {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Topics::List(a), Topics::List(b)) => a == b,
            (Topics::Pattern(a), Topics::Pattern(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// How one captured table becomes changes of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct TableMapping {
    pub dataset: DatasetName,
    pub tenant: TenantFrom,
    /// Key fields that make the record id, joined with `:` in this order; empty: every field of
    /// the event's key, in its order.
    pub id: Vec<String>,
    /// Columns of `after` kept in the data (all when empty)...
    pub include: Vec<String>,
    /// ...and those dropped.
    pub exclude: Vec<String>,
    pub on_truncate: OnTruncate,
}

/// Where a Debezium row's tenant comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantFrom {
    /// A column of the row (of `after`, or of `before` for a delete).
    Column(String),
    /// The source database's name (`source.db`), through `map` when it names it.
    Database { map: BTreeMap<String, TenantId> },
}

/// What a captured TRUNCATE does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTruncate {
    /// Kept under the source's rejected events, with its reason.
    Reject,
    /// Deletes every record of the tenant in the dataset.
    DeleteTenantRecords,
}

// The JSON forms, checked into the types above by `Definition::parse`.

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum Raw {
    PostgresOutbox {
        url: String,
        #[serde(default = "default_table")]
        table: String,
        #[serde(default)]
        columns: OutboxColumns,
        #[serde(default)]
        delete_after_relay: bool,
        #[serde(default = "one")]
        shards: u32,
    },
    Debezium {
        kafka: String,
        topics: Option<Vec<String>>,
        topic_pattern: Option<String>,
        #[serde(default)]
        kafka_options: BTreeMap<String, String>,
        tables: BTreeMap<String, RawTable>,
    },
}

fn default_table() -> String {
    "outbox".into()
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    dataset: String,
    tenant: RawTenant,
    #[serde(default)]
    id: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    on_truncate: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum RawTenant {
    Column {
        column: String,
    },
    Database {
        from: String,
        #[serde(default)]
        map: BTreeMap<String, String>,
    },
}

/// A PostgreSQL identifier as the outbox may name it: letters, digits, `_` and `$`, not
/// starting with a digit, at most 63 bytes. (Quoted names with other characters are refused
/// rather than quoted wrongly.)
fn identifier(field: &str, name: &str) -> Result<(), DefinitionError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if ok {
        Ok(())
    } else {
        Err(DefinitionError::new(
            field,
            format!(
                "{name:?} is not a plain PostgreSQL identifier (letters, digits, '_', '$'; at \
                 most 63 bytes)"
            ),
        ))
    }
}

impl Definition {
    /// Parses and checks a definition without I/O.
    pub fn parse(json: &Value) -> Result<Self, DefinitionError> {
        if !json.is_object() {
            return Err(DefinitionError::new(
                "body",
                "a source definition is a JSON object with a \"kind\"",
            ));
        }
        match json.get("kind").and_then(Value::as_str) {
            Some("postgres-outbox" | "debezium") => {}
            Some(other) => {
                return Err(DefinitionError::new(
                    "kind",
                    format!("unknown kind {other:?}: \"postgres-outbox\" or \"debezium\""),
                ));
            }
            None => {
                return Err(DefinitionError::new(
                    "kind",
                    "missing: \"postgres-outbox\" or \"debezium\"",
                ));
            }
        }
        let raw: Raw = serde_json::from_value(json.clone())
            .map_err(|e| DefinitionError::new("body", without_values(&e.to_string())))?;
        match raw {
            Raw::PostgresOutbox {
                url,
                table,
                columns,
                delete_after_relay,
                shards,
            } => {
                let url: PostgresUrl = url
                    .parse()
                    .map_err(|e| DefinitionError::new("url", format!("{e}")))?;
                let (schema, table) = match table.split_once('.') {
                    Some((s, t)) => (s.to_owned(), t.to_owned()),
                    None => ("public".to_owned(), table),
                };
                identifier("table", &schema)?;
                identifier("table", &table)?;
                for (role, column) in columns.all() {
                    identifier(&format!("columns.{role}"), column)?;
                }
                if !(1..=MAX_SHARDS).contains(&shards) {
                    return Err(DefinitionError::new(
                        "shards",
                        format!("must be 1 to {MAX_SHARDS}, got {shards}"),
                    ));
                }
                Ok(Definition::PostgresOutbox(Outbox {
                    url,
                    schema,
                    table,
                    columns,
                    delete_after_relay,
                    shards,
                }))
            }
            Raw::Debezium {
                kafka,
                topics,
                topic_pattern,
                kafka_options,
                tables,
            } => {
                if kafka.trim().is_empty() || kafka.contains('@') || kafka.contains("://") {
                    return Err(DefinitionError::new(
                        "kafka",
                        "the bootstrap servers as HOST:PORT[,HOST:PORT...]",
                    ));
                }
                let topics = match (topics, topic_pattern) {
                    (Some(list), None) if !list.is_empty() => Topics::List(list),
                    (None, Some(pattern)) => Topics::Pattern(
                        Regex::new(&format!("^(?:{pattern})$"))
                            .map_err(|e| DefinitionError::new("topic_pattern", e.to_string()))?,
                    ),
                    _ => {
                        return Err(DefinitionError::new(
                            "topics",
                            "give either \"topics\" (a non-empty list) or \"topic_pattern\"",
                        ));
                    }
                };
                for key in kafka_options.keys() {
                    if matches!(
                        key.as_str(),
                        "bootstrap.servers"
                            | "group.id"
                            | "enable.auto.commit"
                            | "enable.auto.offset.store"
                            | "isolation.level"
                    ) {
                        return Err(DefinitionError::new(
                            format!("kafka_options.{key}"),
                            "set by tenantsync",
                        ));
                    }
                }
                if tables.is_empty() {
                    return Err(DefinitionError::new(
                        "tables",
                        "name at least one \"schema.table\" and its mapping",
                    ));
                }
                let tables = tables
                    .into_iter()
                    .map(|(name, raw)| Ok((name.clone(), table_mapping(&name, raw)?)))
                    .collect::<Result<_, DefinitionError>>()?;
                Ok(Definition::Debezium(Debezium {
                    kafka,
                    topics,
                    kafka_options,
                    tables,
                }))
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Definition::PostgresOutbox(_) => "postgres-outbox",
            Definition::Debezium(_) => "debezium",
        }
    }

    /// How many shards the source runs as.
    pub fn shards(&self) -> u32 {
        match self {
            Definition::PostgresOutbox(outbox) => outbox.shards,
            Definition::Debezium(_) => 1,
        }
    }

    /// The datasets the source writes to, when the definition names them (an outbox names its
    /// dataset in each row).
    pub fn datasets(&self) -> Vec<&DatasetName> {
        match self {
            Definition::PostgresOutbox(_) => Vec::new(),
            Definition::Debezium(d) => d.tables.values().map(|t| &t.dataset).collect(),
        }
    }

    /// The definition as replies and logs show it: passwords and secret-looking Kafka options
    /// hidden.
    pub fn shown(&self) -> Value {
        match self {
            Definition::PostgresOutbox(o) => serde_json::json!({
                "kind": self.kind(),
                "url": o.url.to_string(),
                "table": format!("{}.{}", o.schema, o.table),
                "columns": o.columns,
                "delete_after_relay": o.delete_after_relay,
                "shards": o.shards,
            }),
            Definition::Debezium(d) => {
                let mut shown = serde_json::json!({
                    "kind": self.kind(),
                    "kafka": d.kafka,
                    "kafka_options": d.kafka_options.iter().map(|(k, v)| {
                        let secret = ["pass", "secret", "token", "key"]
                            .iter()
                            .any(|s| k.to_ascii_lowercase().contains(s));
                        (k.clone(), Value::from(if secret { "***" } else { v.as_str() }))
                    }).collect::<serde_json::Map<_, _>>(),
                    "tables": d.tables.iter().map(|(name, t)| (name.clone(), table_json(t)))
                        .collect::<serde_json::Map<_, _>>(),
                });
                let topics = match &d.topics {
                    Topics::List(list) => ("topics", serde_json::json!(list)),
                    Topics::Pattern(p) => {
                        let p = p.as_str();
                        // Shown as given: without the anchors `parse` added.
                        let given = &p["^(?:".len()..p.len() - ")$".len()];
                        ("topic_pattern", Value::from(given))
                    }
                };
                shown[topics.0] = topics.1;
                shown
            }
        }
    }
}

fn table_json(t: &TableMapping) -> Value {
    let tenant = match &t.tenant {
        TenantFrom::Column(c) => serde_json::json!({"column": c}),
        TenantFrom::Database { map } => serde_json::json!({"from": "database", "map": map}),
    };
    serde_json::json!({
        "dataset": t.dataset,
        "tenant": tenant,
        "id": t.id,
        "include": t.include,
        "exclude": t.exclude,
        "on_truncate": match t.on_truncate {
            OnTruncate::Reject => "reject",
            OnTruncate::DeleteTenantRecords => "delete_tenant_records",
        },
    })
}

fn table_mapping(name: &str, raw: RawTable) -> Result<TableMapping, DefinitionError> {
    let field = |f: &str| format!("tables.{name}.{f}");
    if name.split('.').count() != 2 || name.split('.').any(str::is_empty) {
        return Err(DefinitionError::new(
            format!("tables.{name}"),
            "tables are named \"schema.table\"",
        ));
    }
    let dataset = DatasetName::new(raw.dataset)
        .map_err(|e| DefinitionError::new(field("dataset"), e.reason))?;
    let tenant = match raw.tenant {
        RawTenant::Column { column } if !column.is_empty() => TenantFrom::Column(column),
        RawTenant::Database { from, map } if from == "database" => TenantFrom::Database {
            map: map
                .into_iter()
                .map(|(db, tenant)| {
                    TenantId::new(tenant).map(|t| (db.clone(), t)).map_err(|e| {
                        DefinitionError::new(field(&format!("tenant.map.{db}")), e.reason)
                    })
                })
                .collect::<Result<_, _>>()?,
        },
        _ => {
            return Err(DefinitionError::new(
                field("tenant"),
                "{\"column\": \"NAME\"} or {\"from\": \"database\", \"map\": {...}}",
            ));
        }
    };
    if !raw.include.is_empty() && !raw.exclude.is_empty() {
        return Err(DefinitionError::new(
            field("include"),
            "give \"include\" or \"exclude\", not both",
        ));
    }
    let on_truncate = match raw.on_truncate.as_deref() {
        None | Some("reject") => OnTruncate::Reject,
        Some("delete_tenant_records") => OnTruncate::DeleteTenantRecords,
        Some(other) => {
            return Err(DefinitionError::new(
                field("on_truncate"),
                format!("{other:?}: \"reject\" (the default) or \"delete_tenant_records\""),
            ));
        }
    };
    Ok(TableMapping {
        dataset,
        tenant,
        id: raw.id,
        include: raw.include,
        exclude: raw.exclude,
        on_truncate,
    })
}

/// serde's message with every quoted value hidden: a misspelt field's value may be a password.
/// (serde_json quotes values with `"` and names fields with backticks, so names stay.)
fn without_values(message: &str) -> String {
    let quoted = Regex::new(r#""(?:[^"\\]|\\.)*""#).expect("a valid pattern");
    quoted.replace_all(message, "\"...\"").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_outbox_takes_debeziums_column_names_by_default() {
        let d =
            Definition::parse(&json!({"kind": "postgres-outbox", "url": "postgres://u:pw@h/db"}))
                .unwrap();
        let Definition::PostgresOutbox(o) = &d else {
            panic!("an outbox")
        };
        assert_eq!((o.schema.as_str(), o.table.as_str()), ("public", "outbox"));
        assert_eq!(o.columns.aggregatetype, "aggregatetype");
        assert_eq!(o.shards, 1);
        assert!(!d.shown().to_string().contains("pw"), "{}", d.shown());
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({"kind": "nope"}), "kind"),
            (
                json!({"kind": "postgres-outbox", "url": "mysql://x"}),
                "url",
            ),
            (
                json!({"kind": "postgres-outbox", "url": "postgres://h/db", "columns": {"tenant": "a b"}}),
                "columns.tenant",
            ),
            (
                json!({"kind": "postgres-outbox", "url": "postgres://h/db", "shards": 0}),
                "shards",
            ),
            (
                json!({"kind": "debezium", "kafka": "k:9092", "tables": {"public.t": {"dataset": "d", "tenant": {"column": "t"}}}}),
                "topics",
            ),
            (
                json!({"kind": "debezium", "kafka": "k:9092", "topics": ["a"], "tables": {"t": {"dataset": "d", "tenant": {"column": "t"}}}}),
                "tables.t",
            ),
            (
                json!({"kind": "debezium", "kafka": "k:9092", "topics": ["a"], "tables": {"public.t": {"dataset": "d", "tenant": {"from": "x"}}}}),
                "tables.public.t.tenant",
            ),
            (
                json!({"kind": "debezium", "kafka": "k:9092", "topics": ["a"], "kafka_options": {"group.id": "g"}, "tables": {"public.t": {"dataset": "d", "tenant": {"column": "t"}}}}),
                "kafka_options.group.id",
            ),
        ];
        for (json, field) in cases {
            let e = Definition::parse(&json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn a_misspelt_field_never_echoes_its_value() {
        let e = Definition::parse(
            &json!({"kind": "postgres-outbox", "url": "postgres://h/db", "shards": "secret-pw"}),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("secret-pw"), "{e}");
    }

    #[test]
    fn a_debezium_source_shows_its_pattern_as_given_and_hides_secrets() {
        let d = Definition::parse(&json!({
            "kind": "debezium", "kafka": "k:9092", "topic_pattern": "clients\\..*",
            "kafka_options": {"sasl.password": "hunter2"},
            "tables": {"public.items": {"dataset": "items", "tenant": {"from": "database"}}}
        }))
        .unwrap();
        let shown = d.shown();
        assert_eq!(shown["topic_pattern"], "clients\\..*");
        assert_eq!(shown["kafka_options"]["sasl.password"], "***");
    }
}
