//! Conversions between domain values and the columns both schemas share: outcomes as
//! (id, status, version), data as JSON text, unsigned numbers as signed 64-bit integers.
//!
//! Reading never trusts a row: a value that does not convert is [`StoreError::Corrupt`], never
//! a panic.

use chrono::{DateTime, Utc};
use tenantsync_core::{
    ChangeId, DatasetName, EntityId, Object, Outcome, Record, RejectReason, SubscriptionName,
    TenantId, TokenName,
};

use crate::{
    AuditEntry, BatchLease, BatcherClaim, Erasure, FeedPosition, Progress, PushAttempt, PushClaim,
    PushKind, PushProgress, RejectedEntry, SourceRejection, SourceShard, StoreError, StoredOutcome,
    StoredPush, StoredSource, StoredToken, Subscription, TenantSelection,
};

const APPLIED: &str = "applied";
const UNCHANGED: &str = "unchanged";
const VERSION_CONFLICT: &str = "version_conflict";
const NOT_FOUND: &str = "not_found";
/// Never written by `apply` (a reused change id is not stored); mapped so that the conversion
/// is total rather than a panic.
const KEY_REUSED: &str = "key_reused";
const TENANT_ERASING: &str = "tenant_erasing";
const SCHEMA_VIOLATION: &str = "schema_violation";

/// An outcome as its `status` and `version` columns.
pub(crate) fn outcome_to_row(outcome: &Outcome) -> Result<(&'static str, i64), StoreError> {
    let (status, version) = match outcome {
        Outcome::Applied { version } => (APPLIED, *version),
        Outcome::Unchanged { version } => (UNCHANGED, *version),
        Outcome::Rejected {
            reason: RejectReason::VersionConflict,
            current_version,
        } => (VERSION_CONFLICT, *current_version),
        Outcome::Rejected {
            reason: RejectReason::NotFound,
            current_version,
        } => (NOT_FOUND, *current_version),
        Outcome::Rejected {
            reason: RejectReason::KeyReused,
            current_version,
        } => (KEY_REUSED, *current_version),
        Outcome::Rejected {
            reason: RejectReason::TenantErasing,
            current_version,
        } => (TENANT_ERASING, *current_version),
        Outcome::Rejected {
            reason: RejectReason::SchemaViolation,
            current_version,
        } => (SCHEMA_VIOLATION, *current_version),
    };
    Ok((status, to_i64("version", version)?))
}

pub(crate) fn outcome_from_row(status: &str, version: i64) -> Result<Outcome, StoreError> {
    let version = to_u64("outcome version", version)?;
    Ok(match status {
        APPLIED => Outcome::Applied { version },
        UNCHANGED => Outcome::Unchanged { version },
        VERSION_CONFLICT => Outcome::Rejected {
            reason: RejectReason::VersionConflict,
            current_version: version,
        },
        NOT_FOUND => Outcome::Rejected {
            reason: RejectReason::NotFound,
            current_version: version,
        },
        KEY_REUSED => Outcome::Rejected {
            reason: RejectReason::KeyReused,
            current_version: version,
        },
        TENANT_ERASING => Outcome::Rejected {
            reason: RejectReason::TenantErasing,
            current_version: version,
        },
        SCHEMA_VIOLATION => Outcome::Rejected {
            reason: RejectReason::SchemaViolation,
            current_version: version,
        },
        other => {
            return Err(StoreError::Corrupt {
                what: "outcome status",
                detail: format!("unknown status {other:?}"),
            });
        }
    })
}

/// A row of `applied_changes`: the id of the record owning the change id, and its outcome.
pub(crate) fn stored_outcome_from_row(
    id: String,
    status: &str,
    version: i64,
) -> Result<StoredOutcome, StoreError> {
    Ok(StoredOutcome {
        id: EntityId::new(id).map_err(|e| StoreError::Corrupt {
            what: "outcome record id",
            detail: e.to_string(),
        })?,
        outcome: outcome_from_row(status, version)?,
    })
}

pub(crate) fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

pub(crate) fn to_u64(what: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("negative value {value}"),
    })
}

pub(crate) fn encode_data(data: &Object) -> Result<String, StoreError> {
    serde_json::to_string(data).map_err(|e| StoreError::Corrupt {
        what: "record data",
        detail: format!("cannot encode as JSON: {e}"),
    })
}

