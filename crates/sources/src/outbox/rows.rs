//! From decoded outbox rows to what `Ingest` takes: which rows are this shard's, and the
//! candidate change (or the reason there is none) each one stands for.
//!
//! Pure. It must never drop a row of this shard silently: a row that cannot be read becomes a
//! `Read::Rejected` with its position, so it shows under `/rejected`.

use tenantsync_core::murmur2;

use super::pgoutput::{Lsn, Row, Transaction, Value};
use crate::OutboxColumns;
use crate::ingest::{Candidate, Read};

/// The shard a row belongs to: Kafka's partition formula on the tenant's bytes, so a tenant's
/// rows always go to one shard and keep their order. A row without a tenant goes where the
/// empty tenant goes, so exactly one shard records its rejection.
pub fn shard_of(tenant: &str, shards: u32) -> u32 {
    ((murmur2(tenant.as_bytes()) & 0x7fff_ffff) as u32) % shards
}

/// Where a row sits: its transaction's commit LSN and its index among that transaction's rows
/// of the outbox, `0/16B3748#3`. Stable across shard counts and re-reads.
pub fn position(commit_lsn: Lsn, index: usize) -> String {
    format!("{commit_lsn}#{index}")
}

/// What one read of the slot yields for one shard.
#[derive(Debug, Default, PartialEq)]
pub struct Mapped {
    /// In WAL order: transactions in commit order, rows in insertion order.
    pub reads: Vec<Read>,
    /// The id column's text of the rows that became candidates, for `delete_after_relay`.
    /// Rejected rows stay in the table for a person to look at.
    pub relayed_ids: Vec<String>,
}

/// Adds `tx`'s rows of `shard` to `mapped`.
pub fn map(
    tx: &Transaction,
    columns: &OutboxColumns,
    shard: u32,
    shards: u32,
    mapped: &mut Mapped,
) {
    for (index, row) in tx.rows.iter().enumerate() {
        let tenant = match row.get(&columns.tenant) {
            Some(Value::Text(t)) => t.as_str(),
            _ => "",
        };
        if shard_of(tenant, shards) != shard {
            continue;
        }
        let position = position(tx.commit_lsn, index);
        match candidate(row, columns, position.clone()) {
            Ok(c) => {
                mapped.relayed_ids.push(c.change_id.clone());
                mapped.reads.push(Read::Change(c));
            }
            Err(reason) => mapped.reads.push(Read::Rejected { position, reason }),
        }
    }
}

/// A column's text: `Ok(None)` for SQL null (or a column the table does not have, when
/// `optional`), an error naming the column otherwise.
fn text<'r>(
    row: &'r Row,
    role: &str,
    column: &str,
    optional: bool,
) -> Result<Option<&'r str>, String> {
    match row.get(column) {
        Some(Value::Text(t)) => Ok(Some(t)),
        Some(Value::Null) => Ok(None),
        None if optional => Ok(None),
        None => Err(format!(
            "the outbox has no column {column:?} (the {role}) in this row's table version"
        )),
        // An insert always carries every value; the server sending none is not a row to guess.
        Some(Value::Unchanged) => Err(format!(
            "column {column:?} (the {role}) came without its value"
        )),
    }
}

fn required<'r>(row: &'r Row, role: &str, column: &str) -> Result<&'r str, String> {
    text(row, role, column, false)?.ok_or_else(|| format!("column {column:?} (the {role}) is null"))
}

