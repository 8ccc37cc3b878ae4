//! One Debezium change event (a Kafka message's key and value, as the JSON converter wrote
//! them, with `schemas.enable` true or false) mapped to what tenantsync takes from it. Pure: no
//! I/O, no clock.
//!
//! - `c`, `u` and `r` (a snapshot row) are upserts of `after`; `d` a delete; a tombstone (null
//!   value, which Kafka compaction needs after a delete) is skipped; `t` (truncate) is rejected
//!   unless the table's mapping asks to delete the tenant's records.
//! - A primary-key change arrives as a delete of the old key and a create of the new one, and is
//!   mapped as such.
//! - The change id is a hash of where the event sits in the source database's history (the
//!   connector's name, database, table, `lsn`, `sequence`, `txId`, or the binlog coordinates of
//!   other connectors), the operation and the key: the same event sent again after Kafka Connect
//!   restarts gets the same id, so it is applied once.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::definition::{Debezium, OnTruncate, TableMapping, TenantFrom};
use crate::ingest::{Candidate, Read};

/// What an event becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    Read(Read),
    /// A tombstone: nothing to do.
    Skip,
    /// A truncate of a table whose mapping deletes the tenant's records.
    Truncate {
        position: String,
        dataset: String,
        tenant: String,
        change_id: String,
    },
}

/// The fields of `source` that place an event in its database's history, across connectors
/// (PostgreSQL, MySQL, SQL Server, Oracle, MongoDB); those present go into the change id.
const POSITION_FIELDS: [&str; 13] = [
    "lsn",
    "sequence",
    "txId",
    "xmin",
    "file",
    "pos",
    "row",
    "gtid",
    "change_lsn",
    "commit_lsn",
    "event_serial_no",
    "scn",
    "ord",
];

/// A message mapped, with when its change was committed in the source database
/// (`source.ts_ms`, for the source's lag in seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub mapped: Mapped,
    pub committed_ms: Option<i64>,
}

/// Maps one message. `position` says where it was read (topic, partition, offset), for
/// rejections.
pub fn map(
    debezium: &Debezium,
    position: String,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Event {
    let untimed = |mapped| Event {
        mapped,
        committed_ms: None,
    };
    let Some(value) = value else {
        return untimed(Mapped::Skip);
    };
    let value: Value = match serde_json::from_slice(value) {
        Ok(v) => v,
        Err(e) => {
            return untimed(Mapped::Read(Read::Rejected {
                position,
                reason: format!("the value is not JSON: {e}"),
            }));
        }
    };
    Event {
        committed_ms: unwrap_envelope(&value)
            .0
            .pointer("/source/ts_ms")
            .and_then(Value::as_i64),
        mapped: map_value(debezium, position, key, &value),
    }
}

/// [`map`] once the value parsed.
fn map_value(debezium: &Debezium, position: String, key: Option<&[u8]>, value: &Value) -> Mapped {
    let reject = |reason: String| {
        Mapped::Read(Read::Rejected {
            position: position.clone(),
            reason,
        })
    };
    if value.is_null() {
        return Mapped::Skip;
    }
    let key: Option<Value> = match key.map(serde_json::from_slice::<Value>).transpose() {
        Ok(k) => k,
        Err(e) => return reject(format!("the key is not JSON: {e}")),
    };
    let (payload, schema) = unwrap_envelope(value);
    let Some(payload) = payload.as_object() else {
        return reject("the value is not a Debezium change event (no object payload)".into());
    };
    let (key_fields, key_schema) = match &key {
        Some(k) => {
            let (p, s) = unwrap_envelope(k);
            (p.as_object().cloned(), s)
        }
        None => (None, None),
    };
    let op = payload.get("op").and_then(Value::as_str).unwrap_or("");
    let Some(source) = payload.get("source").and_then(Value::as_object) else {
        return reject("the event has no \"source\" block".into());
    };
    let text = |name: &str| source.get(name).and_then(Value::as_str).unwrap_or("");
    let table_name = format!("{}.{}", text("schema"), text("table"));
    let table_name = if text("schema").is_empty() {
        // Connectors without schemas (MySQL) name the database instead.
        format!("{}.{}", text("db"), text("table"))
    } else {
        table_name
    };
    let Some(table) = debezium.tables.get(&table_name) else {
        return reject(format!(
            "table {table_name} is not mapped in the source's \"tables\""
        ));
    };
    let change_id = change_id(source, op, key_fields.as_ref());
    let database = text("db");
    match op {
        "c" | "u" | "r" | "d" => {}
        "t" => {
            let tenant = match &table.tenant {
                TenantFrom::Database { map } => tenant_of_database(map, database),
                TenantFrom::Column(_) => {
                    return reject(format!(
                        "a TRUNCATE of {table_name} cannot be mapped: it removes the rows of every tenant of the table"
                    ));
                }
            };
            return match table.on_truncate {
                OnTruncate::Reject => reject(format!(
                    "a TRUNCATE of {table_name} (tenant {tenant}) is not applied; set \"on_truncate\": \"delete_tenant_records\" in the table's mapping to delete the tenant's records"
                )),
                OnTruncate::DeleteTenantRecords => Mapped::Truncate {
                    position,
                    dataset: table.dataset.to_string(),
                    tenant,
                    change_id,
                },
            };
        }
        other => return reject(format!("unknown operation {other:?}")),
    }
    let row_field = if op == "d" { "before" } else { "after" };
    let row_schema = schema.and_then(|s| field_schema(s, row_field));
    let Some(row) = payload.get(row_field).and_then(Value::as_object) else {
        return reject(format!("the {op:?} event has no \"{row_field}\" row"));
    };
    let row = decode_row(row, row_schema);
    let key_fields = key_fields.map(|k| decode_row(&k, key_schema));
    let tenant = match &table.tenant {
        TenantFrom::Column(column) => match row
            .get(column)
            .or_else(|| key_fields.as_ref().and_then(|k| k.get(column)))
        {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ if op == "d" => {
                return reject(format!(
                    "the delete carries no {column:?} column: set REPLICA IDENTITY FULL on {table_name}, or make {column} part of its primary key"
                ));
            }
            _ => None,
        },
        TenantFrom::Database { map } => Some(tenant_of_database(map, database)),
    };
    let id = match record_id(table, key_fields.as_ref()) {
        Ok(id) => id,
        Err(reason) => return reject(reason),
    };
    let data = (op != "d").then(|| Value::Object(select(table, row)));
    Mapped::Read(Read::Change(Candidate {
        position,
        change_id,
        dataset: table.dataset.to_string(),
        tenant,
        id: Some(id),
        op: if op == "d" { "delete" } else { "upsert" }.into(),
        data,
        expected_version: None,
    }))
}

/// `(payload, schema)` of a JSON converter message: with `schemas.enable` the message is
/// `{"schema": ..., "payload": ...}`; without, it is the payload itself.
fn unwrap_envelope(message: &Value) -> (&Value, Option<&Value>) {
    match message.as_object() {
        Some(m) if m.len() == 2 && m.contains_key("schema") && m.contains_key("payload") => {
            (&m["payload"], Some(&m["schema"]))
        }
        _ => (message, None),
    }
}

/// The schema of a struct's field.
fn field_schema<'a>(schema: &'a Value, name: &str) -> Option<&'a Value> {
    schema
        .get("fields")?
        .as_array()?
        .iter()
        .find(|f| f.get("field").and_then(Value::as_str) == Some(name))
}