/// A record as read from a row, before validation.
pub(crate) struct RecordRow {
    pub tenant: String,
    pub id: String,
    pub version: i64,
    pub data: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub change_id: String,
}

impl RecordRow {
    pub(crate) fn into_record(self) -> Result<Record, StoreError> {
        let corrupt = |what: &'static str, detail: String| StoreError::Corrupt { what, detail };
        let tenant =
            TenantId::new(self.tenant).map_err(|e| corrupt("record tenant", e.to_string()))?;
        let id = EntityId::new(self.id).map_err(|e| corrupt("record id", e.to_string()))?;
        let data = match self.data {
            None => None,
            Some(text) => Some(serde_json::from_str::<Object>(&text).map_err(|e| {
                corrupt(
                    "record data",
                    format!("tenant {tenant} id {id:?}: not a JSON object: {e}"),
                )
            })?),
        };
        Ok(Record {
            version: to_u64("record version", self.version)?,
            change_id: ChangeId::new(self.change_id)
                .map_err(|e| corrupt("record change id", e.to_string()))?,
            tenant,
            id,
            data,
            updated_at: self.updated_at,
        })
    }
}

/// Microseconds since the Unix epoch, as both schemas keep subscription times.
pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(what: &'static str, micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt {
        what,
        detail: format!("timestamp {micros} out of range"),
    })
}

/// A subscription's `datasets` and `tenants` columns: JSON arrays, `tenants` NULL for all.
pub(crate) fn subscription_to_row(
    subscription: &Subscription,
) -> Result<(String, Option<String>), StoreError> {
    let datasets = to_json(&subscription.datasets)?;
    let tenants = match &subscription.tenants {
        TenantSelection::All => None,
        TenantSelection::Only(tenants) => Some(to_json(tenants)?),
    };
    Ok((datasets, tenants))
}

/// A subscription read back from its row.
pub(crate) fn subscription_from_row(
    name: String,
    datasets: &str,
    tenants: Option<&str>,
    created_at: i64,
) -> Result<Subscription, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "subscription",
        detail,
    };
    Ok(Subscription {
        name: SubscriptionName::new(name).map_err(|e| corrupt(e.to_string()))?,
        datasets: serde_json::from_str(datasets).map_err(|e| corrupt(e.to_string()))?,
        tenants: match tenants {
            None => TenantSelection::All,
            Some(text) => TenantSelection::Only(
                serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?,
            ),
        },
        created_at: from_micros("subscription created_at", created_at)?,
    })
}

/// A row of `subscription_progress` read back.
pub(crate) fn progress_from_row(
    dataset: String,
    tenant: String,
    next_seq: i64,
    live_from: i64,
    acked_at: i64,
) -> Result<Progress, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "subscription progress",
        detail,
    };
    Ok(Progress {
        dataset: DatasetName::new(dataset).map_err(|e| corrupt(e.to_string()))?,
        tenant: TenantId::new(tenant).map_err(|e| corrupt(e.to_string()))?,
        position: FeedPosition {
            next_seq: to_u64("progress seq", next_seq)?,
            live_from: to_u64("progress live_from", live_from)?,
        },
        acked_at: from_micros("progress acked_at", acked_at)?,
    })
}

/// A row of `tokens` (name, hash, scopes, created_at) read back.
pub(crate) fn token_from_row(
    name: String,
    hash: String,
    scopes: &str,
    created_at: i64,
) -> Result<StoredToken, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "token",
        detail,
    };
    Ok(StoredToken {
        name: TokenName::new(name).map_err(|e| corrupt(e.to_string()))?,
        hash,
        scopes: serde_json::from_str(scopes).map_err(|e| corrupt(e.to_string()))?,
        created_at: from_micros("token created_at", created_at)?,
    })
}

/// A token's `scopes` column.
pub(crate) fn scopes_to_row(token: &StoredToken) -> Result<String, StoreError> {
    to_json(&token.scopes)
}

/// An audit entry's `detail` column: its JSON text.
pub(crate) fn audit_detail_to_row(entry: &AuditEntry) -> Result<String, StoreError> {
    to_json(&entry.detail)
}