fn candidate(row: &Row, c: &OutboxColumns, position: String) -> Result<Candidate, String> {
    let change_id = required(row, "change id", &c.id)?.to_owned();
    let dataset = required(row, "dataset", &c.aggregatetype)?.to_owned();
    let op = required(row, "operation", &c.op)?.to_owned();
    let tenant = text(row, "tenant", &c.tenant, false)?.map(str::to_owned);
    let id = text(row, "record id", &c.aggregateid, false)?.map(str::to_owned);
    let data = text(row, "payload", &c.payload, false)?
        .map(|json| {
            serde_json::from_str(json)
                .map_err(|e| format!("column {:?} (the payload) is not JSON: {e}", c.payload))
        })
        .transpose()?;
    let expected_version = text(row, "expected version", &c.expected_version, true)?
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                format!(
                    "column {:?} (the expected version) is not an integer: {v:?}",
                    c.expected_version
                )
            })
        })
        .transpose()?;
    Ok(Candidate {
        position,
        change_id,
        dataset,
        tenant,
        id,
        op,
        data,
        expected_version,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn row(values: &[(&str, Option<&str>)]) -> Row {
        values
            .iter()
            .map(|(k, v)| {
                let v = v.map_or(Value::Null, |v| Value::Text(v.to_owned()));
                ((*k).to_owned(), v)
            })
            .collect::<HashMap<_, _>>()
    }

    fn full(id: &str, tenant: &str) -> Row {
        row(&[
            ("id", Some(id)),
            ("aggregatetype", Some("items")),
            ("aggregateid", Some("r1")),
            ("type", Some("upsert")),
            ("payload", Some(r#"{"a": 1}"#)),
            ("tenant", Some(tenant)),
            ("expected_version", None),
        ])
    }

    fn tx(rows: Vec<Row>) -> Transaction {
        Transaction {
            xid: 7,
            commit_lsn: "0/16B3748".parse().unwrap(),
            end_lsn: "0/16B3778".parse().unwrap(),
            commit_time: 0,
            rows,
        }
    }

    #[test]
    fn a_row_becomes_a_candidate_with_its_position() {
        let mut mapped = Mapped::default();
        let mut second = full("c2", "t1");
        second.insert("expected_version".into(), Value::Text("4".into()));
        second.insert("payload".into(), Value::Null);
        second.insert("type".into(), Value::Text("delete".into()));
        map(
            &tx(vec![full("c1", "t1"), second]),
            &OutboxColumns::default(),
            0,
            1,
            &mut mapped,
        );
        assert_eq!(mapped.relayed_ids, ["c1", "c2"]);
        let Read::Change(first) = &mapped.reads[0] else {
            panic!("a change")
        };
        assert_eq!(first.position, "0/16B3748#0");
        assert_eq!(first.data, Some(json!({"a": 1})));
        assert_eq!(
            (first.tenant.as_deref(), first.id.as_deref()),
            (Some("t1"), Some("r1"))
        );
        let Read::Change(second) = &mapped.reads[1] else {
            panic!("a change")
        };
        assert_eq!(second.position, "0/16B3748#1");
        assert_eq!((second.op.as_str(), second.data.as_ref()), ("delete", None));
        assert_eq!(second.expected_version, Some(4));
    }

    #[test]
    fn rows_are_split_by_tenant_and_each_goes_to_exactly_one_shard() {
        let rows: Vec<Row> = (0..200)
            .map(|i| full(&format!("c{i}"), &format!("tenant-{}", i % 37)))
            .collect();
        let tx = tx(rows);
        let mut seen = Vec::new();
        for shard in 0..4 {
            let mut mapped = Mapped::default();
            map(&tx, &OutboxColumns::default(), shard, 4, &mut mapped);
            assert!(
                !mapped.reads.is_empty(),
                "shard {shard} got nothing of 37 tenants"
            );
            for read in mapped.reads {
                let Read::Change(c) = read else {
                    panic!("a change")
                };
                assert_eq!(shard_of(c.tenant.as_deref().unwrap(), 4), shard);
                seen.push(c.position);
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 200);
    }

    #[test]
    fn unreadable_rows_are_rejected_with_their_reason_not_dropped() {
        let columns = OutboxColumns::default();
        let mut no_id = full("x", "t1");
        no_id.insert("id".into(), Value::Null);
        let mut not_json = full("c2", "t1");
        not_json.insert("payload".into(), Value::Text("{".into()));
        let mut bad_version = full("c3", "t1");
        bad_version.insert("expected_version".into(), Value::Text("v3".into()));
        let mut unchanged = full("c4", "t1");
        unchanged.insert("tenant".into(), Value::Text("t1".into()));
        unchanged.insert("aggregateid".into(), Value::Unchanged);
        let mut no_tenant = full("c5", "t1");
        no_tenant.insert("tenant".into(), Value::Null);
        let mut mapped = Mapped::default();
        map(
            &tx(vec![no_id, not_json, bad_version, unchanged, no_tenant]),
            &columns,
            shard_of("t1", 1),
            1,
            &mut mapped,
        );
        let reasons: Vec<_> = mapped
            .reads
            .iter()
            .filter_map(|r| match r {
                Read::Rejected { position, reason } => Some((position.as_str(), reason.as_str())),
                Read::Change(_) => None,
            })
            .collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].1.contains("change id") && reasons[0].1.contains("null"));
        assert!(reasons[1].1.contains("not JSON"));
        assert!(reasons[2].1.contains("expected version"));
        assert!(reasons[3].1.contains("without its value"));
        assert_eq!(reasons[3].0, "0/16B3748#3");
        // A missing tenant is the ingest's to reject, with the API's wording.
        let Read::Change(last) = &mapped.reads[4] else {
            panic!("a change")
        };
        assert_eq!(last.tenant, None);
        assert_eq!(mapped.relayed_ids, ["c5"]);
    }

    #[test]
    fn remapped_columns_are_read_and_expected_version_may_be_absent() {
        let columns: OutboxColumns = serde_json::from_value(json!({
            "id": "event_id", "tenant": "org", "expected_version": "ver"
        }))
        .unwrap();
        let mut r = full("ignored", "ignored");
        r.insert("event_id".into(), Value::Text("e1".into()));
        r.insert("org".into(), Value::Text("acme".into()));
        let mut mapped = Mapped::default();
        map(&tx(vec![r]), &columns, 0, 1, &mut mapped);
        let Read::Change(c) = &mapped.reads[0] else {
            panic!("a change: {:?}", mapped.reads)
        };
        assert_eq!(
            (c.change_id.as_str(), c.tenant.as_deref()),
            ("e1", Some("acme"))
        );
        assert_eq!(c.expected_version, None);
    }
}
