use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{ChangeId, EntityId, Object, RecordKey, TenantId};

/// The full current state of one record, as the master store holds it and the state log
/// carries it. `data == None` is a deleted record (a tombstone): it keeps its version so a
/// record written again after a delete continues with a higher version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub tenant: TenantId,
    pub id: EntityId,
    /// Starts at 1 and grows by one for every change that altered the record.
    pub version: u64,
    pub data: Option<Object>,
    pub updated_at: DateTime<Utc>,
    /// The change that produced this version.
    pub change_id: ChangeId,
}

impl Record {
    pub fn key(&self) -> RecordKey {
        RecordKey::new(self.tenant.clone(), self.id.clone())
    }

    pub fn is_deleted(&self) -> bool {
        self.data.is_none()
    }
}

/// What applying one change did. Stored with the change id, so a duplicate of a change gets the
/// same answer as the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The record changed and now has `version`.
    Applied { version: u64 },
    /// The change left the record exactly as it was (same data, or a delete of an absent
    /// record); `version` is the record's unchanged version (0 if it never existed).
    Unchanged { version: u64 },
    /// The change was not applied.
    Rejected {
        reason: RejectReason,
        /// The record's version when the change was considered (0 if absent or deleted).
        current_version: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The change's `expected_version` did not match.
    VersionConflict,
    /// A patch addressed a record that does not exist.
    NotFound,
    /// The change id was already used by a change to another record of the tenant. A change id
    /// names one change of one record; reusing it for another record would otherwise make the
    /// second change look like a duplicate of the first and vanish. Never stored: the id stays
    /// owned by the first record.
    KeyReused,
    /// The tenant is being erased; changes other than the erasure's own (change ids starting
    /// with [`ChangeId::ERASURE_PREFIX`]) are refused until it finishes. Stored like the other
    /// rejections.
    TenantErasing,
    /// The data a merge patch would leave in the record violates the dataset's latest schema
    /// (checked when the patch is applied, against the merged result). Stored like the other
    /// rejections; the record is unchanged.
    SchemaViolation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_reasons_serialise_in_snake_case() {
        for (reason, name) in [
            (RejectReason::VersionConflict, "version_conflict"),
            (RejectReason::NotFound, "not_found"),
            (RejectReason::KeyReused, "key_reused"),
            (RejectReason::TenantErasing, "tenant_erasing"),
            (RejectReason::SchemaViolation, "schema_violation"),
        ] {
            let outcome = Outcome::Rejected {
                reason,
                current_version: 2,
            };
            let json = serde_json::to_value(&outcome).unwrap();
            assert_eq!(
                json,
                serde_json::json!({"status": "rejected", "reason": name, "current_version": 2})
            );
            assert_eq!(serde_json::from_value::<Outcome>(json).unwrap(), outcome);
        }
    }
}
