//! The state log's record format, shared by the processor (which writes it) and every reader.
//!
//! Key: `tenant:id`. Value: the record as JSON `{"tenant","id","version","data","updated_at",
//! "change_id"}`. A deleted record is a tombstone: no value, and headers `tenant`, `version` and
//! `change-id` saying which version of which record was deleted. Live records carry the same
//! headers, so a consumer can route or filter without parsing the value.

use chrono::{DateTime, Utc};
use tenantsync_core::{ChangeId, Record, RecordKey, partition_for_tenant};
use tenantsync_log::{Entry, Message};

use crate::DecodeError;

/// Encodes a record for the state log of a dataset with `partitions` partitions.
pub fn encode(record: &Record, partitions: u32) -> Message {
    let headers = vec![
        (
            "tenant".to_owned(),
            record.tenant.as_str().as_bytes().to_vec(),
        ),
        (
            "version".to_owned(),
            record.version.to_string().into_bytes(),
        ),
        (
            "change-id".to_owned(),
            record.change_id.as_str().as_bytes().to_vec(),
        ),
    ];
    let value = record.data.as_ref().map(|_| {
        // Serialising a Record (strings, integers, a JSON map) cannot fail.
        serde_json::to_vec(record).expect("a record serialises to JSON")
    });
    Message {
        partition: partition_for_tenant(&record.tenant, partitions),
        key: record.key().to_string().into_bytes(),
        value,
        headers,
    }
}

/// Decodes a state-log entry.
pub fn decode(entry: &Entry) -> Result<Record, DecodeError> {
    let key = std::str::from_utf8(&entry.key).map_err(|_| DecodeError::KeyNotUtf8)?;
    let key = RecordKey::parse(key).map_err(|e| DecodeError::Key(e.to_string()))?;
    match &entry.value {
        Some(value) => {
            let record: Record =
                serde_json::from_slice(value).map_err(|e| DecodeError::Json(e.to_string()))?;
            if record.key() != key {
                return Err(DecodeError::KeyMismatch {
                    value: record.key().to_string(),
                    key: key.to_string(),
                });
            }
            Ok(record)
        }
        None => {
            let header =
                |name: &'static str| entry.header(name).ok_or(DecodeError::MissingHeader(name));
            let version = header("version")?
                .parse()
                .map_err(|_| DecodeError::BadHeader("version"))?;
            let change_id = ChangeId::new(header("change-id")?)
                .map_err(|_| DecodeError::BadHeader("change-id"))?;
            Ok(Record {
                tenant: key.tenant,
                id: key.id,
                version,
                data: None,
                updated_at: DateTime::<Utc>::from_timestamp_millis(entry.timestamp_ms)
                    .unwrap_or_default(),
                change_id,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use tenantsync_core::{EntityId, TenantId};

    use super::*;

    fn record(data: Option<serde_json::Value>) -> Record {
        Record {
            tenant: TenantId::new("acme").unwrap(),
            id: EntityId::new("sku:1").unwrap(),
            version: 7,
            data: data.map(|d| d.as_object().unwrap().clone()),
            updated_at: DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            change_id: ChangeId::new("c-7").unwrap(),
        }
    }

    fn entry(m: Message) -> Entry {
        Entry {
            partition: m.partition,
            offset: 0,
            key: m.key,
            value: m.value,
            headers: m.headers,
            timestamp_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn live_records_and_tombstones_round_trip() {
        for r in [record(Some(serde_json::json!({"qty": 3}))), record(None)] {
            let m = encode(&r, 8);
            assert_eq!(m.key, b"acme:sku:1");
            assert_eq!(m.value.is_none(), r.is_deleted());
            assert_eq!(decode(&entry(m)).unwrap(), r);
        }
    }

    #[test]
    fn value_for_another_key_is_rejected() {
        let mut m = encode(&record(Some(serde_json::json!({}))), 1);
        m.key = b"other:sku:1".to_vec();
        assert!(decode(&entry(m)).is_err());
    }
}
