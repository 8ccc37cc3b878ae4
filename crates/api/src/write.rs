//! Accepting changes: appending them durably to the changes log, and waiting for the processor
//! to apply them when the writer asks to (`?wait=applied`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tenantsync_core::{
    Change, ChangeId, EntityId, InvalidInput, Object, Op, Outcome, RejectReason, TenantId,
};
use tenantsync_processor::changes;
use tenantsync_store::Dataset;
use tokio::time::Instant;

use crate::extract::{self, Wait, WriteQuery};
use crate::{ApiError, AppState};

/// A change id for writers that sent no `Idempotency-Key`: unique and time-ordered.
pub fn new_change_id() -> ChangeId {
    ChangeId::new(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid change id")
}

/// Builds and checks a change from its validated parts.
pub fn change(
    op: Op,
    tenant: TenantId,
    id: EntityId,
    data: Option<Object>,
    change_id: Option<ChangeId>,
    expected_version: Option<u64>,
) -> Result<Change, ApiError> {
    let change = Change {
        change_id: change_id.unwrap_or_else(new_change_id),
        op,
        tenant,
        id,
        data,
        expected_version,
        accepted_at: Utc::now(),
    };
    change.validate()?;
    Ok(change)
}

/// Appends changes to the dataset's changes log; returns once they are durable.
pub async fn submit(state: &AppState, dataset: &Dataset, batch: &[Change]) -> Result<(), ApiError> {
    if batch.is_empty() {
        return Ok(());
    }
    let messages = batch
        .iter()
        .map(|c| changes::encode(c, dataset.partitions))
        .collect();
    let topic = state.datasets.topics().changes(&dataset.name);
    state.log.append(&topic, messages).await?;
    Ok(())
}

/// How often a waiting writer looks in the store itself, for changes that another instance
/// (sharing the store) applies: those never reach this instance's hub.
const STORE_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits until the change has an outcome: woken by this instance's processor, or found in the
/// store when another instance applied it.
pub async fn wait_applied(
    state: &AppState,
    dataset: &Dataset,
    change: &Change,
) -> Result<Outcome, ApiError> {
    let deadline = Instant::now() + state.config.apply_timeout;
    let mut waiter = state
        .applied
        .register(&dataset.name, &change.tenant, &change.change_id);
    loop {
        if let Some(outcome) = state
            .store
            .outcome(&dataset.name, &change.tenant, &change.change_id)
            .await?
        {
            return Ok(outcome);
        }
        let recheck = Instant::now() + STORE_RECHECK;
        tokio::select! {
            outcome = waiter.outcome() => return Ok(outcome),
            _ = tokio::time::sleep_until(recheck.min(deadline)) => {}
        }
        if Instant::now() >= deadline {
            return Err(ApiError::ApplyTimeout {
                change_id: change.change_id.to_string(),
                status_url: status_url(dataset, change),
            });
        }
    }
}

pub fn status_url(dataset: &Dataset, change: &Change) -> String {
    format!(
        "/v1/datasets/{}/tenants/{}/changes/{}",
        dataset.name,
        change.tenant,
        urlencode(change.change_id.as_str())
    )
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reply to a change applied with `?wait=applied`: the record as it is now, or why the
/// change was not applied.
pub async fn applied_reply(
    state: &AppState,
    dataset: &Dataset,
    change: &Change,
    outcome: &Outcome,
) -> Result<(StatusCode, Value, Option<u64>), ApiError> {
    match outcome {
        Outcome::Rejected {
            reason: RejectReason::VersionConflict,
            current_version,
        } => Err(ApiError::VersionConflict {
            detail: format!(
                "record {}:{} is at version {current_version}, but the change expected {}",
                change.tenant,
                change.id,
                expected(change.expected_version)
            ),
            current_version: *current_version,
        }),
        Outcome::Rejected {
            reason: RejectReason::NotFound,
            ..
        } => Err(ApiError::NotFound(format!(
            "record {}:{} does not exist; PATCH only updates existing records, use PUT to create",
            change.tenant, change.id
        ))),
        Outcome::Applied { .. } | Outcome::Unchanged { .. } => {
            match state
                .store
                .get(&dataset.name, &change.tenant, &change.id)
                .await?
            {
                Some(record) => {
                    let version = record.version;
                    Ok((
                        StatusCode::OK,
                        crate::records::record_json(&record),
                        Some(version),
                    ))
                }
                None => Err(ApiError::NotFound(format!(
                    "record {}:{} does not exist",
                    change.tenant, change.id
                ))),
            }
        }
    }
}

fn expected(v: Option<u64>) -> String {
    match v {
        Some(0) => "the record to be absent (If-None-Match: *)".to_owned(),
        Some(v) => format!("version {v}"),
        None => "no particular version".to_owned(),
    }
}

/// One line of a bulk `POST /v1/datasets/{dataset}/changes` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkLine {
    op: Op,
    tenant: String,
    id: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    expected_version: Option<u64>,
}

fn parse_line(line: &[u8]) -> Result<Change, ApiError> {
    let line: BulkLine = serde_json::from_slice(line)
        .map_err(|e| ApiError::BadBody(format!("the line is not a valid change: {e}")))?;
    let (tenant, id) = extract::tenant_and_id(&line.tenant, &line.id)?;
    let data = match (line.op, line.data) {
        (_, None | Some(Value::Null)) => None,
        (Op::Delete, Some(_)) => {
            return Err(InvalidInput::new("data", "a delete carries no data").into());
        }
        (_, Some(Value::Object(map))) => Some(map),
        (_, Some(_)) => return Err(InvalidInput::new("data", "must be a JSON object").into()),
    };
    let change_id = line.idempotency_key.map(ChangeId::new).transpose()?;
    change(line.op, tenant, id, data, change_id, line.expected_version)
}

/// `POST /v1/datasets/{dataset}/changes`: NDJSON in, one result per non-blank line out, in
/// order. A bad line is reported with its line number and does not stop the others.
pub async fn bulk(
    State(state): State<Arc<AppState>>,
    Path(dataset): Path<String>,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let query = extract::query(query)?;
    let dataset = extract::dataset(&state, &dataset).await?;
    let body = extract::body(body, state.config.max_body_bytes)?;

    let mut parsed = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        parsed.push((n + 1, parse_line(line)));
    }
    let good: Vec<Change> = parsed
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    submit(&state, &dataset, &good).await?;

    let mut results = Vec::with_capacity(parsed.len());
    for (line, result) in parsed {
        let value = match result {
            Err(error) => line_error(line, error),
            Ok(change) if query.wait == Some(Wait::Applied) => {
                let reply = match wait_applied(&state, &dataset, &change).await {
                    Ok(outcome) => applied_reply(&state, &dataset, &change, &outcome).await,
                    Err(e) => Err(e),
                };
                match reply {
                    Ok((status, record, _)) => json!({
                        "line": line, "status": status.as_u16(),
                        "change_id": change.change_id, "record": record,
                    }),
                    Err(error) => {
                        let mut v = line_error(line, error);
                        v["change_id"] = json!(change.change_id);
                        v
                    }
                }
            }
            Ok(change) => json!({"line": line, "status": 202, "change_id": change.change_id}),
        };
        results.push(value);
    }
    Ok(Json(json!({ "results": results })).into_response())
}

/// A per-line error: the problem document's members, plus the line number.
fn line_error(line: usize, error: ApiError) -> Value {
    let (_, mut problem) = error.problem();
    problem["line"] = json!(line);
    problem
}