/// A row of `audit_log` (seq, at, actor, action, target, detail) read back.
pub(crate) fn audit_from_row(
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    detail: &str,
) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        seq: to_u64("audit seq", seq)?,
        at: from_micros("audit at", at)?,
        actor,
        action,
        target,
        detail: serde_json::from_str(detail).map_err(|e| StoreError::Corrupt {
            what: "audit detail",
            detail: format!("entry {seq}: not JSON: {e}"),
        })?,
    })
}

/// A row of `tenant_erasures` (tenant, started_at, finished_at, erased) read back.
pub(crate) fn erasure_from_row(
    tenant: String,
    started_at: i64,
    finished_at: Option<i64>,
    erased: i64,
) -> Result<Erasure, StoreError> {
    Ok(Erasure {
        tenant: TenantId::new(tenant).map_err(|e| StoreError::Corrupt {
            what: "erasure tenant",
            detail: e.to_string(),
        })?,
        started_at: from_micros("erasure started_at", started_at)?,
        finished_at: finished_at
            .map(|at| from_micros("erasure finished_at", at))
            .transpose()?,
        erased: to_u64("erasure progress", erased)?,
    })
}

/// A batcher claim (epoch, checkpoint) read back.
pub(crate) fn batcher_claim_from_row(
    epoch: i64,
    checkpoint: Option<Vec<u8>>,
) -> Result<BatcherClaim, StoreError> {
    Ok(BatcherClaim {
        epoch: to_u64("batcher epoch", epoch)?,
        checkpoint,
    })
}

/// A partition number of the batches log read back.
pub(crate) fn batch_partition_from_row(partition: i64) -> Result<u32, StoreError> {
    u32::try_from(partition).map_err(|_| StoreError::Corrupt {
        what: "batch partition",
        detail: format!("partition {partition} is not a u32"),
    })
}

/// A row of `batch_leases` (batch_id, partition, offset, expires_at_ms) read back.
pub(crate) fn batch_lease_from_row(
    batch_id: String,
    partition: i64,
    offset: i64,
    expires_at_ms: i64,
) -> Result<BatchLease, StoreError> {
    Ok(BatchLease {
        batch_id,
        partition: batch_partition_from_row(partition)?,
        offset: to_u64("batch offset", offset)?,
        expires_at_ms,
    })
}

/// The `(offset, offset + 1)` columns of a batch handed out by `claim_batch`, checked against
/// the position the caller expects: an offset below it is the caller's bug.
pub(crate) fn batch_claim_to_row(
    expected: u64,
    offset: u64,
) -> Result<(i64, i64, i64), StoreError> {
    if offset < expected {
        return Err(StoreError::InvalidArgument(format!(
            "batch offset {offset} is below the expected queue position {expected}"
        )));
    }
    Ok((
        to_i64("expected queue position", expected)?,
        to_i64("batch offset", offset)?,
        to_i64("next queue position", offset.saturating_add(1))?,
    ))
}

/// A row of `rejected_entries` (id, partition, offset, reason, at) read back.
pub(crate) fn rejected_from_row(
    id: i64,
    partition: i64,
    offset: i64,
    reason: String,
    at: i64,
) -> Result<(u64, RejectedEntry), StoreError> {
    Ok((
        to_u64("rejected entry id", id)?,
        RejectedEntry {
            partition: u32::try_from(partition).map_err(|_| StoreError::Corrupt {
                what: "rejected entry partition",
                detail: format!("partition {partition} is not a u32"),
            })?,
            offset: to_u64("rejected entry offset", offset)?,
            reason,
            at: from_micros("rejected entry at", at)?,
        },
    ))
}

/// A row of `sources` (name, definition, revision, updated_at) read back.
pub(crate) fn stored_source_from_row(
    name: String,
    definition: String,
    revision: i64,
    updated_at: i64,
) -> Result<StoredSource, StoreError> {
    Ok(StoredSource {
        name,
        definition,
        revision: to_u64("source revision", revision)?,
        updated_at: from_micros("source updated_at", updated_at)?,
    })
}

/// A row of `source_shards` (shard, owner, epoch, lease_until_ms, status) read back.
pub(crate) fn source_shard_from_row(
    shard: i64,
    owner: String,
    epoch: i64,
    lease_until_ms: i64,
    status: Option<String>,
) -> Result<SourceShard, StoreError> {
    Ok(SourceShard {
        shard: u32::try_from(shard).map_err(|_| StoreError::Corrupt {
            what: "source shard",
            detail: format!("shard {shard} is not a u32"),
        })?,
        owner,
        epoch: to_u64("source shard epoch", epoch)?,
        lease_until_ms,
        status,
    })
}