/// A row with its values decoded where the schema says how: Debezium's JSON columns (strings
/// holding JSON) become JSON, and decimals (Kafka Connect's, and Debezium's variable-scale
/// ones: base64 of the unscaled big-endian integer) become decimal strings. Without a schema
/// (`schemas.enable=false`) values stay as the converter wrote them: there is no telling a
/// JSON column from a text one.
fn decode_row(row: &Map<String, Value>, schema: Option<&Value>) -> Map<String, Value> {
    let Some(schema) = schema else {
        return row.clone();
    };
    row.iter()
        .map(|(name, value)| {
            let decoded = match field_schema(schema, name) {
                Some(field) => decode_value(value, field),
                None => value.clone(),
            };
            (name.clone(), decoded)
        })
        .collect()
}

fn decode_value(value: &Value, field: &Value) -> Value {
    let name = field.get("name").and_then(Value::as_str).unwrap_or("");
    match (name, value) {
        ("io.debezium.data.Json", Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| value.clone())
        }
        ("org.apache.kafka.connect.data.Decimal", Value::String(s)) => {
            let scale = field
                .pointer("/parameters/scale")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            decimal(s, scale).map_or_else(|| value.clone(), Value::String)
        }
        // `numeric` without a declared scale: {"scale": S, "value": base64}.
        ("io.debezium.data.VariableScaleDecimal", Value::Object(parts)) => {
            match (
                parts.get("scale").and_then(Value::as_u64),
                parts.get("value"),
            ) {
                (Some(scale), Some(Value::String(s))) => {
                    decimal(s, scale as u32).map_or_else(|| value.clone(), Value::String)
                }
                _ => value.clone(),
            }
        }
        _ => value.clone(),
    }
}

