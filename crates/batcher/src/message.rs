//! The batches log's entry format, what Kafka consumers of `{prefix}.{dataset}.batches` and
//! HTTP workers receive.
//!
//! Key: the batch id. Headers: `batch-id`, `tenant`, `count`, `source-partition`,
//! `source-first-offset` and `source-last-offset` (decimal strings), so a consumer can route,
//! deduplicate or skip a batch without parsing its value. Value, JSON:
//!
//! ```json
//! {"id": "2-1040-1187", "dataset": "inventory", "tenant": "acme", "count": 2,
//!  "source": {"partition": 2, "first_offset": 1040, "last_offset": 1187},
//!  "records": [
//!    {"op": "upsert", "id": "sku-1", "version": 3, "data": {"qty": 5}, "updated_at": "..."},
//!    {"op": "delete", "id": "sku-2", "version": 7, "data": null, "updated_at": "..."}]}
//! ```
//!
//! `records` are one tenant's, in the order the state log holds them (so a record's versions
//! appear in order); `source` names the state-log range the batch covers (records of other
//! tenants in that range are in their own batches). A tenant's batches may sit on different
//! partitions of the batches log: order them by `source.first_offset`, or apply records by
//! `version`. The state log may carry a version twice (the processor republishes what it had
//! not committed when it crashed), so a batch may too: apply a record only if its version is
//! newer than the copy's.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tenantsync_core::{DatasetName, EntityId, Object, Op, Record, TenantId};
use tenantsync_dataset::DecodeError;
use tenantsync_log::{Entry, Message, Partition};

use crate::{Batch, BatchId, SourceRecord};

/// One record of a batch: its state as the state log carried it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// [`Op::Upsert`] for a live record, [`Op::Delete`] for a deleted one.
    pub op: Op,
    pub id: EntityId,
    pub version: u64,
    /// `None` (JSON `null`) for a delete.
    pub data: Option<Object>,
    pub updated_at: DateTime<Utc>,
}

impl BatchRecord {
    pub fn from_record(record: Record) -> Self {
        Self {
            op: if record.is_deleted() {
                Op::Delete
            } else {
                Op::Upsert
            },
            id: record.id,
            version: record.version,
            data: record.data,
            updated_at: record.updated_at,
        }
    }
}

/// The state-log range a batch covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRange {
    pub partition: Partition,
    pub first_offset: u64,
    pub last_offset: u64,
}

/// A batch as the batches log carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchMessage {
    pub id: BatchId,
    pub dataset: DatasetName,
    pub tenant: TenantId,
    pub count: usize,
    pub source: SourceRange,
    pub records: Vec<BatchRecord>,
}

/// What the headers of a batches-log entry say, read without parsing its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeaders {
    pub id: BatchId,
    pub tenant: TenantId,
    pub count: usize,
    pub source: SourceRange,
}

/// The [`SourceRecord`] the batcher's core buffers for a state-log entry: its value is the
/// record as a batch will carry it (so [`Limits::max_bytes`](crate::Limits::max_bytes) bounds
/// the batch's records as encoded), its key empty. `Err` says why the entry is malformed.
pub fn source_record(entry: &Entry) -> Result<SourceRecord, DecodeError> {
    let record = tenantsync_dataset::state::decode(entry)?;
    let tenant = record.tenant.clone();
    // Strings, numbers and a JSON map: serialising cannot fail.
    let value = serde_json::to_vec(&BatchRecord::from_record(record)).expect("a record serialises");
    Ok(SourceRecord {
        partition: entry.partition,
        offset: entry.offset,
        tenant,
        key: Vec::new(),
        value: Some(value),
        appended_at_ms: entry.timestamp_ms,
    })
}

/// Encodes a batch of records made by [`source_record`] as an entry of `partition` of the
/// batches log. The records' JSON is copied, not parsed again.
pub fn encode(dataset: &DatasetName, batch: &Batch, partition: Partition) -> Message {
    let source = SourceRange {
        partition: batch.partition,
        first_offset: batch.first_offset,
        last_offset: batch.last_offset,
    };
    // Strings, numbers and already-valid JSON: serialising cannot fail.
    let head = serde_json::json!({
        "id": batch.id,
        "dataset": dataset,
        "tenant": batch.tenant,
        "count": batch.records.len(),
        "source": source,
    });
    let mut value = serde_json::to_vec(&head).expect("a batch header serialises");
    value.pop(); // the closing brace
    value.extend_from_slice(b",\"records\":[");
    for (i, record) in batch.records.iter().enumerate() {
        if i > 0 {
            value.push(b',');
        }
        value.extend_from_slice(record.value.as_deref().unwrap_or(b"null"));
    }
    value.extend_from_slice(b"]}");
    let header = |name: &str, value: String| (name.to_owned(), value.into_bytes());
    Message {
        partition,
        key: batch.id.as_str().as_bytes().to_vec(),
        value: Some(value),
        headers: vec![
            header("batch-id", batch.id.to_string()),
            header("tenant", batch.tenant.to_string()),
            header("count", batch.records.len().to_string()),
            header("source-partition", batch.partition.to_string()),
            header("source-first-offset", batch.first_offset.to_string()),
            header("source-last-offset", batch.last_offset.to_string()),
        ],
    }
}

