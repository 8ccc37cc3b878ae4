//! The one way a source's rows and events enter tenantsync: checked into changes by the same
//! rules as an API write (an upsert's data against the dataset's latest schema included; a patch
//! is checked on its merged result when applied, as the API's are), held to the tenant's write
//! quota, and appended to the dataset's changes log; those that cannot become a change are
//! recorded under the source's rejected list.
//!
//! [`Ingest::submit`] returns only once every change it was given is durable in the changes log
//! and every rejection is stored, so a source may then move its position past them. It never
//! applies anything: the processor does, and it skips a change id it already applied, which is
//! what makes reading a row or an event again harmless.

use std::collections::HashMap;
use std::sync::Arc;
use tenantsync_schema::{Contract, Schemas, Violation};

use chrono::Utc;
use serde_json::Value;
use tenantsync_core::{Change, ChangeId, DatasetName, EntityId, Object, Op, TenantId};
use tenantsync_dataset::{Datasets, QuotaError, WriteQuotas};
use tenantsync_store::{Dataset, MasterStore, SourceRejection};
use tokio_util::sync::CancellationToken;

use crate::SourceError;
use crate::definition::SourceName;
use crate::figures::Figures;

/// The most rejections a source keeps; older ones are dropped and counted.
pub const KEEP_REJECTED: usize = 10_000;

/// What a source read at one position.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// A row or event that should become a change (checked by [`Ingest::submit`]).
    Change(Candidate),
    /// One the source itself could not map (an unknown table, a truncate), with why.
    Rejected { position: String, reason: String },
}

/// A row or event as the source read it, before it is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Where it sits in the source, shown with a rejection.
    pub position: String,
    /// Derived from the source, so that reading it again gives the same id.
    pub change_id: String,
    pub dataset: String,
    pub tenant: Option<String>,
    pub id: Option<String>,
    /// `upsert`, `patch` or `delete`.
    pub op: String,
    pub data: Option<Value>,
    pub expected_version: Option<i64>,
}

/// Appends a source's changes; one per instance, shared by every shard it runs.
pub struct Ingest {
    datasets: Arc<Datasets>,
    quotas: Arc<WriteQuotas>,
    store: Arc<dyn MasterStore>,
    /// Each change's data is checked against its dataset's schema before it is appended.
    schemas: Arc<Schemas>,
}

impl Ingest {
    pub fn new(
        datasets: Arc<Datasets>,
        quotas: Arc<WriteQuotas>,
        store: Arc<dyn MasterStore>,
        schemas: Arc<Schemas>,
    ) -> Self {
        Self {
            datasets,
            quotas,
            store,
            schemas,
        }
    }

    /// Checks `reads` in order, waits for each tenant's write quota, appends the changes to
    /// their datasets' changes logs and records the rejections; returns when all of it is
    /// durable. Each tenant's changes keep their order. Cancelled by `stop` only while waiting
    /// for a quota (then nothing of the call is known durable, and the caller reads it again).
    pub async fn submit(
        &self,
        source: &SourceName,
        figures: &Figures,
        reads: Vec<Read>,
        stop: &CancellationToken,
    ) -> Result<(), SourceError> {
        let mut rejections = Vec::new();
        // By dataset, in first-seen order; a tenant's changes stay in their order within it.
        // Each with the dataset's contract as of this call.
        let mut batches: Vec<(Dataset, Arc<Contract>, Vec<Change>)> = Vec::new();
        let mut known: HashMap<String, Option<usize>> = HashMap::new();
        for read in reads {
            let candidate = match read {
                Read::Change(c) => c,
                Read::Rejected { position, reason } => {
                    rejections.push(rejection(position, reason));
                    continue;
                }
            };
            let slot = match known.get(&candidate.dataset) {
                Some(slot) => *slot,
                None => {
                    let slot = match DatasetName::new(candidate.dataset.clone()) {
                        Ok(name) => match self.datasets.get(&name).await? {
                            Some(dataset) => {
                                let contract = self.schemas.contract(&dataset.name).await?;
                                batches.push((dataset, contract, Vec::new()));
                                Some(batches.len() - 1)
                            }
                            None => None,
                        },
                        Err(_) => None,
                    };
                    known.insert(candidate.dataset.clone(), slot);
                    slot
                }
            };
            let Some(slot) = slot else {
                let reason = match DatasetName::new(candidate.dataset.clone()) {
                    Ok(_) => format!("dataset {:?} is not declared", candidate.dataset),
                    Err(e) => format!("dataset {:?}: {}", candidate.dataset, e.reason),
                };
                rejections.push(rejection(candidate.position, reason));
                continue;
            };
            let (_, contract, changes) = &mut batches[slot];
            match change(&candidate).and_then(|change| conforms(contract, change)) {
                Ok(change) => changes.push(change),
                Err(reason) => rejections.push(rejection(candidate.position, reason)),
            }
        }
        for (_, _, changes) in &batches {
            for change in changes {
                self.take_quota(&change.tenant, stop).await?;
            }
        }
        for (dataset, _, changes) in &batches {
            self.datasets.append_changes(dataset, changes).await?;
            figures.add_ingested(changes.len() as u64);
        }
        if !rejections.is_empty() {
            self.store
                .record_source_rejected(source.as_str(), &rejections, KEEP_REJECTED)
                .await?;
            figures.add_rejected(rejections.len() as u64);
        }
        Ok(())
    }