/// The decimal string of a Kafka Connect decimal: base64 of the unscaled value's big-endian
/// two's complement bytes, and the scale. `None` when it does not decode or exceeds 128 bits.
fn decimal(base64: &str, scale: u32) -> Option<String> {
    let bytes = BASE64.decode(base64).ok()?;
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let mut unscaled: i128 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for b in bytes {
        unscaled = (unscaled << 8) | i128::from(b);
    }
    let negative = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    let sign = if negative { "-" } else { "" };
    Some(if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

fn tenant_of_database(
    map: &std::collections::BTreeMap<String, tenantsync_core::TenantId>,
    db: &str,
) -> String {
    map.get(db).map_or_else(|| db.to_owned(), |t| t.to_string())
}

/// The record id: the chosen key fields (all, in the key's order, when none are chosen),
/// joined with `:`.
fn record_id(table: &TableMapping, key: Option<&Map<String, Value>>) -> Result<String, String> {
    let Some(key) = key else {
        return Err("the event has no key: the table needs a primary key (or a message.key.columns setting in the connector)".into());
    };
    let names: Vec<&String> = if table.id.is_empty() {
        key.keys().collect()
    } else {
        table.id.iter().collect()
    };
    let mut parts = Vec::with_capacity(names.len());
    for name in names {
        match key.get(name.as_str()) {
            Some(Value::String(s)) => parts.push(s.clone()),
            Some(Value::Null) | None => {
                return Err(format!("the event's key has no {name:?} field"));
            }
            Some(other) => parts.push(other.to_string()),
        }
    }
    Ok(parts.join(":"))
}

/// The row's columns kept as the record's data.
fn select(table: &TableMapping, row: Map<String, Value>) -> Map<String, Value> {
    row.into_iter()
        .filter(|(name, _)| {
            (table.include.is_empty() || table.include.contains(name))
                && !table.exclude.contains(name)
        })
        .collect()
}

/// A stable id from the event's place in its database's history.
fn change_id(source: &Map<String, Value>, op: &str, key: Option<&Map<String, Value>>) -> String {
    let mut hash = Sha256::new();
    for name in ["name", "db", "schema", "table"]
        .into_iter()
        .chain(POSITION_FIELDS)
    {
        if let Some(v) = source.get(name).filter(|v| !v.is_null()) {
            hash.update(name.as_bytes());
            hash.update(b"=");
            hash.update(v.to_string().as_bytes());
            hash.update(b"\n");
        }
    }
    hash.update(op.as_bytes());
    hash.update(b"\n");
    // serde_json's maps are sorted by key, so the key's text is canonical.
    if let Some(key) = key {
        hash.update(Value::Object(key.clone()).to_string().as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("dbz-{hex}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::definition::Definition;

    /// A recorded event's key and value, as the connector wrote them.
    fn event(schemas: bool, name: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let dir = if schemas {
            "schemas-enabled"
        } else {
            "schemas-disabled"
        };
        let path = format!(
            "{}/tests/fixtures/debezium/{dir}/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let recorded: Value = serde_json::from_str(&text).unwrap();
        let bytes = |v: &Value| (!v.is_null()).then(|| serde_json::to_vec(v).unwrap());
        (bytes(&recorded["key"]), bytes(&recorded["value"]))
    }

    fn source(tenant: Value, on_truncate: &str) -> Debezium {
        let definition = Definition::parse(&json!({
            "kind": "debezium", "kafka": "k:9092", "topic_pattern": "shop\\..*",
            "tables": {
                "public.items": {"dataset": "items", "tenant": tenant, "on_truncate": on_truncate},
                "public.pairs": {"dataset": "pairs", "tenant": {"from": "database", "map": {"fixture_shop": "shop"}}},
            }
        }))
        .unwrap();
        match definition {
            Definition::Debezium(d) => d,
            Definition::PostgresOutbox(_) => unreachable!(),
        }
    }

    fn by_column() -> Debezium {
        source(json!({"column": "tenant_id"}), "reject")
    }

    fn by_database() -> Debezium {
        source(json!({"from": "database"}), "delete_tenant_records")
    }

    fn mapped(debezium: &Debezium, schemas: bool, name: &str) -> Mapped {
        let (key, value) = event(schemas, name);
        map(
            debezium,
            format!("{name}@0"),
            key.as_deref(),
            value.as_deref(),
        )
        .mapped
    }

    fn change(debezium: &Debezium, schemas: bool, name: &str) -> Candidate {
        match mapped(debezium, schemas, name) {
            Mapped::Read(Read::Change(c)) => c,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn rejection(debezium: &Debezium, schemas: bool, name: &str) -> String {
        match mapped(debezium, schemas, name) {
            Mapped::Read(Read::Rejected { reason, .. }) => reason,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn snapshot_inserts_and_updates_become_upserts_with_or_without_schemas() {
        for schemas in [true, false] {
            for (name, id) in [("snapshot", "1"), ("insert", "2"), ("update", "2")] {
                let c = change(&by_column(), schemas, name);
                assert_eq!(
                    (
                        c.op.as_str(),
                        c.dataset.as_str(),
                        c.tenant.as_deref(),
                        c.id.as_deref()
                    ),
                    ("upsert", "items", Some("acme"), Some(id)),
                    "{name}, schemas {schemas}"
                );
                assert_eq!(
                    c.data.as_ref().unwrap()["id"],
                    json!(id.parse::<i64>().unwrap())
                );
            }
        }
    }

    #[test]
    fn with_schemas_json_columns_become_json_and_decimals_decimal_strings() {
        let c = change(&by_column(), true, "insert");
        let data = c.data.unwrap();
        assert_eq!(data["tags"], json!(["new"]));
        assert_eq!(data["price"], json!("3.999"));
        assert_eq!(data["updated"], json!("2026-01-02T04:00:00.000000Z"));
        // Without schemas there is no telling: the values stay as written.
        let c = change(&by_column(), false, "insert");
        assert!(c.data.unwrap()["tags"].is_string());
    }

    #[test]
    fn a_delete_needs_its_tenant_and_a_tombstone_is_skipped() {
        for schemas in [true, false] {
            // The default replica identity leaves tenant_id out of `before`.
            let reason = rejection(&by_column(), schemas, "delete");
            assert!(reason.contains("REPLICA IDENTITY FULL"), "{reason}");
            let c = change(&by_database(), schemas, "delete");
            assert_eq!(
                (c.op.as_str(), c.tenant.as_deref(), c.id.as_deref(), &c.data),
                ("delete", Some("fixture_shop"), Some("2"), &None)
            );
            assert_eq!(
                mapped(&by_column(), schemas, "delete_tombstone"),
                Mapped::Skip
            );
        }
    }

    #[test]
    fn a_primary_key_change_is_a_delete_and_a_create() {
        for schemas in [true, false] {
            let delete = change(&by_database(), schemas, "key_change_delete");
            let create = change(&by_database(), schemas, "key_change_create");
            assert_eq!(
                (delete.op.as_str(), delete.id.as_deref()),
                ("delete", Some("3"))
            );
            assert_eq!(
                (create.op.as_str(), create.id.as_deref()),
                ("upsert", Some("4"))
            );
            assert_ne!(delete.change_id, create.change_id);
            assert_eq!(
                mapped(&by_database(), schemas, "key_change_tombstone"),
                Mapped::Skip
            );
        }
    }

    #[test]
    fn a_composite_key_joins_its_fields_and_the_database_map_names_the_tenant() {
        for schemas in [true, false] {
            let c = change(&by_column(), schemas, "composite_key_insert");
            assert_eq!(
                (c.dataset.as_str(), c.tenant.as_deref(), c.id.as_deref()),
                ("pairs", Some("shop"), Some("left:7"))
            );
        }
    }

    #[test]
    fn a_truncate_is_rejected_unless_the_mapping_deletes_the_tenants_records() {
        for schemas in [true, false] {
            let reason = rejection(
                &source(json!({"from": "database"}), "reject"),
                schemas,
                "truncate",
            );
            assert!(reason.contains("TRUNCATE"), "{reason}");
            let reason = rejection(&by_column(), schemas, "truncate");
            assert!(reason.contains("every tenant"), "{reason}");
            match mapped(&by_database(), schemas, "truncate") {
                Mapped::Truncate {
                    dataset, tenant, ..
                } => {
                    assert_eq!(
                        (dataset.as_str(), tenant.as_str()),
                        ("items", "fixture_shop")
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_event_sent_again_keeps_its_change_id() {
        let (key, value) = event(true, "update");
        let mut resent: Value = serde_json::from_slice(value.as_ref().unwrap()).unwrap();
        // Kafka Connect stamps the time it processed the event: another time on a re-send.
        resent["payload"]["ts_ms"] = json!(1);
        let resent = serde_json::to_vec(&resent).unwrap();
        let first = change(&by_column(), true, "update");
        let again = match map(&by_column(), "again".into(), key.as_deref(), Some(&resent)).mapped {
            Mapped::Read(Read::Change(c)) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(first.change_id, again.change_id);
        assert_ne!(
            first.change_id,
            change(&by_column(), true, "insert").change_id
        );
    }

    #[test]
    fn an_unmapped_table_or_a_value_that_is_not_an_event_is_rejected() {
        let only_items = source(json!({"column": "tenant_id"}), "reject");
        let mut without_pairs = only_items.clone();
        without_pairs.tables.remove("public.pairs");
        let reason = rejection(&without_pairs, true, "composite_key_insert");
        assert!(reason.contains("public.pairs is not mapped"), "{reason}");
        let rejected = map(&only_items, "x".into(), None, Some(b"not json")).mapped;
        assert!(
            matches!(rejected, Mapped::Read(Read::Rejected { .. })),
            "{rejected:?}"
        );
    }
}