/// A row of `source_rejected` (id, position, reason, at) read back.
pub(crate) fn source_rejection_from_row(
    id: i64,
    position: String,
    reason: String,
    at: i64,
) -> Result<(u64, SourceRejection), StoreError> {
    Ok((
        to_u64("source rejection id", id)?,
        SourceRejection {
            position,
            reason,
            at: from_micros("source rejection at", at)?,
        },
    ))
}

/// A row of `push_targets` (name, definition, revision, created_at, updated_at) read back.
pub(crate) fn stored_push_from_row(
    kind: PushKind,
    name: String,
    definition: String,
    revision: i64,
    created_at: i64,
    updated_at: i64,
) -> Result<StoredPush, StoreError> {
    Ok(StoredPush {
        kind,
        name,
        definition,
        revision: to_u64("push revision", revision)?,
        created_at: from_micros("push created_at", created_at)?,
        updated_at: from_micros("push updated_at", updated_at)?,
    })
}

/// A row of `push_claims` (name, owner, epoch, lease_until_ms, status) read back.
pub(crate) fn push_claim_from_row(
    name: String,
    owner: String,
    epoch: i64,
    lease_until_ms: i64,
    status: Option<String>,
) -> Result<PushClaim, StoreError> {
    Ok(PushClaim {
        name,
        owner,
        epoch: to_u64("push claim epoch", epoch)?,
        lease_until_ms,
        status,
    })
}

/// A progress entry's (next_seq, live_from, updated_at) columns.
pub(crate) fn push_progress_to_row(entry: &PushProgress) -> Result<(i64, i64, i64), StoreError> {
    Ok((
        to_i64("push progress seq", entry.position.next_seq)?,
        to_i64("push progress live_from", entry.position.live_from)?,
        to_micros(entry.updated_at),
    ))
}

/// A row of `push_progress` (dataset, tenant, next_seq, live_from, state, updated_at) read back.
pub(crate) fn push_progress_from_row(
    dataset: String,
    tenant: String,
    next_seq: i64,
    live_from: i64,
    state: Option<String>,
    updated_at: i64,
) -> Result<PushProgress, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "push progress",
        detail,
    };
    Ok(PushProgress {
        dataset: DatasetName::new(dataset).map_err(|e| corrupt(e.to_string()))?,
        tenant: TenantId::new(tenant).map_err(|e| corrupt(e.to_string()))?,
        position: FeedPosition {
            next_seq: to_u64("push progress seq", next_seq)?,
            live_from: to_u64("push progress live_from", live_from)?,
        },
        state,
        updated_at: from_micros("push progress updated_at", updated_at)?,
    })
}

/// A row of `push_attempts` as read, before validation; also what recording writes.
pub(crate) struct PushAttemptRow {
    pub at: i64,
    pub message: String,
    pub dataset: String,
    pub tenant: String,
    pub records: i64,
    pub status: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

impl PushAttemptRow {
    pub(crate) fn new(attempt: &PushAttempt) -> Self {
        Self {
            at: to_micros(attempt.at),
            message: attempt.message.clone(),
            dataset: attempt.dataset.as_str().to_owned(),
            tenant: attempt.tenant.as_str().to_owned(),
            records: i64::from(attempt.records),
            status: attempt.status.map(i64::from),
            latency_ms: i64::from(attempt.latency_ms),
            error: attempt.error.clone(),
        }
    }

    pub(crate) fn into_attempt(self) -> Result<PushAttempt, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            what: "push attempt",
            detail,
        };
        let number = |what: &str, value: i64| format!("{what} {value} out of range");
        Ok(PushAttempt {
            at: from_micros("push attempt at", self.at)?,
            message: self.message,
            dataset: DatasetName::new(self.dataset).map_err(|e| corrupt(e.to_string()))?,
            tenant: TenantId::new(self.tenant).map_err(|e| corrupt(e.to_string()))?,
            records: u32::try_from(self.records)
                .map_err(|_| corrupt(number("records", self.records)))?,
            status: self
                .status
                .map(|s| u16::try_from(s).map_err(|_| corrupt(number("status", s))))
                .transpose()?,
            latency_ms: u32::try_from(self.latency_ms)
                .map_err(|_| corrupt(number("latency_ms", self.latency_ms)))?,
            error: self.error,
        })
    }
}

pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what: "JSON column",
        detail: format!("cannot encode as JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        for outcome in [
            Outcome::Applied { version: 3 },
            Outcome::Unchanged { version: 0 },
            Outcome::Rejected {
                reason: RejectReason::VersionConflict,
                current_version: 7,
            },
            Outcome::Rejected {
                reason: RejectReason::NotFound,
                current_version: 0,
            },
            Outcome::Rejected {
                reason: RejectReason::KeyReused,
                current_version: 4,
            },
            Outcome::Rejected {
                reason: RejectReason::TenantErasing,
                current_version: 5,
            },
            Outcome::Rejected {
                reason: RejectReason::SchemaViolation,
                current_version: 6,
            },
        ] {
            let (status, version) = outcome_to_row(&outcome).unwrap();
            assert_eq!(outcome_from_row(status, version).unwrap(), outcome);
        }
        assert!(matches!(
            outcome_from_row("exploded", 1),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            outcome_from_row(APPLIED, -1),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(
            stored_outcome_from_row("a".into(), UNCHANGED, 2).unwrap(),
            StoredOutcome {
                id: EntityId::new("a").unwrap(),
                outcome: Outcome::Unchanged { version: 2 },
            }
        );
        assert!(matches!(
            stored_outcome_from_row(String::new(), APPLIED, 1),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn out_of_range_numbers_are_errors() {
        assert!(matches!(
            to_i64("offset", u64::MAX),
            Err(StoreError::OutOfRange { .. })
        ));
        assert_eq!(to_i64("offset", 5).unwrap(), 5);
        assert_eq!(batch_claim_to_row(3, 7).unwrap(), (3, 7, 8));
        assert_eq!(batch_claim_to_row(3, 3).unwrap(), (3, 3, 4));
        for (expected, offset) in [(4, 3), (0, u64::MAX), (0, i64::MAX as u64), (u64::MAX, 0)] {
            let err = batch_claim_to_row(expected, offset).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::OutOfRange { .. } | StoreError::InvalidArgument(_)
                ),
                "{err:?}"
            );
            assert!(!err.is_transient());
        }
    }

    #[test]
    fn corrupt_rows_are_errors_not_panics() {
        let row = |data: &str| RecordRow {
            tenant: "acme".into(),
            id: "1".into(),
            version: 1,
            data: Some(data.into()),
            updated_at: Utc::now(),
            change_id: "c".into(),
        };
        assert!(row("{\"a\":1}").into_record().is_ok());
        assert!(matches!(
            row("[1]").into_record(),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            audit_from_row(1, 0, "cli".into(), "a".into(), "t".into(), "{"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            erasure_from_row("acme".into(), 0, None, -1),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            erasure_from_row("ACME".into(), 0, None, 0),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            batch_lease_from_row("b".into(), -1, 0, 0),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            batch_lease_from_row("b".into(), 0, -1, 0),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            batcher_claim_from_row(-1, None),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            stored_source_from_row("s".into(), "{}".into(), -1, 0),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            source_shard_from_row(-1, "a".into(), 1, 0, None),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            source_shard_from_row(i64::from(u32::MAX) + 1, "a".into(), 1, 0, None),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            source_shard_from_row(0, "a".into(), -1, 0, None),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            source_rejection_from_row(-1, "p".into(), "r".into(), 0),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            source_rejection_from_row(1, "p".into(), "r".into(), i64::MAX),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            push_progress_from_row("items".into(), "ACME".into(), 0, 0, None, 0),
            Err(StoreError::Corrupt { .. })
        ));
        let attempt = |status, records| PushAttemptRow {
            at: 0,
            message: "m".into(),
            dataset: "items".into(),
            tenant: "acme".into(),
            records,
            status,
            latency_ms: 3,
            error: None,
        };
        assert!(attempt(Some(200), 1).into_attempt().is_ok());
        for bad in [attempt(Some(65_536), 1), attempt(None, -1)] {
            assert!(matches!(
                bad.into_attempt(),
                Err(StoreError::Corrupt { .. })
            ));
        }
        let mut bad_tenant = row("{}");
        bad_tenant.tenant = "ACME".into();
        assert!(matches!(
            bad_tenant.into_record(),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