    /// The ids of the tenant's live records in the dataset once the processor has applied every
    /// change appended before (so that a truncate deletes what the rows before it created).
    /// Empty when the dataset is not declared or the tenant id is not valid.
    pub async fn settled_records(
        &self,
        dataset: &str,
        tenant: &str,
        stop: &CancellationToken,
    ) -> Result<Vec<String>, SourceError> {
        let (Ok(name), Ok(tenant)) = (DatasetName::new(dataset), TenantId::new(tenant)) else {
            return Ok(Vec::new());
        };
        let Some(dataset) = self.datasets.get(&name).await? else {
            return Ok(Vec::new());
        };
        while !self.datasets.applied_all(&dataset, &tenant).await? {
            tokio::select! {
                _ = stop.cancelled() => return Err(SourceError::Stopped),
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
        let mut ids = Vec::new();
        let mut after: Option<EntityId> = None;
        loop {
            let page = self
                .store
                .scan(&dataset.name, &tenant, after.as_ref(), 1_000)
                .await?;
            let Some(last) = page.last() else {
                return Ok(ids);
            };
            after = Some(last.id.clone());
            ids.extend(
                page.iter()
                    .filter(|r| !r.is_deleted())
                    .map(|r| r.id.to_string()),
            );
        }
    }

    /// Waits until the tenant's quota has room for one more change. A source slows down to its
    /// tenants' quotas rather than dropping changes.
    async fn take_quota(
        &self,
        tenant: &TenantId,
        stop: &CancellationToken,
    ) -> Result<(), SourceError> {
        loop {
            match self.quotas.take(tenant, 1) {
                Ok(()) => return Ok(()),
                Err(QuotaError::RetryAfter(wait)) => {
                    tokio::select! {
                        _ = stop.cancelled() => return Err(SourceError::Stopped),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                // A burst below one change cannot happen (every share is at least 1); waiting
                // a moment is still the safe answer.
                Err(QuotaError::OverBurst { .. }) => {
                    tokio::select! {
                        _ = stop.cancelled() => return Err(SourceError::Stopped),
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
}

fn rejection(position: String, reason: String) -> SourceRejection {
    SourceRejection {
        position,
        reason,
        at: Utc::now(),
    }
}

/// The change a candidate stands for, by the API's rules, or why it is none.
fn change(c: &Candidate) -> Result<Change, String> {
    let tenant = c.tenant.as_deref().ok_or("no tenant")?;
    let tenant = TenantId::new(tenant).map_err(|e| format!("tenant {tenant:?}: {}", e.reason))?;
    let id = c.id.as_deref().ok_or("no record id")?;
    let id = EntityId::new(id).map_err(|e| format!("record id {id:?}: {}", e.reason))?;
    let change_id = ChangeId::new(c.change_id.clone())
        .map_err(|e| format!("change id {:?}: {}", c.change_id, e.reason))?;
    let op = match c.op.as_str() {
        "upsert" => Op::Upsert,
        "patch" => Op::Patch,
        "delete" => Op::Delete,
        other => {
            return Err(format!(
                "unknown operation {other:?}: \"upsert\", \"patch\" or \"delete\""
            ));
        }
    };
    let data: Option<Object> = match (op, &c.data) {
        (Op::Delete, _) => None,
        (_, Some(Value::Object(map))) => Some(map.clone()),
        (_, Some(other)) => {
            return Err(format!(
                "the payload of an {} must be a JSON object, got {}",
                c.op,
                kind_of(other)
            ));
        }
        (_, None) => return Err(format!("an {} needs a payload", c.op)),
    };
    let expected_version = c
        .expected_version
        .map(|v| u64::try_from(v).map_err(|_| format!("expected version {v} is negative")))
        .transpose()?;
    let change = Change {
        change_id,
        op,
        tenant,
        id,
        data,
        expected_version,
        accepted_at: Utc::now(),
    };
    change
        .validate()
        .map_err(|e| format!("{}: {}", e.field, e.reason))?;
    Ok(change)
}

/// The change if its data conforms to the dataset's latest schema (an upsert's: a patch is
/// checked when applied, a delete has no data), else why not, with every violation.
fn conforms(contract: &Contract, change: Change) -> Result<Change, String> {
    let (Op::Upsert, Some(data)) = (change.op, &change.data) else {
        return Ok(change);
    };
    match contract.validate(data) {
        Ok(()) => Ok(change),
        Err(violations) => {
            let version = contract
                .json
                .as_ref()
                .map(|json| format!(" (version {})", json.version))
                .unwrap_or_default();
            Err(format!(
                "the data violates the dataset's schema{version}: {}",
                Violation::describe(&violations)
            ))
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn candidate() -> Candidate {
        Candidate {
            position: "0/1#0".into(),
            change_id: "c1".into(),
            dataset: "items".into(),
            tenant: Some("acme".into()),
            id: Some("i1".into()),
            op: "upsert".into(),
            data: Some(json!({"a": 1})),
            expected_version: None,
        }
    }

    #[test]
    fn a_valid_row_becomes_the_change_an_api_write_would_be() {
        let c = change(&candidate()).unwrap();
        assert_eq!(
            (c.op, c.tenant.as_str(), c.id.as_str()),
            (Op::Upsert, "acme", "i1")
        );
        assert_eq!(c.change_id.as_str(), "c1");
        let delete = change(&Candidate {
            op: "delete".into(),
            data: None,
            expected_version: Some(3),
            ..candidate()
        })
        .unwrap();
        assert_eq!((delete.op, delete.expected_version), (Op::Delete, Some(3)));
    }

    #[test]
    fn each_bad_row_says_why() {
        let cases = [
            (
                Candidate {
                    tenant: None,
                    ..candidate()
                },
                "no tenant",
            ),
            (
                Candidate {
                    tenant: Some("bad tenant!".into()),
                    ..candidate()
                },
                "tenant \"bad tenant!\"",
            ),
            (
                Candidate {
                    data: Some(json!([1])),
                    ..candidate()
                },
                "must be a JSON object, got an array",
            ),
            (
                Candidate {
                    data: None,
                    ..candidate()
                },
                "needs a payload",
            ),
            (
                Candidate {
                    op: "merge".into(),
                    ..candidate()
                },
                "unknown operation \"merge\"",
            ),
            (
                Candidate {
                    expected_version: Some(-1),
                    ..candidate()
                },
                "negative",
            ),
            (
                Candidate {
                    change_id: String::new(),
                    ..candidate()
                },
                "change id",
            ),
        ];
        for (c, why) in cases {
            let reason = change(&c).unwrap_err();
            assert!(reason.contains(why), "{c:?}: {reason}");
        }
    }

    #[test]
    fn an_upsert_must_conform_to_the_schema_and_a_patch_is_left_to_its_apply() {
        let schema = json!({
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "required": ["a"]
        });
        let contract = Contract {
            json: Some(tenantsync_schema::JsonVersion {
                version: 2,
                id: 7,
                validator: Arc::new(tenantsync_schema::Validator::new(&schema).unwrap()),
            }),
            ..Contract::default()
        };
        let with = |op: &str, data| {
            change(&Candidate {
                op: op.into(),
                data: Some(data),
                ..candidate()
            })
            .unwrap()
        };
        let reason = conforms(&contract, with("upsert", json!({"a": "x"}))).unwrap_err();
        assert!(
            reason.contains("violates the dataset's schema (version 2)") && reason.contains("/a"),
            "{reason}"
        );
        assert!(conforms(&contract, with("upsert", json!({"a": 1}))).is_ok());
        // A patch's result is known only when it is applied; a delete has no data.
        assert!(conforms(&contract, with("patch", json!({"a": "x"}))).is_ok());
        assert!(conforms(&contract, with("delete", json!({}))).is_ok());
        // A dataset without a schema takes any object.
        assert!(conforms(&Contract::default(), with("upsert", json!({"a": "x"}))).is_ok());
    }
}