/// Decodes a batches-log entry's value; `Err` says why it is not a batch.
pub fn decode(entry: &Entry) -> Result<BatchMessage, DecodeError> {
    let value = entry.value.as_deref().ok_or(DecodeError::NoValue)?;
    serde_json::from_slice(value).map_err(|e| DecodeError::Json(e.to_string()))
}

/// Reads a batches-log entry's headers; `Err` names what is missing or malformed.
pub fn decode_headers(entry: &Entry) -> Result<BatchHeaders, DecodeError> {
    let header = |name: &'static str| entry.header(name).ok_or(DecodeError::MissingHeader(name));
    let number = |name: &'static str| {
        header(name)?
            .parse::<u64>()
            .map_err(|_| DecodeError::BadHeader(name))
    };
    let partition = u32::try_from(number("source-partition")?)
        .map_err(|_| DecodeError::BadHeader("source-partition"))?;
    Ok(BatchHeaders {
        id: header("batch-id")?
            .parse()
            .map_err(|_| DecodeError::BadHeader("batch-id"))?,
        tenant: TenantId::new(header("tenant")?).map_err(|_| DecodeError::BadHeader("tenant"))?,
        count: usize::try_from(number("count")?).map_err(|_| DecodeError::BadHeader("count"))?,
        source: SourceRange {
            partition,
            first_offset: number("source-first-offset")?,
            last_offset: number("source-last-offset")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use tenantsync_core::ChangeId;

    use super::*;

    fn state_entry(offset: u64, tenant: &str, id: &str, data: Option<serde_json::Value>) -> Entry {
        let record = Record {
            tenant: TenantId::new(tenant).unwrap(),
            id: EntityId::new(id).unwrap(),
            version: offset + 1,
            data: data.map(|d| d.as_object().unwrap().clone()),
            updated_at: DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            change_id: ChangeId::new(format!("c-{offset}")).unwrap(),
        };
        let message = tenantsync_dataset::state::encode(&record, 4);
        Entry {
            partition: message.partition,
            offset,
            key: message.key,
            value: message.value,
            headers: message.headers,
            timestamp_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_batch_round_trips_through_the_log_format() {
        let dataset = DatasetName::new("inventory").unwrap();
        let records = vec![
            source_record(&state_entry(
                5,
                "acme",
                "sku-1",
                Some(serde_json::json!({"q": 1})),
            ))
            .unwrap(),
            source_record(&state_entry(9, "acme", "sku \"2\"", None)).unwrap(),
        ];
        let partition = records[0].partition;
        let batch = Batch {
            id: BatchId::for_range(partition, 5, 9),
            tenant: TenantId::new("acme").unwrap(),
            partition,
            first_offset: 5,
            last_offset: 9,
            records,
        };
        let message = encode(&dataset, &batch, 3);
        assert_eq!(message.partition, 3);
        let entry = Entry {
            partition: 3,
            offset: 0,
            key: message.key,
            value: message.value,
            headers: message.headers,
            timestamp_ms: 0,
        };
        let decoded = decode(&entry).unwrap();
        assert_eq!(decoded.id, batch.id);
        assert_eq!(decoded.dataset, dataset);
        assert_eq!(decoded.count, 2);
        assert_eq!(
            decoded.source,
            SourceRange {
                partition,
                first_offset: 5,
                last_offset: 9
            }
        );
        assert_eq!(decoded.records[0].op, Op::Upsert);
        assert_eq!(decoded.records[0].data.as_ref().unwrap()["q"], 1);
        assert_eq!(decoded.records[1].op, Op::Delete);
        assert_eq!(decoded.records[1].id.as_str(), "sku \"2\"");
        assert_eq!(decoded.records[1].version, 10);
        let headers = decode_headers(&entry).unwrap();
        assert_eq!(headers.id, batch.id);
        assert_eq!(headers.count, 2);
        assert_eq!(headers.source, decoded.source);
    }

    #[test]
    fn malformed_entries_are_errors() {
        let entry = Entry {
            partition: 0,
            offset: 0,
            key: Vec::new(),
            value: Some(b"{}".to_vec()),
            headers: vec![("batch-id".into(), b"x".to_vec())],
            timestamp_ms: 0,
        };
        assert!(decode(&entry).is_err());
        assert!(decode_headers(&entry).is_err());
        assert!(source_record(&entry).is_err());
    }
}
