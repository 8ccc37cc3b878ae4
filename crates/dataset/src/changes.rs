//! The changes log's record format: key `tenant:id`, value the [`Change`] as JSON, partition by
//! tenant. Written by the write API (and, later, relays); read by the processor.

use tenantsync_core::{Change, partition_for_tenant};
use tenantsync_log::{Entry, Message};

use crate::DecodeError;

/// Encodes a change for the changes log of a dataset with `partitions` partitions.
pub fn encode(change: &Change, partitions: u32) -> Message {
    Message {
        partition: partition_for_tenant(&change.tenant, partitions),
        key: change.key().to_string().into_bytes(),
        // A Change is strings, integers and a JSON map: serialising it cannot fail.
        value: Some(serde_json::to_vec(change).expect("a change serialises to JSON")),
        headers: Vec::new(),
    }
}

/// Decodes a changes-log entry.
pub fn decode(entry: &Entry) -> Result<Change, DecodeError> {
    let value = entry.value.as_deref().ok_or(DecodeError::NoValue)?;
    let change: Change =
        serde_json::from_slice(value).map_err(|e| DecodeError::Json(e.to_string()))?;
    change
        .validate()
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    Ok(change)
}
