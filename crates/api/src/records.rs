//! `/v1/datasets/{dataset}/tenants/{tenant}/records/{id}`: write one record (PUT, PATCH,
//! DELETE) and read its current state (GET); and the outcome of a change by its id.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tenantsync_core::{ChangeId, Op, Outcome, Record, RejectReason, TenantId};

use crate::extract::{self, Wait, WriteQuery};
use crate::write;
use crate::{ApiError, AppState};

type RecordPath = Path<(String, String, String)>;

pub fn record_json(record: &Record) -> Value {
    json!({
        "tenant": record.tenant,
        "id": record.id,
        "version": record.version,
        "data": record.data,
        "updated_at": record.updated_at,
    })
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("a number is a valid header value")
}

/// The common path of PUT, PATCH and DELETE.
async fn write_one(
    state: Arc<AppState>,
    (dataset, tenant, id): (String, String, String),
    query: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
    op: Op,
    body: Option<Bytes>,
) -> Result<Response, ApiError> {
    let query = extract::query(query)?;
    let dataset = extract::dataset(&state, &dataset).await?;
    let (tenant, id) = extract::tenant_and_id(&tenant, &id)?;
    let pre = extract::preconditions(&headers)?;
    let data = body.map(|b| extract::json_object(&b)).transpose()?;
    let change = write::change(op, tenant, id, data, pre.change_id, pre.expected_version)?;
    write::submit(&state, &dataset, std::slice::from_ref(&change)).await?;

    if query.wait != Some(Wait::Applied) {
        let location = write::status_url(&dataset, &change);
        return Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            Json(json!({ "change_id": change.change_id })),
        )
            .into_response());
    }
    let outcome = write::wait_applied(&state, &dataset, &change).await?;
    let (status, body, version) = write::applied_reply(&state, &dataset, &change, &outcome).await?;
    let mut response = (status, Json(body)).into_response();
    if let Some(v) = version {
        response.headers_mut().insert(header::ETAG, etag(v));
    }
    Ok(response)
}

pub async fn put(
    State(state): State<Arc<AppState>>,
    Path(path): RecordPath,
    query: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = extract::body(body, state.config.max_body_bytes)?;
    write_one(state, path, query, headers, Op::Upsert, Some(body)).await
}

pub async fn patch(
    State(state): State<Arc<AppState>>,
    Path(path): RecordPath,
    query: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = extract::body(body, state.config.max_body_bytes)?;
    write_one(state, path, query, headers, Op::Patch, Some(body)).await
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(path): RecordPath,
    query: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    write_one(state, path, query, headers, Op::Delete, None).await
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path((dataset, tenant, id)): RecordPath,
) -> Result<Response, ApiError> {
    let dataset = extract::dataset(&state, &dataset).await?;
    let (tenant, id) = extract::tenant_and_id(&tenant, &id)?;
    match state.store.get(&dataset.name, &tenant, &id).await? {
        Some(record) if !record.is_deleted() => {
            let mut response = Json(record_json(&record)).into_response();
            response
                .headers_mut()
                .insert(header::ETAG, etag(record.version));
            Ok(response)
        }
        Some(_) => Err(ApiError::NotFound(format!(
            "record {tenant}:{id} was deleted"
        ))),
        None => Err(ApiError::NotFound(format!(
            "record {tenant}:{id} does not exist in dataset {}",
            dataset.name
        ))),
    }
}

/// `GET /v1/datasets/{dataset}/tenants/{tenant}/changes/{change_id}`: what became of a change.
/// `pending` means the master store has no outcome for it yet (or never heard of it).
pub async fn change_status(
    State(state): State<Arc<AppState>>,
    Path((dataset, tenant, change_id)): RecordPath,
) -> Result<Response, ApiError> {
    let dataset = extract::dataset(&state, &dataset).await?;
    let tenant = TenantId::new(tenant)?;
    let change_id = ChangeId::new(change_id)?;
    let outcome = state
        .store
        .outcome(&dataset.name, &tenant, &change_id)
        .await?;
    let body = match outcome {
        None => json!({"change_id": change_id, "status": "pending"}),
        Some(Outcome::Applied { version }) => {
            json!({"change_id": change_id, "status": "applied", "version": version})
        }
        Some(Outcome::Unchanged { version }) => {
            json!({"change_id": change_id, "status": "unchanged", "version": version})
        }
        Some(Outcome::Rejected {
            reason,
            current_version,
        }) => json!({
            "change_id": change_id,
            "status": "rejected",
            "reason": match reason {
                RejectReason::VersionConflict => "version_conflict",
                RejectReason::NotFound => "not_found",
            },
            "current_version": current_version,
        }),
    };
    Ok(Json(body).into_response())
}
